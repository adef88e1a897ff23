"""``step_weights`` (TPO's adaptive step rewards, P23 sec. 3.3): per response token, the weight of the
reasoning step it belongs to, ``extras['step_weights']`` ``[B, K, T]`` (0 outside responses).

Steps come from the data: ranked completions given as lists of step strings (``docs/data.md``) reach the
batch as ``extras['step_ids']`` ``[B*K, T]``. A step's embedding is the mean of the policy's final hidden
states that predict its tokens (the states its log-prob forward kept, so no second forward: one position
earlier than the states *at* the tokens, which the authors' code averages), with no gradient; the weights
are :func:`preftune.objectives.listwise.adaptive_step_weights` of those embeddings.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .base import MicroBatch, Supplier, register_supplier
from .label_states import per_sequence_states


def step_embeddings(states: torch.Tensor, step_ids: torch.Tensor) -> list[list[torch.Tensor]]:
    """``states`` [K, T, H], ``step_ids`` [K, T] (-1 outside steps) -> per response, its steps' mean states
    (a step left with no tokens, e.g. merged into the next one by the tokenizer, gets a zero vector)."""
    out = []
    for k in range(step_ids.shape[0]):
        n = int(step_ids[k].max()) + 1 if step_ids[k].numel() else 0
        out.append([states[k][step_ids[k] == s].mean(0) if bool((step_ids[k] == s).any())
                    else states.new_zeros(states.shape[-1]) for s in range(n)])
    return out


@register_supplier
class StepWeights(Supplier):
    provides = ("step_weights",)
    needs_policy_states = True

    def prepare(self, objective: Any, reference: Any, train_items: Sequence[Any], other_items: Sequence[Any],
                pad_id: int, device: Any) -> None:
        for it in list(train_items) + list(other_items):
            if getattr(it, "step_ids", None) is None:
                raise ConfigError(f"objective '{objective.name}' with step rewards needs every ranked completion "
                                  f"given as a list of reasoning-step strings; row {it.row} has plain completions "
                                  "(see docs/data.md, ranked data with steps)")
        return None

    @torch.no_grad()
    def supply(self, stats: Any, step: MicroBatch) -> None:
        from ..objectives.listwise import adaptive_step_weights

        batch = step.batch
        if "step_ids" not in batch.extras:
            raise ValueError("step weights need ranked completions given as lists of step strings "
                             "(batch.extras['step_ids'] is missing)")
        states = step.policy.label_states if step.policy is not None else None
        h = per_sequence_states(step.model, batch, states).detach().float()  # [S, T, H]
        ids = batch.extras["step_ids"].to(h.device)
        B, K = batch.num_examples, batch.list_size
        ids = torch.where(batch.seq_mask.to(h.device), ids, torch.full_like(ids, -1))
        h, ids = h.view(B, K, *h.shape[1:]), ids.view(B, K, -1)
        w = torch.stack([adaptive_step_weights(ids[b], step_embeddings(h[b], ids[b])).to(h.device)
                         for b in range(B)])
        stats.extras["step_weights"] = w
