"""A linear value head: one scalar per token from a decoder's hidden states -- a reward model's score (read at the
last real token) or a PPO critic's per-token values.

The layout follows TRL's ``ValueHead`` (``trl/models/modeling_value_head.py``, ``ValueHead``, read at commit
0734879e177ccd0fa0fa6ec83fd232ecc18bbdf9): optional dropout, then ``summary = nn.Linear(hidden_size, 1)``, computed
in float32 whatever the body's dtype. Its state-dict keys are ``summary.weight`` / ``summary.bias``, so under a
``v_head.`` prefix they are TRL's own names. The reward is read where OpenRLHF's reward model reads it
(``OpenRLHF/OpenRLHF``, ``openrlhf/models/model.py``, ``_get_reward_model`` -> ``RewardModel.forward``, read at
commit 707b1060c9167b94a2faf974c07d3165b4ca4841): at the last position whose attention mask is 1,
found from the mask, so left and right padding both work (transformers' sequence classifiers look for the last
non-pad *token id* instead, which skips a final end-of-sequence token when pad and eos are the same id).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class ValueHead(nn.Module):
    """``values = summary(dropout(hidden_states))``: ``[B, T, H] -> [B, T]`` float32, zero where the mask is 0.

    ``bias``: TRL's head has one (OpenRLHF's reward head has none); ``init_std``: ``None`` keeps ``nn.Linear``'s
    default initialisation (TRL's default), a number draws the weight from ``N(0, init_std^2)`` with a zero bias
    (TRL's ``v_head_init_strategy="normal"``, whose default std is 0.2)."""

    def __init__(self, hidden_size: int, *, bias: bool = True, dropout: float = 0.0, init_std: float | None = None):
        super().__init__()
        if hidden_size < 1:
            raise ConfigError(f"value head: hidden_size must be >= 1, got {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"value head: dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1, bias=bias, dtype=torch.float32)
        if init_std is not None:
            if not init_std > 0:
                raise ConfigError(f"value head: init_std must be > 0, got {init_std}")
            nn.init.normal_(self.summary.weight, mean=0.0, std=init_std)
            if bias:
                nn.init.zeros_(self.summary.bias)

    @property
    def hidden_size(self) -> int:
        return self.summary.in_features

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Per-token values ``[B, T]`` (float32; 0 at masked positions)."""
        if hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"value head of size {self.hidden_size} got hidden states of size "
                             f"{hidden_states.shape[-1]}")
        # float32 as TRL does: the value of a bf16 body would otherwise be rounded to 8 bits of mantissa
        h = self.dropout(hidden_states).to(self.summary.weight.dtype)
        values = self.summary(h).squeeze(-1)
        return values if attention_mask is None else values * attention_mask.to(values.dtype)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[B]`` index of each row's last position with mask 1 (any padding side). A row of zeros is an error."""
    m = attention_mask.long()
    if (m.sum(dim=1) == 0).any():
        raise ValueError("a row of the attention mask has no real token: it has no last token to read")
    t = m.shape[1]
    return t - 1 - m.flip(dims=[1]).argmax(dim=1)


def at_last_token(values: Tensor, attention_mask: Tensor) -> Tensor:
    """``[B]``: ``values[b, last_token_index[b]]`` -- the reward of each sequence from per-token values."""
    idx = last_token_index(attention_mask).to(values.device)
    return values.gather(1, idx.unsqueeze(1)).squeeze(1)


__all__ = ["ValueHead", "at_last_token", "last_token_index"]
