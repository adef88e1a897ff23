"""``onpolicy_samples`` (HyPO, P70): for each prompt of the batch, responses sampled from the current policy
(no gradient through the sampling; transformers ``generate``, seeded by the step's RNG so a run reproduces and
resumes), then scored with gradient by the policy and without by the reference:
``extras['onpolicy_logps']``, ``extras['onpolicy_ref_logps']`` and ``extras['onpolicy_lengths']``, ``[B, n]``.

Settings come from the objective that asks (``onpolicy_samples``, ``max_new_tokens``, ``temperature``)."""
from __future__ import annotations

from typing import Any

import torch

from ..data.collate import collate_unpaired
from ..data.types import TokenizedUnpaired
from ..errors import ConfigError
from ..models.generate import generate
from ..models.logprobs import sequence_logps
from ..objectives.base import walk
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


def sampling_term(objective: Any) -> Any:
    for o in walk(objective):
        if "onpolicy_samples" in o.needs and hasattr(o, "max_new_tokens"):
            return o
    raise ConfigError(f"objective '{objective.name}' needs on-policy samples but declares no sampling settings")


@register_supplier
class OnPolicySamples(Supplier):
    provides = ("onpolicy_samples",)

    def check(self, objective: Any, reference: Any) -> None:
        sampling_term(objective)
        require_reference_model(objective, reference, "logps", "scores its on-policy samples under the reference")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        term = sampling_term(step.objective)
        items, _ = step.need_items("the prompts to sample on-policy responses for")
        gen = step.generator if step.generator is not None else torch.Generator().manual_seed(0)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        n = term.onpolicy_samples
        outs = generate(step.model, None, [it.prompt_ids for it in items], n=n, max_new_tokens=term.max_new_tokens,
                        temperature=term.temperature, seed=seed, batch_size=max(1, len(items) * n))
        seqs = [TokenizedUnpaired(items[g.index].prompt_ids, g.response_ids, True, items[g.index].row) for g in outs]
        batch = collate_unpaired(seqs, step.pad_id).to(step.batch.input_ids.device)
        pol = sequence_logps(step.model, batch, chunk_size=step.chunk_size)
        with torch.no_grad():
            ref = step.reference.logps(batch)
        B = len(items)
        stats.extras["onpolicy_logps"] = pol.sums.view(B, n)
        stats.extras["onpolicy_ref_logps"] = ref.sums.view(B, n).to(pol.sums.dtype)
        stats.extras["onpolicy_lengths"] = pol.lengths.view(B, n)
