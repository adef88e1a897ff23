"""``token_kl`` (SparsePO's sequential KL term, P25 eq. 8, as TDPO): ``KL(pi_ref(.|ctx) || pi(.|ctx))`` over
the whole vocabulary at every response position, with gradient through the policy. The policy's final
hidden states are those its log-prob forward kept (no second forward); both heads are applied in
checkpointed chunks so no ``[tokens, vocab]`` tensor outlives its chunk.
``extras['chosen_token_kl']`` / ``['rejected_token_kl']``, ``[B, T]``."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..data.types import SequenceBatch
from ..models.hidden import label_states
from ..models.logprobs import head_fn, label_sources
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


def _kl_chunk(pol_head: Callable, ref_head: Callable, hp: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(pol_head(hp), dim=-1)
    with torch.no_grad():
        lr = torch.log_softmax(ref_head(hr), dim=-1)
    return (lr.exp() * (lr - lp)).sum(-1)


def token_kl(model: Any, reference: Any, batch: SequenceBatch, chunk_size: int = 1024,
             policy_states: torch.Tensor | None = None) -> torch.Tensor:
    """``[S, T]``: ``KL(pi_ref(.|ctx) || pi(.|ctx))`` at each response position of each sequence, 0 elsewhere;
    differentiable in the policy. Chunks of ``chunk_size`` positions are checkpointed, so their logits are
    recomputed in backward instead of kept. ``policy_states``: the policy's label states if already computed
    (``sequence_logps(..., keep_states=True)``), saving a forward."""
    from torch.utils.checkpoint import checkpoint

    r, t, _ = label_sources(batch)
    hp = policy_states if policy_states is not None else label_states(model, batch)
    hr = reference.label_states(batch)
    pol_head, ref_head = head_fn(model), reference.output_head()
    grad = torch.is_grad_enabled() and hp.requires_grad
    vals = [checkpoint(_kl_chunk, pol_head, ref_head, hp[i:i + chunk_size], hr[i:i + chunk_size],
                       use_reentrant=False) if grad else _kl_chunk(pol_head, ref_head, hp[i:i + chunk_size],
                                                                   hr[i:i + chunk_size])
            for i in range(0, hp.shape[0], chunk_size)]
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, dtype=torch.float32, device=hp.device)
    if vals:
        rows = rows.index_put((r, t), torch.cat(vals))
    return rows[batch.seq_row] * batch.seq_mask


@register_supplier
class TokenKL(Supplier):
    provides = ("token_kl",)
    needs_policy_states = True

    def check(self, objective: Any, reference: Any) -> None:
        require_reference_model(objective, reference, "label_states",
                                "needs the reference's distribution over the vocabulary at every token")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        states = step.policy.label_states if step.policy is not None else None
        kl = token_kl(step.model, step.reference, step.batch, step.chunk_size, states)
        B = step.batch.num_examples
        stats.extras["chosen_token_kl"] = kl[:B]
        stats.extras["rejected_token_kl"] = kl[B:]
