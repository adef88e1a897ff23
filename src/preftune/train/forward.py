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
    provides: ClassVar[tuple[str, ...]] = ()

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class PolicyLogps(Forward):
    """Policy (and reference) per-sequence log-probs -> the data kind's stats."""

    provides = ("token_logps", "chosen_lengths")

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> Any:
        per_token = "token_logps" in step.objective.needs
        pol = sequence_logps(step.model, step.batch, per_token=per_token, chunk_size=step.chunk_size,
                             keep_states=keep_states)
        step.policy = pol
        ref = step.reference.logps(step.batch, per_token=per_token) if step.reference is not None else None
        return get_kind(step.batch.kind).stats(step.batch, pol, ref)
