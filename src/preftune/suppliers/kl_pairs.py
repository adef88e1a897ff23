"""``kl_pairs`` (KTO, P06): log-probs of mismatched prompt/completion pairs -- each prompt with the next
example's completion (a cyclic shift) -- under the policy and the reference, without gradient; KTO's
batch estimate of its reference point ``z0``."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from ..models.logprobs import sequence_logps
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


def mismatched(items: Sequence[Any]) -> list[Any]:
    """Each prompt with the next example's completion (a cyclic shift)."""
    n = len(items)
    return [replace(items[i], completion_ids=items[(i + 1) % n].completion_ids) for i in range(n)]


@register_supplier
class KLPairs(Supplier):
    provides = ("kl_pairs",)

    def check(self, objective: Any, reference: Any) -> None:
        # the mismatched pairs are made per batch: a cache of the dataset's own pairs cannot score them
        require_reference_model(objective, reference, "hidden_states",
                                "needs reference log-probs of mismatched prompt/completion pairs made per batch "
                                "(kl_estimate='batch')")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        items, collate = step.need_items("KL pairs (mismatched prompt/completion pairs)")
        kl = collate(mismatched(items)).to(step.batch.input_ids.device)
        with torch.no_grad():
            stats.kl_policy_logps = sequence_logps(step.model, kl, chunk_size=step.chunk_size).sums
            ref = step.reference.logps(kl) if step.reference is not None else None
            stats.kl_reference_logps = ref.sums if ref is not None else None
