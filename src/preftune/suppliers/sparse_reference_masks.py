"""``sparse_reference_masks`` (SparsePO's reference-activation masks, "MaPO", P25; the authors'
``MAPOTrainer.concatenated_forward`` with ``activation_mapping='zn_rescale'``): token masks from the reference
model's activations, :func:`preftune.objectives.token_level.activation_mask` of every layer's output and
(``activations`` with ``logits``) the mean logit, ``extras['chosen_reward_mask']`` / ``['rejected_reward_mask']``,
``[B, T]``, no gradient. The logits are computed at response positions only, in chunks."""
from __future__ import annotations

from typing import Any

import torch

from ..data.types import SequenceBatch
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


@torch.no_grad()
def reference_masks(reference: Any, batch: SequenceBatch, activations: str = "resid,logits",
                    chunk_size: int = 1024) -> torch.Tensor:
    """``[S, T]`` MaPO masks of each sequence's response tokens from the reference source."""
    from ..objectives.token_level import activation_mask

    families = activations.split(",")
    layers = reference.hidden_states(batch)  # L x [R, T, H], aligned: position t predicts token t
    states = [h[batch.seq_row] for h in layers]
    logits = None
    if "logits" in families:
        head = reference.output_head()
        last = states[-1]  # the final (normed) state: what the LM head reads
        s, t = batch.seq_mask.nonzero(as_tuple=True)
        vals = [head(last[s[i:i + chunk_size], t[i:i + chunk_size]]).float().mean(-1)
                for i in range(0, s.shape[0], chunk_size)]
        logits = torch.zeros(batch.seq_mask.shape, dtype=torch.float32, device=last.device)
        if vals:
            logits[s, t] = torch.cat(vals)
        logits = logits.unsqueeze(-1)  # [S, T, 1]: the vocabulary mean, as zn_rescale's reduction
    return activation_mask(states if "resid" in families else [], batch.seq_mask, logits)


def _activations(objective: Any) -> str:
    """The ``activations`` setting of the SparsePO term in ``objective`` (itself, or inside a composition)."""
    if getattr(objective, "name", None) == "sparse_po":
        return str(objective.activations)
    for child in objective.children() if hasattr(objective, "children") else ():
        found = _activations(child)
        if found:
            return found
    return ""


@register_supplier
class SparseReferenceMasks(Supplier):
    provides = ("sparse_reference_masks",)

    def check(self, objective: Any, reference: Any) -> None:
        require_reference_model(objective, reference, "hidden_states",
                                "derives token masks from the reference model's activations")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        acts = _activations(step.objective)
        masks = reference_masks(step.reference, step.batch, acts or "resid,logits", step.chunk_size)
        B = step.batch.num_examples
        stats.extras["chosen_reward_mask"] = masks[:B]
        stats.extras["rejected_reward_mask"] = masks[B:]
