"""Forwards: what turns a batch into the statistics an objective takes.

A forward is called with a :class:`~preftune.suppliers.MicroBatch` and returns the stats object of the
batch's data kind; ``provides`` lists the needs it fills itself (the trainer asks suppliers for the rest).

* :class:`PolicyLogps` (today's, the default): summed response log-probs of the policy, chunked so full
  logits never exist (:func:`preftune.models.logprobs.sequence_logps`), and of the reference source;
  per-token values when the objective needs ``token_logps``.

A reward model's scalar score head is another forward on the same loop.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ..kinds import get_kind
from ..models.logprobs import sequence_logps
from ..suppliers.base import MicroBatch


class Forward:
    """``provides``: the needs it fills itself; ``layouts``: the batch layouts it can read (None: any)."""

    provides: ClassVar[tuple[str, ...]] = ()
    layouts: ClassVar[tuple[str, ...] | None] = None

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class PolicyLogps(Forward):
    """Policy (and reference) per-sequence log-probs -> the data kind's stats."""

    provides = ("token_logps", "chosen_lengths")

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> Any:
        per_token = "token_logps" in step.objective.needs
        # the reference first: its forward's transient memory is then spent before the policy's activations are
        # held for backward, not on top of them (online DPO on the CPU benchmark: peak RSS 624-630 -> 612-617 MB)
        ref = step.reference.logps(step.batch, per_token=per_token) if step.reference is not None else None
        pol = sequence_logps(step.model, step.batch, per_token=per_token, chunk_size=step.chunk_size,
                             keep_states=keep_states)
        step.policy = pol
        kind = get_kind(step.batch.kind)
        step.metrics.update(logit_metrics(pol, kind.groups(step.batch) if kind.groups else {}))
        return kind.stats(step.batch, pol, ref)


def logit_metrics(policy: Any, groups: dict[str, Any]) -> dict[str, Any]:
    """TRL's ``logits/<group>``: the mean policy logit over a group's response tokens and the vocabulary."""
    out = {}
    if policy.logit_sums is None or not policy.vocab_size:
        return out
    for name, mask in groups.items():
        mask = mask.to(policy.logit_sums.device)
        n = policy.lengths[mask].sum()
        if bool(mask.any()) and float(n) > 0:
            out[f"logits/{name}"] = policy.logit_sums[mask].sum() / (n * policy.vocab_size)
    return out
