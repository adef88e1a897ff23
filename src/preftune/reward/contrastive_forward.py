"""The reward model's representations of the chosen and rejected responses, for P67's contrastive term
(Secrets of RLHF II, sec. 3.1: ``f(x, y)``, the features the score head reads).

``chosen_features`` / ``rejected_features`` ``[B, H]``: the model's final hidden state (after the last norm) at
each sequence's last real token -- the position a sequence-classification head scores -- with gradient, so the
contrastive term trains the backbone. A supplier, not a new forward, so that ``preftune rm train --loss
"bradley_terry,rm_simcse:1.0"`` and :func:`preftune.reward.train_reward_model` run it unchanged; the price is a
second forward pass of the reward model per micro-batch (:class:`~preftune.reward.ScoreForward` keeps no hidden
states). In training mode the model's own dropout is active in that pass.
"""
from __future__ import annotations

from typing import Any

import torch

from ..suppliers.base import Supplier, register_supplier


def last_token_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[R, H]``: the final hidden state at each row's last real token (rows right-padded, as the padded layout
    collates them)."""
    if callable(getattr(model, "hidden_states", None)):  # a causal LM with a value head (CausalLMWithValueHead)
        hidden = model.hidden_states(input_ids, attention_mask)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
    last = attention_mask.long().sum(-1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@register_supplier
class PairFeatures(Supplier):
    """``chosen_features``, ``rejected_features`` ``[B, H]`` of a padded pair batch (chosen rows first)."""

    provides = ("chosen_features", "rejected_features")

    def supply(self, stats: Any, step: Any) -> None:
        b = step.batch
        if b.attention_mask.dim() != 2:
            raise ValueError("the reward model's features are read from the padded layout (a 2-D attention mask)")
        feats = last_token_features(step.model, b.input_ids, b.attention_mask)[b.seq_row]
        B = b.num_examples
        stats.extras["chosen_features"], stats.extras["rejected_features"] = feats[:B], feats[B:]


__all__ = ["PairFeatures", "last_token_features"]
