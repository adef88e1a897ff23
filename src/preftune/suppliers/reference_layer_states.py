"""``reference_layer_states`` (SparsePO's learned masks, P25; the authors' ``PipelineWrapNL.forward`` reads
``reference_states[1:]``, the reference forward's hidden states of every layer): the *reference* model's
output of every decoder layer at each response position, aligned so that position t holds the state that
predicts token t, ``[B, T, L, H]`` per side (``extras['chosen_reference_layer_states']`` /
``['rejected_reference_layer_states']``; zero outside the response), without gradient, in any layout.

Memory: ``2 * B * T * L * H`` values in the reference's dtype (bf16 7B model, T=2048, B=1: 2 GiB for both
sides) on top of the reference forward; the authors keep the same tensors (the tuple of all layers)."""
from __future__ import annotations

from typing import Any

import torch

from ..data.types import SequenceBatch
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


@torch.no_grad()
def reference_layer_states(reference: Any, batch: SequenceBatch) -> torch.Tensor:
    """``[S, T, L, H]``: every layer's reference state predicting each response token of each sequence."""
    layers = reference.hidden_states(batch)  # L x [R, T, H], aligned
    keep = batch.seq_mask.unsqueeze(-1).to(layers[0].dtype)
    return torch.stack([h[batch.seq_row] * keep for h in layers], dim=2)


@register_supplier
class ReferenceLayerStates(Supplier):
    provides = ("reference_layer_states",)

    def check(self, objective: Any, reference: Any) -> None:
        require_reference_model(objective, reference, "hidden_states",
                                "learns token masks from the reference model's hidden states")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        h = reference_layer_states(step.reference, step.batch)
        B = step.batch.num_examples
        stats.extras["chosen_reference_layer_states"] = h[:B]
        stats.extras["rejected_reference_layer_states"] = h[B:]
