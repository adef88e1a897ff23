"""PPO for language models with a value head and GAE (P04: "Unpacking DPO and PPO", Ivison et al. 2024, which
compares PPO and DPO on the same data; the PPO-RLHF recipe of Ziegler et al. 2019 / Ouyang et al. 2022, as TRL's
``PPOTrainer`` implements it).

Per sampled response (tokens t = 1..T):

* reward per token: ``r_t = -beta (log pi_old(y_t) - log pi_ref(y_t))``, plus the sequence reward ``R`` at the
  last token (Ziegler et al. 2019, eq. 2: the KL penalty inside the reward);
* values ``V_t`` from a linear value head on the policy's final hidden states (a shared trunk, as TRL's
  ``AutoModelForCausalLMWithValueHead``); GAE (Schulman et al. 2016, eq. 16):
  ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = sum_l (gamma lambda)^l delta_{t+l}``, returns ``A_t + V_t``,
  computed with the sampling policy's values, advantages whitened over the batch's tokens;
* loss: PPO's clipped surrogate (Schulman et al. 2017, eq. 7) plus ``vf_coef`` times the clipped value loss
  ``0.5 max((V - ret)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - ret)^2)``, each a mean over the batch's tokens
  (TRL's ``masked_mean``).

With ``num_iterations > 1`` (PPO epochs over a generation batch) the sampler's log-probs and values come from the
rollout (:meth:`PPO.rollout_extras`); otherwise the current policy is the sampler and they are its own, detached.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..objectives.base import ListStats, Objective, ObjectiveOutput, hp, register
from .objectives import _reward_metrics, clipped_token_loss, rewards_of


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates over the masked positions of each row ([..., T]); positions outside the
    mask get 0 and are skipped (the value after a response's last token is 0)."""
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    next_v = torch.zeros_like(values[..., 0])
    next_a = torch.zeros_like(values[..., 0])
    for t in range(values.shape[-1] - 1, -1, -1):
        delta = rewards[..., t] + gamma * next_v - values[..., t]
        a = delta + gamma * lam * next_a
        on = m[..., t] > 0
        adv[..., t] = torch.where(on, a, torch.zeros_like(a))
        next_v = torch.where(on, values[..., t], next_v)
        next_a = torch.where(on, a, next_a)
    return adv


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """``-beta kl_t`` on every response token plus the sequence score on the last one ([..., T])."""
    r = -beta * kl * mask
    T = mask.shape[-1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), idx, torch.full_like(idx, -1)).amax(-1, keepdim=True)  # [..., 1]
    at_last = (idx == last) & mask.bool()
    return r + at_last.to(r.dtype) * scores.unsqueeze(-1).to(r.dtype)


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as TRL's ``masked_whiten``)."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) ** 2) * m).sum() / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * m


@register
@dataclass
class PPO(Objective):
    __doc__ = __doc__
    name = "ppo"
    paper = "P04 (Ivison et al. 2024); Ziegler et al. 2019 eq. 2; Schulman et al. 2016 eq. 16, 2017 eq. 7"
    kind = "list"
    needs = ("token_logps", "token_states")
    reuses_samples: ClassVar[bool] = True  # PPO epochs over a generation batch (num_iterations)
    beta: float = hp(0.05, "KL penalty per token inside the reward (TRL's kl_coef)", low=0.0)
    epsilon: float = hp(0.2, "clipping range of the policy ratio (TRL's cliprange)", low=0.0, low_open=True,
                        high=1.0, high_open=True)
    epsilon_value: float = hp(0.2, "clipping range of the value update (TRL's cliprange_value)", low=0.0,
                              low_open=True)
    vf_coef: float = hp(0.1, "weight of the value loss", low=0.0)
    gamma: float = hp(1.0, "discount", low=0.0, high=1.0)
    lam: float = hp(0.95, "GAE lambda", low=0.0, high=1.0)
    whiten_advantages: bool = hp(True, "whiten advantages over the batch's tokens", choices=(True, False))
    value_head: Any = field(default=None, repr=False, compare=False)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.beta > 0

    def bind(self, model: Any) -> None:
        """A linear value head sized by the policy's hidden size, zero-initialised (V = 0 at the start)."""
        from ..models.loading import unwrap

        cfg = getattr(unwrap(model), "config", None)
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if hidden is None:
            raise ValueError("ppo: the policy's config has no hidden_size for the value head")
        if self.value_head is None or self.value_head.in_features != hidden:
            self.value_head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def values(self, states: Tensor) -> Tensor:
        if self.value_head is None:
            raise ValueError("ppo: the value head is not built; call bind(model) first (the trainer does)")
        w = self.value_head.weight
        return self.value_head(states.to(w.dtype)).squeeze(-1).float()

    def rollout_extras(self, model: Any, batch: Any) -> dict[str, Tensor]:
        """The sampling policy's values of a generated batch ([S, T]), for PPO epochs over it."""
        from ..suppliers.label_states import per_sequence_states

        return {"old_values": self.values(per_sequence_states(model, batch))}

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        pol = stats.policy_token_logps  # [B, K, T]
        B, K, T = pol.shape
        mask = stats.mask.bool()
        if stats.valid is not None:
            mask = mask & stats.valid.bool().unsqueeze(-1)
        old = stats.extras.get("old_token_logps")
        old = pol.detach() if old is None else old.to(pol.dtype).view(B, K, T)
        states = stats.extras["token_states"]
        V = self.values(states).view(B, K, T)
        V_old = stats.extras.get("old_values")
        V_old = V.detach() if V_old is None else V_old.to(V.dtype).view(B, K, T)
        rewards = rewards_of(stats)
        scores = torch.nan_to_num(rewards, nan=0.0)
        scored = ~torch.isnan(rewards)
        mask = mask & scored.unsqueeze(-1)  # an unscored response is not trained on
        kl = torch.zeros_like(V)
        if self.beta > 0:
            kl = (old.float() - stats.reference_token_logps.float()).detach()  # type: ignore[union-attr]
        with torch.no_grad():
            r = token_rewards(scores, kl, mask.float(), self.beta)
            adv = gae(r, V_old, mask, gamma=self.gamma, lam=self.lam)
            ret = adv + V_old
            if self.whiten_advantages:
                adv = whiten(adv, mask)
        pg, low, high = clipped_token_loss(pol.float(), old.float(), adv, epsilon_low=self.epsilon,
                                           epsilon_high=self.epsilon)
        v_clip = V_old + (V - V_old).clamp(-self.epsilon_value, self.epsilon_value)
        vf = 0.5 * torch.maximum((V - ret) ** 2, (v_clip - ret) ** 2)
        m = mask.float()
        n = m.sum().clamp(min=1)
        pg_loss, vf_loss = (pg * m).sum() / n, (vf * m).sum() / n
        per_prompt = ((pg + self.vf_coef * vf) * m).sum((-1, -2)) * B / n  # mean over prompts = total
        metrics = {**_reward_metrics(rewards), "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(),
                   "kl": (kl * m).sum() / scored.sum().clamp(min=1),  # per response: sum over its tokens
                   "values/mean": (V.detach() * m).sum() / n, "returns/mean": (ret * m).sum() / n,
                   "clip_ratio/region_mean": (((low | high) & mask).sum() / n),
                   "value_clip_ratio": ((((V - V_old).abs() > self.epsilon_value) & mask).sum() / n)}
        return ObjectiveOutput(per_prompt, metrics)


__all__ = ["PPO", "gae", "token_rewards", "whiten"]
