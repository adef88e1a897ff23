"""``sparse_reference_masks`` (SparsePO, P25 sec. 3.2 model-activation masks): token masks from the
reference model's hidden activations (:func:`preftune.objectives.token_level.activation_mask`);
``extras['chosen_reward_mask']`` / ``['rejected_reward_mask']``, ``[B, T]``."""
from __future__ import annotations

from typing import Any

from .base import MicroBatch, Supplier, register_supplier, require_reference_model


@register_supplier
class SparseReferenceMasks(Supplier):
    provides = ("sparse_reference_masks",)

    def check(self, objective: Any, reference: Any) -> None:
        require_reference_model(objective, reference, "hidden_states",
                                "derives token masks from the reference model's activations")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        from ..objectives.token_level import activation_mask

        batch = step.batch
        layers = step.reference.hidden_states(batch)
        masks = activation_mask([h[batch.seq_row] for h in layers], batch.seq_mask)
        B = batch.num_examples
        stats.extras["chosen_reward_mask"] = masks[:B]
        stats.extras["rejected_reward_mask"] = masks[B:]
