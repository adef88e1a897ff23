"""SparsePO (P25): token-level masks on the reward and KL terms of DPO.

Loss (P25 eq. 6-8): ``-log sigmoid(u - d)`` with
``u = beta * sum_t m^u_w,t h_w,t - beta * sum_t m^u_l,t h_l,t`` (masked token log-ratios) and
``d = beta * sum_t m^d_l,t KL_l,t - beta * sum_t m^d_w,t KL_w,t`` (masked sequential KL, as TDPO).

What the trainer supplies (``extras``, all [B, T], zero outside the response masks):

* ``chosen_reward_mask`` / ``rejected_reward_mask``: m^u; ``chosen_kl_mask`` / ``rejected_kl_mask``: m^d
  (default: the reward masks).
  - ``mask='reference'`` (needs ``"sparse_reference_masks"``): masks derived from the *reference*
    model's hidden states with :func:`activation_mask` (P25 sec. 3.2, model-activation masks); one mask
    serves both terms.
  - ``mask='learned'`` (needs ``"label_states"``: ``chosen_label_states`` / ``rejected_label_states``
    [B, T, H], the *policy's* final hidden state that predicts each response token): the objective's own
    :class:`SparseMaskHead` (``sparse_mask_head``, built by :meth:`SparsePO.bind` from the policy's hidden
    size) turns them into both masks. The head is the objective's state: the trainer adds its parameters
    to the optimizer and saves it in checkpoints and ``final/`` (``extra_modules.safetensors``).
* ``chosen_token_kl`` / ``rejected_token_kl``: per-token ``KL(pi_ref(.|prefix) || pi(.|prefix))`` over the
  vocabulary (needs ``"token_kl"``); only read when ``kl_term='sequential'``. With ``kl_term='none'``
  d = 0.

With all masks 1 and ``kl_term='none'`` this is DPO.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, register, require, require_extras, reward_metrics


def activation_mask(hidden_states: tuple[Tensor, ...] | list[Tensor], mask: Tensor) -> Tensor:
    """Reference-derived token mask (P25, model-activation mask): for each layer the token's activation
    norm divided by the largest over the sequence's response tokens, averaged over layers. [B, T] in
    [0, 1], zero outside ``mask``. ``hidden_states``: per-layer [B, T, H] of the reference model,
    aligned so that position t is the state that *predicts* token t."""
    m = mask.bool()
    acc = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for h in hidden_states:
        n = h.float().norm(dim=-1).masked_fill(~m, 0.0)
        acc += n / n.amax(-1, keepdim=True).clamp(min=1e-12)
    return (acc / max(len(hidden_states), 1)) * m


class SparseMaskHead(nn.Module):
    """Learned SparsePO masks: a linear map of the policy's hidden state to two gates (reward, KL).

    ``forward(hidden [B, T, H], mask [B, T]) -> (reward_mask, kl_mask)``, each ``sigmoid`` in (0, 1) --
    ``relu``-then-clip with ``activation='relu'``, which gives exact zeros (sparsity). Initialised to
    output about 1 (bias +3) so training starts near DPO.
    """

    def __init__(self, hidden_size: int, activation: str = "sigmoid"):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, 3.0 if activation == "sigmoid" else 1.0)
        self.activation = activation

    def forward(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        z = self.proj(hidden.float())
        g = torch.sigmoid(z) if self.activation == "sigmoid" else torch.clamp(torch.relu(z), max=1.0)
        g = g * mask.unsqueeze(-1).to(g.dtype)
        return g[..., 0], g[..., 1]


@register
@dataclass
class SparsePO(Objective):
    """SparsePO (P25 eq. 6-8): DPO with token-level reward and KL masks (see the module docstring for the
    masks and KL the trainer supplies)."""

    name = "sparse_po"
    paper = "P25 (SparsePO) eq. 6-8"
    beta: float = hp(0.1, "inverse temperature", low=0.0, low_open=True)
    mask: str = hp("reference", "where the token masks come from", choices=("reference", "learned"))
    kl_term: str = hp("none", "masked sequential KL term d (needs per-token KL over the vocabulary)",
                      choices=("none", "sequential"))

    def __post_init__(self) -> None:
        super().__post_init__()
        n = ["token_logps", "sparse_reference_masks" if self.mask == "reference" else "label_states"]
        if self.kl_term == "sequential":
            n.append("token_kl")
        self.needs = tuple(n)  # type: ignore[misc]
        self.sparse_mask_head: SparseMaskHead | None = None

    def bind(self, model: Any) -> None:
        """``mask='learned'``: build the mask head for the policy's hidden size (once)."""
        if self.mask != "learned" or self.sparse_mask_head is not None:
            return
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        with torch.random.fork_rng(devices=[]):  # its init is fixed (zero weights, bias 3): the run's RNG is kept
            self.sparse_mask_head = SparseMaskHead(int(base.config.hidden_size))

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "policy_chosen_token_logps", "policy_rejected_token_logps",
                "reference_chosen_token_logps", "reference_rejected_token_logps")
        ex = stats.extras
        if self.mask == "learned":
            if self.sparse_mask_head is None:
                raise ValueError("objective 'sparse_po' with mask='learned' has no mask head: call "
                                 "objective.bind(policy) first (the trainer does)")
            require_extras(stats, self.name, "chosen_label_states", "rejected_label_states")
            ex = dict(ex)
            for side in ("chosen", "rejected"):
                rm, km = self.sparse_mask_head(ex[f"{side}_label_states"], getattr(stats, f"{side}_mask"))
                ex[f"{side}_reward_mask"], ex[f"{side}_kl_mask"] = rm, km
        else:
            require_extras(stats, self.name, "chosen_reward_mask", "rejected_reward_mask")
        hc_t = stats.policy_chosen_token_logps - stats.reference_chosen_token_logps  # type: ignore[operator]
        hr_t = stats.policy_rejected_token_logps - stats.reference_rejected_token_logps  # type: ignore[operator]
        uc = (ex["chosen_reward_mask"] * hc_t).sum(-1)
        ur = (ex["rejected_reward_mask"] * hr_t).sum(-1)
        u = self.beta * (uc - ur)
        d = torch.zeros_like(u)
        if self.kl_term == "sequential":
            require_extras(stats, self.name, "chosen_token_kl", "rejected_token_kl")
            kc = ex.get("chosen_kl_mask", ex["chosen_reward_mask"]) * ex["chosen_token_kl"]
            kr = ex.get("rejected_kl_mask", ex["rejected_reward_mask"]) * ex["rejected_token_kl"]
            d = self.beta * (kr.sum(-1) - kc.sum(-1))
        m = reward_metrics(self.beta * uc, self.beta * ur, stats)
        for side in ("chosen", "rejected"):
            mk = getattr(stats, f"{side}_mask")
            if mk is not None:
                m[f"sparse/{side}_mask_mean"] = (ex[f"{side}_reward_mask"].detach().float().sum()
                                                 / mk.float().sum().clamp(min=1))
        return ObjectiveOutput(apply_weight(-F.logsigmoid(u - d), stats.weight), m)
