"""``degraded`` (SPO, P01): the policy's log-probs of K degraded copies of each chosen response (random
tokens dropped at the objective's ratios, :func:`preftune.objectives.auxiliary.degrade_levels`), with
gradient: ``extras['degraded_logps']`` and ``extras['degraded_lengths']``, ``[B, K]``."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.collate import collate_unpaired
from ..data.types import SequenceBatch, TokenizedUnpaired
from ..errors import ConfigError
from ..models.logprobs import sequence_logps
from ..objectives.base import walk
from .base import MicroBatch, Supplier, register_supplier


def degradation_ratios(objective: Any) -> list[float]:
    """The ratios of the term (of a composition or wrapper) that asks for degraded responses."""
    for o in walk(objective):
        if hasattr(o, "ratios") and "degraded" in o.needs:
            return list(o.ratios())
    raise ConfigError(f"objective '{objective.name}' needs degraded responses but declares no degradation ratios")


def degraded_batch(objective: Any, items: Sequence[Any], pad_id: int, generator: torch.Generator
                   ) -> tuple[SequenceBatch, int]:
    from ..objectives.auxiliary import degrade_levels

    ratios = degradation_ratios(objective)
    seqs = []
    for it in items:
        for ids in degrade_levels(it.chosen_ids, ratios, generator):
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
        deg, K = degraded_batch(step.objective, items, step.pad_id, gen)
        out = sequence_logps(step.model, deg.to(step.batch.input_ids.device), chunk_size=step.chunk_size)
        B = len(items)
        stats.extras["degraded_logps"] = out.sums.view(B, K)
        stats.extras["degraded_lengths"] = out.lengths.view(B, K)
