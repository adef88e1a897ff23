"""Policy-gradient objectives of online training: GRPO and its loss normalisations, RLOO, REINFORCE with a
baseline. They take the ``list`` kind's :class:`~preftune.objectives.base.ListStats`: K sampled responses per
prompt, ``scores`` the rewards their reward source gave (NaN: unscorable), per-token log-probs of the policy
(and of the reference when ``beta > 0``) and, when a generation batch is reused (``num_iterations > 1``), the
sampler's per-token log-probs in ``extras['old_token_logps']``.

Each is a pure function of those tensors (the objective class only holds hyperparameters), so they can be
called from any loop:

>>> import torch
>>> from preftune.online.objectives import group_advantages
>>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none").tolist()
[[0.5, -0.5, -0.5, 0.5]]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..objectives.base import ListStats, Objective, ObjectiveOutput, hp, register

STD_EPS = 1e-4  # TRL's GRPOTrainer: advantages / (std + 1e-4)


# ----------------------------------------------------------------------------- pure functions


def nanstd(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (NaN for fewer than two values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=keepdim) if dim is not None else torch.nanmean((x - mean) ** 2)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim) if dim is not None else (~torch.isnan(x)).sum()
    var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return var.sqrt()


def group_advantages(rewards: Tensor, *, scale: str = "group") -> Tensor:
    """GRPO's advantages (Shao et al. 2024, eq. 3 with outcome supervision, sec. 4.1.2): each reward minus
    its group's mean, divided by the group's std (``scale='group'``), the batch's std (``'batch'``) or
    nothing (``'none'``: Dr. GRPO, Liu et al. 2025, sec. 3.1). ``rewards`` [B, K], NaN for unscorable
    responses, which are left out of the statistics and get advantage 0 (as TRL's GRPOTrainer)."""
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    mean = torch.nanmean(rewards, dim=1, keepdim=True)
    adv = rewards - mean
    if scale == "group":
        adv = adv / (nanstd(rewards, dim=1, keepdim=True) + STD_EPS)
    elif scale == "batch":
        adv = adv / (nanstd(rewards.flatten()) + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


def leave_one_out_advantages(rewards: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 5 / Kool et al. 2019): ``A_i = R_i - 1/(k-1) sum_{j != i} R_j`` over
    the k scored responses of a prompt (NaN rewards excluded and given 0)."""
    ok = ~torch.isnan(rewards)
    r = torch.nan_to_num(rewards, nan=0.0)
    k = ok.sum(dim=1, keepdim=True)
    others = (r.sum(dim=1, keepdim=True) - r) / (k - 1).clamp(min=1)
    adv = torch.where(ok & (k > 1), r - others, torch.zeros_like(r))
    return adv


def k3_kl(policy_token_logps: Tensor, reference_token_logps: Tensor) -> Tensor:
    """The per-token KL estimate of GRPO (Shao et al. 2024, eq. 4; Schulman's k3):
    ``exp(ref - pol) - (ref - pol) - 1`` (>= 0, unbiased for KL(pi || ref) under samples of pi)."""
    d = reference_token_logps - policy_token_logps
    return torch.exp(d) - d - 1


def clipped_token_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, *, epsilon_low: float,
                       epsilon_high: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, eq. 7), as GRPO uses it (eq. 3):
    ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``, ``rho = exp(logps - old_logps)``.
    ``advantages`` broadcast over tokens ([..., 1]). Returns the loss and the masks of tokens clipped at
    the low and at the high end (for the clip-ratio metrics)."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return loss, low, high


def normalise(token_loss: Tensor, mask: Tensor, how: str, *, max_completion_length: int = 0) -> Tensor:
    """Reduce ``token_loss`` [B, K, T] (masked by ``mask``) to a per-prompt loss [B] whose mean is the batch
    loss of TRL's ``loss_type``:

    * ``grpo``: each response's token mean, then the mean over responses (Shao et al. 2024, eq. 3);
    * ``bnpo``: the sum over all tokens of the batch / the number of response tokens in the batch;
    * ``dapo``: the same as ``bnpo`` on one micro-batch (DAPO, Yu et al. 2025, eq. 8: token-level over the
      generation batch; TRL divides by the tokens of the whole accumulation window);
    * ``dr_grpo``: the sum over all tokens / (number of responses x ``max_completion_length``) (Liu et al.
      2025, eq. 3: a constant normaliser; ``max_completion_length`` 0 -- offline data, no budget -- uses the
      longest response of the batch).
    """
    m = mask.to(token_loss.dtype)
    B = token_loss.shape[0]
    per_seq = (token_loss * m).sum(-1)  # [B, K]
    n_seq = (m.sum(-1) > 0).sum(-1).clamp(min=1)  # responses per prompt (a padded list entry has no token)
    if how == "grpo":
        return (per_seq / m.sum(-1).clamp(min=1)).sum(-1) / n_seq
    if how in ("bnpo", "dapo"):
        return per_seq.sum(-1) * B / m.sum().clamp(min=1)
    if how == "dr_grpo":
        if max_completion_length < 1:  # no generation budget given (offline lists): the longest response here
            max_completion_length = int(m.sum(-1).max().clamp(min=1))
        return per_seq.sum(-1) / (n_seq * max_completion_length)
    raise ValueError(f"unknown normalisation {how!r}")


# ----------------------------------------------------------------------------- objectives


def _mask3(stats: ListStats) -> Tensor:
    m = stats.mask.bool()
    if stats.valid is not None:
        m = m & stats.valid.bool().unsqueeze(-1)
    return m


def rewards_of(stats: ListStats) -> Tensor:
    """The rewards ``[B, K]`` with padded list entries (``valid`` False) as NaN: left out like unscored ones."""
    r = stats.scores.float()
    if stats.valid is not None:
        r = r.masked_fill(~stats.valid.bool().to(r.device), float("nan"))
    return r


def _per_prompt_mean(x: Tensor, rewards: Tensor) -> Tensor:
    """Mean over each prompt's scored responses (0 when none is scored)."""
    ok = ~torch.isnan(rewards)
    return (x * ok).sum(-1) / ok.sum(-1).clamp(min=1)


def _old_logps(stats: ListStats, pol: Tensor) -> Tensor:
    old = stats.extras.get("old_token_logps")
    if old is None:
        return pol.detach()  # on-policy (num_iterations = 1): the sampler is the current policy
    return old.to(pol.dtype).view_as(pol)


def _reward_metrics(rewards: Tensor) -> dict[str, Tensor]:
    r = rewards.detach().float()
    std_g = nanstd(r, dim=1)
    return {"reward": torch.nanmean(r), "reward_std": nanstd(r.flatten()),
            "frac_reward_zero_std": (torch.nan_to_num(std_g, nan=0.0) < 1e-8).float().mean(),
            "unscored": torch.isnan(r).float().mean()}


@dataclass
class _ClippedPolicyGradient(Objective):
    """GRPO (Shao et al. 2024, DeepSeekMath, eq. 3-4): group-relative advantages, PPO's clipped surrogate per
    token, a k3 KL penalty towards the reference (``beta``), and one of TRL's loss normalisations."""

    kind = "list"
    needs = ("token_logps",)
    reuses_samples: ClassVar[bool] = True  # importance ratios against the sampler: num_iterations > 1 is sound
    normalisation: ClassVar[str] = "grpo"
    beta: float = hp(0.0, "weight of the per-token KL penalty towards the reference (TRL's default 0: no "
                          "reference model)", low=0.0)
    epsilon: float = hp(0.2, "lower clipping range of the ratio (and the upper one unless epsilon_high is set)",
                        low=0.0, low_open=True, high=1.0, high_open=True)
    epsilon_high: float = hp(0.0, "upper clipping range (DAPO's clip-higher, e.g. 0.28); 0: the same as epsilon",
                             low=0.0)
    scale_rewards: str = hp("group", "divide advantages by the group's reward std, the batch's, or none",
                            choices=("group", "batch", "none"))
    negative_gradient: bool = hp(True, "False: advantages below zero are set to zero, so only better-than-average "
                                       "samples are pushed (P29's negative-gradient ablation)", choices=(True, False))
    length_normaliser: int = hp(0, "dr_grpo's constant normaliser, the generation budget (TRL's "
                                   "max_completion_length; preftune online sets it from --max-new-tokens; 0: the "
                                   "longest response of the batch)", low=0)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.beta > 0

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        pol = stats.policy_token_logps  # [B, K, T]
        mask = _mask3(stats)
        rewards = rewards_of(stats)
        adv = group_advantages(rewards, scale=self.scale_rewards).to(pol.dtype)
        if not self.negative_gradient:
            adv = adv.clamp(min=0)
        eh = self.epsilon_high or self.epsilon
        tok, low, high = clipped_token_loss(pol, _old_logps(stats, pol), adv.unsqueeze(-1),
                                            epsilon_low=self.epsilon, epsilon_high=eh)
        metrics = _reward_metrics(rewards)
        if self.beta > 0:
            kl = k3_kl(pol, stats.reference_token_logps.to(pol.dtype))  # type: ignore[union-attr]
            tok = tok + self.beta * kl
            metrics["kl"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
        loss = normalise(tok, mask, self.normalisation, max_completion_length=self.length_normaliser)
        n = mask.sum().clamp(min=1)
        metrics.update({
            "clip_ratio/low_mean": (low & mask).sum() / n, "clip_ratio/high_mean": (high & mask).sum() / n,
            "clip_ratio/region_mean": ((low | high) & mask).sum() / n,
            # a sample estimate of the entropy: -E[log pi(y_t)] over the sampled tokens
            "entropy": -(pol.detach() * mask).sum() / n})
        return ObjectiveOutput(loss, metrics)


@register
@dataclass
class GRPO(_ClippedPolicyGradient):
    __doc__ = _ClippedPolicyGradient.__doc__ + " Normalisation ``grpo``: per-response token mean, then mean."
    name = "grpo"
    paper = "Shao et al. 2024 (DeepSeekMath) eq. 3-4; TRL GRPOTrainer._compute_loss loss_type='grpo'"
    normalisation = "grpo"


@register
@dataclass
class BNPO(_ClippedPolicyGradient):
    __doc__ = _ClippedPolicyGradient.__doc__ + " Normalisation ``bnpo``: token sum / tokens in the batch."
    name = "bnpo"
    paper = "Xiao et al. 2025 (BNPO); TRL GRPOTrainer._compute_loss loss_type='bnpo'"
    normalisation = "bnpo"


@register
@dataclass
class DAPO(_ClippedPolicyGradient):
    __doc__ = (_ClippedPolicyGradient.__doc__ + " Normalisation ``dapo`` (Yu et al. 2025, eq. 8): token-level, "
               "token sum / tokens in the batch; use epsilon_high=0.28 for DAPO's clip-higher.")
    name = "dapo"
    paper = "Yu et al. 2025 (DAPO) eq. 8; TRL GRPOTrainer._compute_loss loss_type='dapo'"
    normalisation = "dapo"


@register
@dataclass
class DrGRPO(_ClippedPolicyGradient):
    __doc__ = (_ClippedPolicyGradient.__doc__ + " Dr. GRPO (Liu et al. 2025, eq. 3): no std scaling by default "
               "and a constant normaliser (responses x length_normaliser, the generation budget).")
    name = "dr_grpo"
    paper = "Liu et al. 2025 (Dr. GRPO) eq. 3; TRL GRPOTrainer._compute_loss loss_type='dr_grpo'"
    normalisation = "dr_grpo"
    scale_rewards: str = hp("none", "divide advantages by the group's reward std, the batch's, or none",
                            choices=("group", "batch", "none"))


def _shaped_rewards(stats: ListStats, beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Rewards minus ``beta`` times each response's KL estimate ``log pi(y) - log pi_ref(y)`` (detached): the
    KL penalty inside the reward, as RLOO (Ahmadian et al. 2024, sec. 2) and PPO-RLHF put it."""
    r = rewards_of(stats)
    if beta <= 0:
        return r, {}
    kl = (stats.policy_logps - stats.reference_logps).detach().float()  # type: ignore[operator]
    return r - beta * kl, {"kl": torch.nanmean(torch.where(torch.isnan(r), torch.nan, kl))}


@register
@dataclass
class RLOO(Objective):
    """RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 5): REINFORCE on whole responses with the
    leave-one-out baseline of the other k-1 samples of the prompt,
    ``L = -1/k sum_i [R_i - 1/(k-1) sum_{j != i} R_j] log pi(y_i|x)``, ``R = r - beta (log pi - log pi_ref)``
    (the KL in the reward, detached). On-policy: the samples must come from the current policy."""

    name = "rloo"
    paper = "Ahmadian et al. 2024 (RLOO) eq. 5"
    kind = "list"
    beta: float = hp(0.05, "weight of the sequence-level KL penalty inside the reward (0: no reference)", low=0.0)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.beta > 0

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        R, extra = _shaped_rewards(stats, self.beta)
        adv = leave_one_out_advantages(R).to(stats.policy_logps.dtype)
        loss = -_per_prompt_mean(adv * stats.policy_logps, R)
        return ObjectiveOutput(loss, {**_reward_metrics(rewards_of(stats)), **extra})


class EMA(torch.nn.Module):
    """An exponential moving average as checkpointed state (a float64 value and whether it is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros((), dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def update(self, x: float, decay: float) -> None:
        self.value.copy_(torch.tensor(x, dtype=torch.float64) if not bool(self.seen)
                         else decay * self.value + (1 - decay) * x)
        self.seen.fill_(True)


@register
@dataclass
class Reinforce(Objective):
    """REINFORCE with a baseline (Williams 1992, eq. 11; as in ReMax/RLOO's comparisons): ``L = -(R - b) log
    pi(y|x)`` per response, ``b`` an exponential moving average of the batch mean reward over training steps
    (the value before this batch: the baseline must not depend on the sample it scores), ``R = r - beta
    (log pi - log pi_ref)``. Works with one sample per prompt."""

    name = "reinforce"
    paper = "Williams 1992 eq. 11 (REINFORCE with baseline)"
    kind = "list"
    beta: float = hp(0.05, "weight of the sequence-level KL penalty inside the reward (0: no reference)", low=0.0)
    baseline_decay: float = hp(0.9, "decay of the moving-average baseline", low=0.0, high=1.0, high_open=True)
    baseline: EMA = field(default_factory=EMA, repr=False, compare=False)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.beta > 0

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        R, extra = _shaped_rewards(stats, self.beta)
        b = float(self.baseline.value) if bool(self.baseline.seen) else 0.0
        ok = ~torch.isnan(R)
        adv = torch.where(ok, R - b, torch.zeros_like(R)).to(stats.policy_logps.dtype)
        loss = -_per_prompt_mean(adv * stats.policy_logps, R)
        if torch.is_grad_enabled() and bool(ok.any()):  # only training steps move the baseline
            self.baseline.update(float(R[ok].mean()), self.baseline_decay)
        return ObjectiveOutput(loss, {**_reward_metrics(rewards_of(stats)), **extra,
                                      "baseline": torch.tensor(b)})


__all__ = ["BNPO", "DAPO", "DrGRPO", "EMA", "GRPO", "RLOO", "Reinforce", "clipped_token_loss", "group_advantages",
           "k3_kl", "leave_one_out_advantages", "nanstd", "normalise"]
