"""``degraded`` (SPO, P01): K degraded copies of each chosen response (key content removed at the
objective's ratios, :func:`preftune.objectives.auxiliary.degrade_levels`) scored by the policy, with
gradient: ``extras['degraded_logps']`` and ``extras['degraded_lengths']``, ``[B, K]``.

When the SPO term uses its degree classifier (``wants_degree_states()``), the intact response is scored
too (level 0) and ``extras['degree_states']`` ``[B, K+1, H]`` holds, per version, the policy's final
hidden states that predict the response tokens, averaged over the response (the classifier's input).

Key content: with ``key='surprisal'`` the removed tokens are those of the chosen response that the
policy predicted worst in this step's forward (``stats.policy_chosen_token_logps``, detached) -- preftune's
proxy for P01's key content; otherwise (or when the per-token values do not line up with the response)
random tokens."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.collate import collate_unpaired
from ..data.types import SequenceBatch, TokenizedUnpaired
from ..errors import ConfigError
from ..models.logprobs import sequence_logps
from ..objectives.base import walk
from .base import MicroBatch, Supplier, register_supplier
from .label_states import per_sequence_states


def degradation_term(objective: Any) -> Any:
    """The term (of a composition or wrapper) that asks for degraded responses."""
    for o in walk(objective):
        if hasattr(o, "ratios") and "degraded" in o.needs:
            return o
    raise ConfigError(f"objective '{objective.name}' needs degraded responses but declares no degradation ratios")


def degradation_ratios(objective: Any) -> list[float]:
    """The ratios of the term (of a composition or wrapper) that asks for degraded responses."""
    return list(degradation_term(objective).ratios())


def key_scores(stats: Any, n: int) -> list[list[float] | None]:
    """Per chosen response, each token's surprisal ``-log pi`` (detached) from this step's forward, or None."""
    lp, mask = getattr(stats, "policy_chosen_token_logps", None), getattr(stats, "chosen_mask", None)
    if lp is None or mask is None:
        return [None] * n
    lp, mask = lp.detach().float().cpu(), mask.bool().cpu()
    return [(-lp[i][mask[i]]).tolist() for i in range(n)]


def degraded_batch(objective: Any, items: Sequence[Any], pad_id: int, generator: torch.Generator,
                   scores: Sequence[Sequence[float] | None] | None = None, with_intact: bool = False
                   ) -> tuple[SequenceBatch, int]:
    """The degraded copies (and, ``with_intact``, first the intact response) of each item's chosen response,
    collated; returns the batch and the number of versions per item."""
    from ..objectives.auxiliary import degrade_levels

    ratios = ([0.0] if with_intact else []) + degradation_ratios(objective)
    seqs = []
    for i, it in enumerate(items):
        sc = scores[i] if scores is not None else None
        for ids in degrade_levels(it.chosen_ids, ratios, generator, scores=sc):
            seqs.append(TokenizedUnpaired(it.prompt_ids, ids, True, it.row))
    return collate_unpaired(seqs, pad_id), len(ratios)


@register_supplier
class Degraded(Supplier):
    provides = ("degraded",)

    def check(self, objective: Any, reference: Any) -> None:
        degradation_ratios(objective)

    def supply(self, stats: Any, step: MicroBatch) -> None:
        items, _ = step.need_items("degraded copies of the chosen responses")
        gen = step.generator if step.generator is not None else torch.Generator().manual_seed(0)
        term = degradation_term(step.objective)
        with_states = bool(getattr(term, "wants_degree_states", lambda: False)())
        scores = key_scores(stats, len(items)) if getattr(term, "key", "random") == "surprisal" else None
        deg, V = degraded_batch(step.objective, items, step.pad_id, gen, scores, with_intact=with_states)
        deg = deg.to(step.batch.input_ids.device)
        out = sequence_logps(step.model, deg, chunk_size=step.chunk_size, keep_states=with_states)
        B = len(items)
        sums, lengths = out.sums.view(B, V), out.lengths.view(B, V)
        first = 1 if with_states else 0
        stats.extras["degraded_logps"] = sums[:, first:]
        stats.extras["degraded_lengths"] = lengths[:, first:]
        if with_states:
            h = per_sequence_states(step.model, deg, out.label_states)  # [B*V, T, H]
            m = out.mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
            stats.extras["degree_states"] = pooled.view(B, V, -1)
