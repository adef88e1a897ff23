"""Unpaired objectives over {prompt, completion, label}: KTO, BCO, NPO (and NPO with a retain term), and
the gradient-ascent baseline NPO is measured against.

``UnpairedStats.label`` is True for a desirable completion (thumbs-up, or *retain* data for NPO) and
False for an undesirable one (thumbs-down, or the *forget* set for NPO).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, ObjectiveOutput, UnpairedStats, apply_weight, hp, register, require


def _metrics(stats: UnpairedStats, rewards: Tensor) -> dict[str, Tensor]:
    r, lab = rewards.detach().float(), stats.label.bool()
    m: dict[str, Tensor] = {}
    if lab.any():
        m["rewards/chosen"] = r[lab].mean()
        m["logps/chosen"] = stats.policy_logps.detach().float()[lab].mean()
    if (~lab).any():
        m["rewards/rejected"] = r[~lab].mean()
        m["logps/rejected"] = stats.policy_logps.detach().float()[~lab].mean()
    if lab.any() and (~lab).any():
        m["rewards/margins"] = m["rewards/chosen"] - m["rewards/rejected"]
    return m


@register
@dataclass
class KTO(Objective):
    """KTO (Ethayarajh et al. 2024, eq. 8; TRL KTOTrainer): with ``r = log pi/pi_ref`` and the reference
    point ``z0 = max(0, mean_batch(log pi(y'|x) - log pi_ref(y'|x)))`` over *mismatched* pairs (detached),
    desirable: ``lambda_D (1 - sigmoid(beta (r - z0)))``; undesirable: ``lambda_U (1 - sigmoid(beta (z0 - r)))``.

    ``kl_estimate='batch'`` needs ``kl_policy_logps`` / ``kl_reference_logps`` (the trainer pairs each
    prompt with another example's completion: ``needs`` contains ``"kl_pairs"``); ``'none'`` uses z0 = 0.
    """

    name = "kto"
    paper = "Ethayarajh et al. 2024 (KTO), eq. 8"
    kind = "unpaired"
    needs = ("kl_pairs",)
    beta: float = hp(0.1, "inverse temperature", low=0.0, low_open=True)
    desirable_weight: float = hp(1.0, "lambda_D: weight of desirable examples", low=0.0, low_open=True)
    undesirable_weight: float = hp(1.0, "lambda_U: weight of undesirable examples", low=0.0, low_open=True)
    kl_estimate: str = hp("batch", "reference point z0: batch KL estimate from mismatched pairs, or none",
                          choices=("batch", "none"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_estimate == "none":
            self.needs = ()  # type: ignore[misc]

    def __call__(self, stats: UnpairedStats) -> ObjectiveOutput:
        self.check_stats(stats)
        r = stats.policy_logps - stats.reference_logps  # type: ignore[operator]
        if self.kl_estimate == "batch":
            require(stats, self.name, "kl_policy_logps", "kl_reference_logps")
            z0 = (stats.kl_policy_logps - stats.kl_reference_logps).mean().clamp(min=0).detach()  # type: ignore[operator]
        else:
            z0 = torch.zeros((), dtype=r.dtype, device=r.device)
        lab = stats.label.bool()
        loss = torch.where(lab, self.desirable_weight * (1 - torch.sigmoid(self.beta * (r - z0))),
                           self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r))))
        m = _metrics(stats, self.beta * r)
        m["kl"] = z0.detach().float()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


class RunningMean(torch.nn.Module):
    """BCO's running reward mean as state the trainer checkpoints: a float64 sum and a count (buffers), so
    a resumed run continues with exactly the shift it had."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def add(self, total: float, count: int) -> None:
        self.total += total
        self.count += count

    def seen(self) -> int:
        return int(self.count)

    def mean(self) -> float:
        n = int(self.count)
        return float(self.total) / n if n else 0.0


@register
@dataclass
class BCO(Objective):
    """BCO (P56, Jung et al. 2024, eq. 9 with UDM eq. 12): a binary classifier whose logit is the
    implicit reward ``r = beta log pi/pi_ref``, shifted by ``delta``:
    desirable ``-log sigmoid(r - delta)``, undesirable ``-w(x) log sigmoid(-(r - delta))``.

    * reward shift ``delta``: ``shift='running'`` -- the running mean of all rewards seen in training
      (this batch included, as in the paper's code); ``'batch'`` -- this batch's mean; ``'none'`` -- 0.
      Always detached.
    * underlying distribution matching: ``w(x) = clip(p(desirable|x) / p(undesirable|x), lo, hi)``
      from a prompt classifier, read from ``extras['density_ratio']`` [B] when present (see
      :func:`fit_density_ratio`; needs ``"density_ratio"``); 1 when absent and ``udm=False``.
    """

    name = "bco"
    paper = "P56 (BCO) eq. 9, 12"
    kind = "unpaired"
    beta: float = hp(0.1, "inverse temperature", low=0.0, low_open=True)
    shift: str = hp("running", "reward shift delta", choices=("running", "batch", "none"))
    udm: bool = hp(False, "weight undesirable examples by the density ratio (needs extras['density_ratio'])",
                   choices=(False, True))
    min_density_ratio: float = hp(0.5, "lower clip of the density ratio", low=0.0)
    max_density_ratio: float = hp(10.0, "upper clip of the density ratio", low=0.0, low_open=True)
    running: "RunningMean" = field(default_factory=lambda: RunningMean(), repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.udm:
            self.needs = ("density_ratio",)  # type: ignore[misc]

    @property
    def delta(self) -> float:
        """The running reward shift: the mean of every training reward seen so far (0 before any)."""
        return self.running.mean()

    def __call__(self, stats: UnpairedStats) -> ObjectiveOutput:
        self.check_stats(stats)
        r = self.beta * (stats.policy_logps - stats.reference_logps)  # type: ignore[operator]
        if self.shift == "running":
            if torch.is_grad_enabled():  # only training steps move the running mean
                self.running.add(float(r.detach().sum()), r.numel())
            delta = torch.tensor(self.delta if self.running.seen() else float(r.detach().mean()), dtype=r.dtype)
        elif self.shift == "batch":
            delta = r.detach().mean()
        else:
            delta = torch.zeros((), dtype=r.dtype)
        delta = delta.to(r.device)
        lab = stats.label.bool()
        loss = torch.where(lab, -F.logsigmoid(r - delta), -F.logsigmoid(-(r - delta)))
        if self.udm:
            if "density_ratio" not in stats.extras:
                raise ValueError("objective 'bco' with udm=True needs extras['density_ratio'] (see fit_density_ratio)")
            w = stats.extras["density_ratio"].to(r.dtype).clamp(self.min_density_ratio, self.max_density_ratio)
            loss = torch.where(lab, loss, w * loss)
        m = _metrics(stats, r)
        m["delta"] = delta.detach().float()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


def fit_density_ratio(desirable_emb: Tensor, undesirable_emb: Tensor, steps: int = 200, l2: float = 1e-3):
    """Fit BCO's UDM prompt classifier (P56 sec. 4.2): logistic regression on prompt embeddings,
    desirable = 1. Returns ``ratio(emb) = p(desirable|x) / p(undesirable|x) = exp(logit)``, rescaled by
    the class prior so that it estimates the density ratio p_D(x)/p_U(x)."""
    x = torch.cat([desirable_emb, undesirable_emb]).float()
    y = torch.cat([torch.ones(len(desirable_emb)), torch.zeros(len(undesirable_emb))])
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    prior = torch.log(torch.tensor(len(undesirable_emb) / max(len(desirable_emb), 1)))
    w_, b_ = w.detach(), b.detach()
    return lambda emb: torch.exp(((emb.float() - mu) / sd) @ w_ + b_ + prior)


@register
@dataclass
class NPO(Objective):
    """NPO (P06, Zhang et al. 2024, eq. 3) and NPO+RT (P06's TOFU experiments: NPO plus a retain NLL term).

    Forget examples (label False): ``(2/beta) log(1 + (pi/pi_ref)^beta) = -(2/beta) log sigmoid(-beta h)``,
    ``h = log pi(y|x) - log pi_ref(y|x)`` summed over response tokens; as beta -> 0 it tends to gradient
    ascent. Retain examples (label True): the NLL ``-log pi(y|x)``.

    Verified against the authors' code: licong-lin/negative-preference-optimization, ``TOFU/dataloader.py``,
    ``CustomTrainerForgetting.compute_loss`` (branches ``'npo'`` and ``'npo_grad_diff'``), with
    ``TOFU/data_module.py::get_batch_loss`` (per-sequence *summed* token NLL), commit
    1207bbe9a1abf502bc2d7b43a0a467d9524b4036. There the loss is
    ``npo_coeff * mean_forget[-(2/beta) logsigmoid(beta (nll - nll_ref))] + grad_diff_coeff * retain_loss``
    with the forget and retain terms computed on *separate* batches, and ``retain_loss`` the Hugging Face
    causal-LM loss: the NLL averaged over *all retain tokens of the batch* (a token-level mean).

    preftune puts forget and retain examples in one batch and the trainer takes the plain mean of the
    per-example loss, so the objective rescales each example so that this mean is exactly
    ``mean_forget + retain_weight * retain_token_mean``, independent of how many of each kind the batch holds:

    * forget example ``i``: ``(B / n_forget) * npo_i``;
    * retain example ``j``: ``retain_weight * B * nll_j / (sum of the lengths of the batch's retain
      responses)``, i.e. each retain *token* counts equally (the authors' ``outputs.loss``).

    A batch with no forget example gives ``retain_weight * retain_token_mean`` (only the retain term); one
    with no retain example gives ``mean_forget`` (only the NPO term); the other term is not extrapolated.
    P06's paper text could not be read here, so the retain term's normalisation (per retain *token*) is
    taken from the authors' code, not checked against the paper's equation. The weights are per micro-batch (the trainer's mean is per micro-batch, as the authors' per-device
    batch). A per-example ``weight`` column multiplies the rescaled loss. With ``retain_weight = 0``
    (``npo``) retain examples contribute nothing and the loss is the mean NPO loss of the forget examples.
    """

    name = "npo"
    paper = "P06 (NPO) eq. 3; NPO+RT as in the authors' TOFU code (dataloader.py npo_grad_diff)"
    kind = "unpaired"
    beta: float = hp(0.1, "inverse temperature", low=0.0, low_open=True)
    retain_weight: float = hp(0.0, "lambda: weight of the retain NLL (token mean over the batch's retain "
                                   "examples) added to the forget-set mean NPO loss", low=0.0)

    def __call__(self, stats: UnpairedStats) -> ObjectiveOutput:
        self.check_stats(stats)
        h = stats.policy_logps - stats.reference_logps  # type: ignore[operator]
        forget = -(2.0 / self.beta) * F.logsigmoid(-self.beta * h)
        require(stats, self.name, "lengths")
        lengths = stats.lengths.to(h.dtype).clamp(min=1)  # type: ignore[union-attr]
        nll_sum = -stats.policy_logps
        lab = stats.label.bool()
        B = lab.numel()
        n_forget, n_retain = int((~lab).sum()), int(lab.sum())
        forget_scale = B / n_forget if n_forget else 0.0
        retain_tokens = lengths[lab].sum() if n_retain else torch.ones((), dtype=h.dtype, device=h.device)
        retain = self.retain_weight * B * nll_sum / retain_tokens
        loss = torch.where(lab, retain, forget_scale * forget)
        m = _metrics(stats, self.beta * h)
        if n_forget:
            m["loss/forget"] = forget.detach()[~lab].mean()
        if n_retain:
            m["loss/retain"] = (nll_sum.detach()[lab].sum() / retain_tokens.detach())
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


@register
@dataclass
class NPORetain(NPO):
    """NPO+RT (P06's TOFU experiments, authors' ``npo_grad_diff``; NPO term: P06 eq. 3): ``npo`` with the retain NLL term on by default
    (``retain_weight = 1``, the authors' ``grad_diff_coeff: 1.0`` in ``TOFU/config/forget.yaml``). The batch
    mean of the per-example loss is ``mean_forget + retain_weight * retain_token_mean`` (see :class:`NPO`)."""

    name = "npo_rt"
    paper = "P06 (NPO+RT); authors' TOFU code dataloader.py npo_grad_diff @1207bbe"
    retain_weight: float = hp(1.0, "lambda: weight of the retain NLL (token mean over the batch's retain "
                                   "examples) added to the forget-set mean NPO loss", low=0.0)


@register
@dataclass
class GradAscent(Objective):
    """Gradient ascent (GA) on a forget set, and gradient difference (GD) with a retain term: the unlearning
    baselines P06 (NPO) is measured against. Forget examples (label False): the log-likelihood ``log pi(y|x)``
    (minimised: the NLL is ascended); retain examples (label True): the NLL, weighted ``retain_weight``.
    Unbounded below, which is P06's point: NPO (eq. 3) is GA with the weight ``2 sigmoid(-beta h)`` that
    vanishes once a forget example is unlikely enough, and tends to GA as beta -> 0.

    As the authors' TOFU code, licong-lin/negative-preference-optimization ``TOFU/dataloader.py``,
    ``CustomTrainerForgetting.compute_loss`` branches ``'grad_ascent'`` (``-outputs.loss``) and
    ``'grad_diff'`` (``-forget outputs.loss + retain outputs.loss``) @ 1207bbe9a1abf502bc2d7b43a0a467d9524b4036:
    each term is the Hugging Face causal-LM loss, a mean over the batch's *tokens*. Forget and retain
    examples share one batch here, so each example is rescaled (as :class:`NPO` does) to make the batch
    mean ``-forget_token_mean_nll + retain_weight * retain_token_mean_nll`` whatever the mix:
    forget ``i``: ``B * log pi_i / forget_tokens``; retain ``j``: ``retain_weight * B * nll_j / retain_tokens``.
    No reference model.
    """

    name = "grad_ascent"
    paper = "P06 baselines GA / GD; authors' TOFU code dataloader.py grad_ascent / grad_diff @1207bbe"
    kind = "unpaired"
    needs_reference = False
    retain_weight: float = hp(0.0, "weight of the retain NLL (token mean over the batch's retain examples); "
                                   "0: GA, 1: GD as the authors' grad_diff", low=0.0)

    def __call__(self, stats: UnpairedStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "lengths")
        logp = stats.policy_logps
        lengths = stats.lengths.to(logp.dtype)  # type: ignore[union-attr]
        lab = stats.label.bool()
        B = lab.numel()
        one = torch.ones((), dtype=logp.dtype, device=logp.device)
        forget_tokens = lengths[~lab].sum().clamp(min=1) if (~lab).any() else one
        retain_tokens = lengths[lab].sum().clamp(min=1) if lab.any() else one
        loss = torch.where(lab, self.retain_weight * B * -logp / retain_tokens, B * logp / forget_tokens)
        m = _metrics(stats, logp)
        if (~lab).any():
            m["loss/forget"] = (-logp.detach()[~lab].sum() / forget_tokens.detach())  # forget NLL per token
        if lab.any():
            m["loss/retain"] = (-logp.detach()[lab].sum() / retain_tokens.detach())
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)
