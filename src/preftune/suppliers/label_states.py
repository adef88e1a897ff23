"""``label_states``: the policy's final hidden state that predicts each response token, ``[B, T, H]`` per
side (``extras['chosen_label_states']`` / ``['rejected_label_states']``; zero outside the response), with
gradient, in any layout. Taken from the policy's log-prob forward (no second forward). Not read by SparsePO
any more: its learned masks read the *reference's* states of every layer (``reference_layer_states``), as
the authors' code does; kept for objectives of your own that read the policy's states."""
from __future__ import annotations

from typing import Any

import torch

from ..data.types import SequenceBatch
from ..models.hidden import label_states
from ..models.logprobs import label_sources
from .base import MicroBatch, Supplier, register_supplier


def per_sequence_states(model: Any, batch: SequenceBatch, states: torch.Tensor | None = None) -> torch.Tensor:
    """``[S, T, H]``: at each response position of each sequence, the final hidden state predicting it."""
    r, t, _ = label_sources(batch)
    h = states if states is not None else label_states(model, batch)
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, h.shape[-1], dtype=h.dtype, device=h.device).index_put((r, t), h)
    return rows[batch.seq_row]


@register_supplier
class LabelStates(Supplier):
    provides = ("label_states",)
    needs_policy_states = True

    def supply(self, stats: Any, step: MicroBatch) -> None:
        states = step.policy.label_states if step.policy is not None else None
        h = per_sequence_states(step.model, step.batch, states)
        B = step.batch.num_examples
        stats.extras["chosen_label_states"] = h[:B]
        stats.extras["rejected_label_states"] = h[B:]
