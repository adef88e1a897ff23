"""``log_sum_sq_probs`` (WPO's aligned weight, P28): ``log sum_v p(v | context)^2`` of the policy at every
response position, without gradient; the LM head applied in chunks so full logits never exist.
``extras['chosen_log_sum_sq_probs']`` / ``['rejected_log_sum_sq_probs']``, ``[B, T]``."""
from __future__ import annotations

from typing import Any

import torch

from ..data.types import SequenceBatch
from ..models.hidden import decoder_hidden
from ..models.logprobs import head_fn, label_sources
from .base import MicroBatch, Supplier, register_supplier


@torch.no_grad()
def log_sum_sq_probs(model: Any, batch: SequenceBatch, chunk_size: int = 1024) -> torch.Tensor:
    """``[S, T]``: ``log sum_v p(v | context)^2`` at each response position of each sequence, 0 elsewhere
    (any layout: each label's context is read off the batch's mask)."""
    hidden = decoder_hidden(model, batch)
    head = head_fn(model)
    r, t, src = label_sources(batch)
    h = hidden[r, src]
    vals = [torch.logsumexp(2 * torch.log_softmax(head(h[i:i + chunk_size]), dim=-1), dim=-1)
            for i in range(0, h.shape[0], chunk_size)]
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, dtype=torch.float32, device=hidden.device)
    if vals:
        rows[r, t] = torch.cat(vals)
    return rows[batch.seq_row] * batch.seq_mask


@register_supplier
class LogSumSqProbs(Supplier):
    provides = ("log_sum_sq_probs",)

    def supply(self, stats: Any, step: MicroBatch) -> None:
        lss = log_sum_sq_probs(step.model, step.batch, step.chunk_size)
        B = step.batch.num_examples
        stats.extras["chosen_log_sum_sq_probs"] = lss[:B]
        stats.extras["rejected_log_sum_sq_probs"] = lss[B:]
