"""Wrappers that reweight or perturb any pair objective: WPO, LCPO, MADPO, TARS.

Build with ``get("lcpo", base="ipo", beta=0.5)`` (hyperparameters the wrapper does not declare go to
the base) or from the CLI: ``--loss lcpo --base ipo --beta 0.5``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import ObjectiveOutput, PairStats, Wrapper, hp, masked_mean, register, require, swap_pair


def _with_weight(stats: PairStats, w: Tensor) -> PairStats:
    """``stats`` whose ``weight`` column is multiplied by ``w`` (so the base applies it)."""
    return dataclasses.replace(stats, weight=w if stats.weight is None else stats.weight * w)


def log_sum_sq_probs(logits: Tensor) -> Tensor:
    """``log sum_v p_v^2`` per position from logits [..., V] (WPO's alignment term, in float32)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(2 * lp, dim=-1)


@register
@dataclass
class WPO(Wrapper):
    """WPO weighting (Zhou et al. 2024, eq. 2 with the sampling alignment of sec. 3.2; TRL ``use_weighting``):
    each pair's base loss is multiplied by ``w(y_w) w(y_l)`` (detached), with
    ``w(y) = exp(mean_t [log p(y_t) - log sum_v p(v)^2])`` under the policy.

    ``alignment='sum_sq'`` (TRL's exact form) needs the per-token ``log sum_v p_v^2`` of the policy in
    ``extras['chosen_log_sum_sq_probs']`` / ``extras['rejected_log_sum_sq_probs']`` [B, T] (needs
    ``"log_sum_sq_probs"``; compute with :func:`log_sum_sq_probs` from the logits). It is *not*
    computable from token log-probs alone. ``alignment='none'`` is the paper's unaligned weight
    ``exp(mean_t log p(y_t))`` (the geometric-mean token probability), computable from token log-probs.
    """

    name = "wpo"
    paper = "Zhou et al. 2024 (WPO), eq. 2"
    alignment: str = hp("sum_sq", "per-token alignment of the weight", choices=("sum_sq", "none"))

    def __post_init__(self) -> None:
        self.extra_needs = ("token_logps", "log_sum_sq_probs") if self.alignment == "sum_sq" else ("token_logps",)  # type: ignore[misc]
        super().__post_init__()

    def weights(self, stats: PairStats) -> tuple[Tensor, Tensor]:
        require(stats, self.name, "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_mask",
                "rejected_mask")
        out = []
        for side in ("chosen", "rejected"):
            tok = getattr(stats, f"policy_{side}_token_logps").detach()
            mask = getattr(stats, f"{side}_mask").bool()
            if self.alignment == "sum_sq":
                key = f"{side}_log_sum_sq_probs"
                if key not in stats.extras:
                    raise ValueError(f"objective 'wpo' (alignment='sum_sq') needs extras['{key}'] [B, T]; "
                                     "or use alignment='none'")
                tok = tok - stats.extras[key].detach()
            out.append(torch.exp(masked_mean(tok, mask)))
        return out[0], out[1]

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        wc, wr = self.weights(stats)
        out = self.base_objective(_with_weight(stats, wc * wr))
        out.metrics["wpo/weight"] = (wc * wr).detach().float().mean()
        return out


def implicit_margin(stats: PairStats, beta: float) -> Tensor:
    """beta * (h_w - h_l) with a reference, else beta * (average log-prob difference)."""
    if stats.has_reference:
        return beta * ((stats.policy_chosen_logps - stats.reference_chosen_logps)
                       - (stats.policy_rejected_logps - stats.reference_rejected_logps))  # type: ignore[operator]
    require(stats, "lcpo", "chosen_lengths", "rejected_lengths")
    return beta * (stats.policy_chosen_logps / stats.chosen_lengths.clamp(min=1)  # type: ignore[union-attr]
                   - stats.policy_rejected_logps / stats.rejected_lengths.clamp(min=1))  # type: ignore[union-attr]


class NoiseRate(torch.nn.Module):
    """LCPO's running noise-rate estimate as a float64 buffer, so checkpoints carry it."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(init), dtype=torch.float64))


@register
@dataclass
class LCPO(Wrapper):
    """LCPO (P21): EM over latent label correctness around any base objective.

    E-step (per pair, detached): ``q = (1-eps) sigmoid(z) / ((1-eps) sigmoid(z) + eps sigmoid(-z))``, the
    posterior that the given label is correct, with ``z`` the model's implicit margin
    (``posterior_beta * (h_w - h_l)``; reference-free bases use per-token average log-probs).
    Loss: ``q * L_base(y_w > y_l) + (1 - q) * L_base(y_l > y_w)`` (the expected complete-data loss;
    ``flip=False`` keeps only the first term). M-step: the noise rate ``eps`` is re-estimated as the mean
    of ``1 - q`` over the batch and tracked by an exponential moving average during training
    (``momentum``), starting from ``noise_init``; it is never given.
    """

    name = "lcpo"
    paper = "P21 (LCPO), EM posterior weighting (eq. 6-8)"
    posterior_beta: float = hp(0.1, "scale of the implicit margin inside the posterior", low=0.0, low_open=True)
    noise_init: float = hp(0.1, "initial noise-rate estimate", low=0.0, high=0.5, high_open=True)
    momentum: float = hp(0.1, "EMA step of the noise-rate estimate (0 freezes it)", low=0.0, high=1.0)
    flip: bool = hp(True, "add (1-q) times the loss of the flipped pair", choices=(True, False))
    estimate: "NoiseRate" = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.estimate is None:
            self.estimate = NoiseRate(self.noise_init)

    @property
    def noise_rate(self) -> float:
        """The current noise-rate estimate (state the trainer checkpoints)."""
        return float(self.estimate.rate)

    def posterior(self, stats: PairStats) -> Tensor:
        z = implicit_margin(stats, self.posterior_beta).detach()
        e = self.noise_rate
        a = (1 - e) * torch.sigmoid(z)
        return a / (a + e * torch.sigmoid(-z))

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        q = self.posterior(stats)
        out = self.base_objective(_with_weight(stats, q))
        loss = out.loss
        if self.flip:
            loss = loss + self.base_objective(_with_weight(swap_pair(stats), 1 - q)).loss
        if torch.is_grad_enabled() and self.momentum > 0:  # M-step, training only
            batch_eps = float((1 - q).mean())
            self.estimate.rate.fill_(min(max((1 - self.momentum) * self.noise_rate + self.momentum * batch_eps,
                                             0.0), 0.49))
        m = dict(out.metrics)
        m["lcpo/posterior"] = q.float().mean()
        m["lcpo/noise_rate"] = torch.tensor(self.noise_rate)
        return ObjectiveOutput(loss, m)


@register
@dataclass
class MADPO(Wrapper):
    """MADPO (P19): instance weights from a reward-model margin ``m`` around any base objective,
    ``w = 2 sigmoid(-(m - pivot) / tau)`` -- above 1 for hard pairs (margin below the pivot), below 1 for
    easy pairs, bounded in (0, 2), continuous and never negative (P19's remedies for beta-DPO).
    ``pivot='batch_mean'`` centres at the batch's mean margin, ``'zero'`` at 0. The margin comes from
    the ``margin`` column (``source='margin'``) or ``score_chosen - score_rejected`` (``'scores'``)."""

    name = "madpo"
    paper = "P19 (MADPO), instance-weighted DPO loss (sec. 3)"
    tau: float = hp(1.0, "margin scale of the weight", low=0.0, low_open=True)
    pivot: str = hp("batch_mean", "margin at which the weight is 1", choices=("batch_mean", "zero"))
    source: str = hp("margin", "where the reward margin comes from", choices=("margin", "scores"))

    def __post_init__(self) -> None:
        self.extra_needs = ("margin",) if self.source == "margin" else ("score_chosen", "score_rejected")  # type: ignore[misc]
        super().__post_init__()

    def weights(self, stats: PairStats) -> Tensor:
        if self.source == "margin":
            require(stats, self.name, "margin")
            m = stats.margin
        else:
            require(stats, self.name, "score_chosen", "score_rejected")
            m = stats.score_chosen - stats.score_rejected  # type: ignore[operator]
        m = m.to(stats.policy_chosen_logps.dtype)  # type: ignore[union-attr]
        c = m.mean() if self.pivot == "batch_mean" else torch.zeros_like(m[0])
        return 2 * torch.sigmoid(-(m - c) / self.tau)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        w = self.weights(stats)
        out = self.base_objective(_with_weight(stats, w))
        out.metrics["madpo/weight"] = w.detach().float().mean()
        return out


@register
@dataclass
class TARS(Wrapper):
    """TARS (P55): token-level min-max around any base objective. The inner maximisation perturbs the
    policy's per-token log-probs by ``delta`` inside a budget (``|delta_t| <= epsilon`` on each perturbable
    token for ``norm='linf'``; ``||delta||_2 <= epsilon * sqrt(n)`` per sequence for ``'l2'``), solved
    by one linearised ascent step (``delta = epsilon * sign(grad)`` / normalised gradient); the outer
    loss is the base loss at the perturbed log-probs (delta detached), so the policy is trained against
    the worst-case token-level shift. epsilon = 0 is the base objective.

    Perturbable tokens: ``extras['chosen_perturb_mask']`` / ``['rejected_perturb_mask']`` [B, T] when
    given (P55 perturbs tokens weakly tied to the input -- the trainer/data decides which), else every
    response token. Needs ``"token_logps"``.
    """

    name = "tars"
    paper = "P55 (TARS), min-max objective (eq. 5-7), one-step inner maximisation"
    epsilon: float = hp(0.05, "perturbation budget per token (log-prob units)", low=0.0)
    norm: str = hp("linf", "budget geometry", choices=("linf", "l2"))
    extra_needs = ("token_logps",)

    def perturb(self, stats: PairStats) -> tuple[Tensor, Tensor]:
        require(stats, self.name, "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_mask",
                "rejected_mask")
        masks = [stats.extras.get(f"{s}_perturb_mask", getattr(stats, f"{s}_mask")).bool()
                 & getattr(stats, f"{s}_mask").bool() for s in ("chosen", "rejected")]
        shapes = [stats.policy_chosen_token_logps.shape, stats.policy_rejected_token_logps.shape]  # type: ignore[union-attr]
        d = [torch.zeros(sh, dtype=stats.policy_chosen_logps.dtype, requires_grad=True) for sh in shapes]
        with torch.enable_grad():
            probe = dataclasses.replace(
                stats, policy_chosen_logps=stats.policy_chosen_logps.detach() + (d[0] * masks[0]).sum(-1),
                policy_rejected_logps=stats.policy_rejected_logps.detach() + (d[1] * masks[1]).sum(-1))
            g = torch.autograd.grad(self.base_objective(probe).loss.sum(), d)
        out = []
        for gi, m in zip(g, masks):
            gi = gi * m
            if self.norm == "linf":
                out.append(self.epsilon * torch.sign(gi))
            else:
                n = m.sum(-1, keepdim=True).clamp(min=1).to(gi.dtype)
                out.append(self.epsilon * n.sqrt() * gi / gi.norm(dim=-1, keepdim=True).clamp(min=1e-12))
        return out[0].detach(), out[1].detach()

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        dc, dr = self.perturb(stats)
        pert = dataclasses.replace(
            stats, policy_chosen_logps=stats.policy_chosen_logps + dc.sum(-1),
            policy_rejected_logps=stats.policy_rejected_logps + dr.sum(-1),
            policy_chosen_token_logps=stats.policy_chosen_token_logps + dc,  # type: ignore[operator]
            policy_rejected_token_logps=stats.policy_rejected_token_logps + dr)  # type: ignore[operator]
        out = self.base_objective(pert)
        out.metrics["tars/shift"] = (dc.sum(-1) - dr.sum(-1)).detach().float().mean()
        return out
