"""Wrappers that reweight or perturb any pair objective: WPO, LCPO, MADPO, TARS.

Build with ``get("lcpo", base="ipo", beta=0.5)`` (hyperparameters the wrapper does not declare go to
the base) or from the CLI: ``--loss lcpo --base ipo --beta 0.5``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import (ObjectiveOutput, PairStats, Wrapper, apply_weight, hp, masked_mean, register, require,
                   swap_pair)


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
    """LCPO's running noise-rate estimate ``1 - eta`` as a float64 buffer, so checkpoints carry it."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(init), dtype=torch.float64))


@register
@dataclass
class LCPO(Wrapper):
    """LCPO / RE-PO (P21, Cao et al. 2025, arXiv 2509.24159): EM over latent label correctness around any
    base objective ``L`` (single annotator, K = 1).

    Gibbs construction (sec. 4.2): the base loss defines the noise-free preference probability
    ``p = P(y_w >* y_l) = sigmoid(L(y_l > y_w) - L(y_w > y_l))`` (for DPO exactly Bradley-Terry,
    ``sigmoid(beta (h_w - h_l))``; for non-likelihood losses such as IPO a surrogate).
    E-step (detached): ``w = p eta / (p eta + (1 - p)(1 - eta))``, the posterior that the label is correct,
    with reliability ``eta = 1 - noise_rate``.
    M-step, policy: ``-(w log p + (1 - w) log(1 - p))`` per pair (``flip=False`` keeps the first term); for
    DPO this is ``w L(y_w > y_l) + (1 - w) L(y_l > y_w)``.
    M-step, reliability (mini-batch EMA, Algorithm 1): ``eta <- (1 - momentum) eta + momentum mean_batch(w)``,
    i.e. ``noise_rate <- (1 - momentum) noise_rate + momentum mean(1 - w)``, from ``noise_init`` (paper:
    eta_0 = 0.9, alpha = 0.1), training only; preftune clamps the noise rate to [0, 0.49].

    ``prob_model='implicit_margin'`` is preftune's older variant: ``p = sigmoid(posterior_beta * (h_w - h_l))``
    (reference-free bases: per-token average log-probs) and the loss ``w L(y_w > y_l) + (1-w) L(y_l > y_w)``;
    it equals the paper's form for DPO when ``posterior_beta`` is DPO's beta.

    Verified against: the paper only (equations as quoted in the RE-PO/LCPO paper, arXiv 2509.24159 v2/v3);
    the authors' repository github.com/XiaoyangCao1113/RE-PO could not be read here: on 2026-11-25
    ``fetch github:XiaoyangCao1113/RE-PO`` answered "No snapshot of that repository can be had here", and the
    public-code file index holds no file of it (its owner's only stored repository is XiaoyangCao1113/LiRA).
    Per-annotator reliabilities ``eta_k`` (MultiPref experiments) are not implemented.
    """

    name = "lcpo"
    paper = "P21 (LCPO / RE-PO), Gibbs probability + EM posterior weighting (sec. 4, Algorithm 1)"
    prob_model: str = hp("gibbs", "probability model of the posterior: the paper's Gibbs construction from the "
                        "base loss, or the implicit margin", choices=("gibbs", "implicit_margin"))
    posterior_beta: float = hp(0.1, "scale of the implicit margin (prob_model='implicit_margin' only)",
                               low=0.0, low_open=True)
    noise_init: float = hp(0.1, "initial noise-rate estimate 1 - eta_0", low=0.0, high=0.5, high_open=True)
    momentum: float = hp(0.1, "EMA step alpha of the reliability estimate (0 freezes it)", low=0.0, high=1.0)
    flip: bool = hp(True, "add the (1-w) term for the flipped pair", choices=(True, False))
    estimate: "NoiseRate" = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.estimate is None:
            self.estimate = NoiseRate(self.noise_init)

    @property
    def noise_rate(self) -> float:
        """The current noise-rate estimate ``1 - eta`` (state the trainer checkpoints)."""
        return float(self.estimate.rate)

    def _posterior_from(self, p_logit: Tensor) -> Tensor:
        e = self.noise_rate
        a = (1 - e) * torch.sigmoid(p_logit.detach())
        return a / (a + e * torch.sigmoid(-p_logit.detach()))

    def _base_losses(self, stats: PairStats) -> tuple[ObjectiveOutput, Tensor]:
        """Base output for the given order (unweighted) and the base loss of the flipped pair."""
        bare = dataclasses.replace(stats, weight=None)
        out = self.base_objective(bare)
        return out, self.base_objective(swap_pair(bare)).loss

    def posterior(self, stats: PairStats) -> Tensor:
        if self.prob_model == "implicit_margin":
            return self._posterior_from(implicit_margin(stats, self.posterior_beta))
        with torch.no_grad():
            out, swapped = self._base_losses(stats)
        return self._posterior_from(swapped - out.loss)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        if self.prob_model == "implicit_margin":
            q = self._posterior_from(implicit_margin(stats, self.posterior_beta))
            out = self.base_objective(_with_weight(stats, q))
            loss = out.loss
            if self.flip:
                loss = loss + self.base_objective(_with_weight(swap_pair(stats), 1 - q)).loss
        else:
            out, swapped = self._base_losses(stats)
            d = swapped - out.loss  # logit of the Gibbs probability p(y_w >* y_l)
            q = self._posterior_from(d)
            loss = -q * torch.nn.functional.logsigmoid(d)
            if self.flip:
                loss = loss - (1 - q) * torch.nn.functional.logsigmoid(-d)
            loss = apply_weight(loss, stats.weight)
        if torch.is_grad_enabled() and self.momentum > 0:  # M-step for eta, training only
            batch_eps = float((1 - q).mean())
            self.estimate.rate.fill_(min(max((1 - self.momentum) * self.noise_rate + self.momentum * batch_eps,
                                             0.0), 0.49))
        m = dict(out.metrics)
        m["lcpo/posterior"] = q.float().mean()
        m["lcpo/noise_rate"] = torch.tensor(self.noise_rate)
        return ObjectiveOutput(loss, m)


def madpo_coef(abs_margin: Tensor, c_max: float, c_min: float, lmbda: float, tau: float) -> Tensor:
    """MADPO's scaling ``c(|m|) = c_min + (c_max - c_min) / (1 + (c_max-1)/(1-c_min) exp(lmbda (|m| - tau)))``:
    ``c_max``-ward for small margins, ``c_min``-ward for large ones, exactly 1 at ``|m| = tau``."""
    k = (c_max - 1) / (1 - c_min)
    return c_min + (c_max - c_min) / (1 + k * torch.exp(lmbda * (abs_margin - tau)))


@register
@dataclass
class MADPO(Wrapper):
    """MADPO (P19, Rho 2025, arXiv 2510.05342): a per-pair weight from a *reward-model* margin
    ``m = r(y_w) - r(y_l)`` (trained reward model, detached; the given ``margin`` column or
    ``score_chosen - score_rejected``, in a Bradley-Terry reward model's logit units, since ``tau`` is a
    threshold in those units) multiplies the pair's DPO loss:

    ``w(m) = sigmoid(c m) / sigmoid(m)`` if ``m > -tau`` else ``1``, with ``c = c(|m|)`` (:func:`madpo_coef`).

    So ``w > 1`` for pairs the reward model calls close but right (``0 < m < tau``: amplified target margin),
    ``w < 1`` for easy pairs (``m > tau``) and for pairs it mildly disputes (``-tau < m < 0``), ``w = 1`` at
    ``m = 0``, at ``|m| = tau`` and below ``-tau``; continuous and positive. The weight multiplies the whole
    per-pair loss (the authors' cross-entropy over ``[beta h_1, beta h_2]`` at the preferred index, i.e. the DPO
    loss), selected by which response is preferred, so it is symmetric in the pair's order.

    Exact for ``base='dpo'`` (the paper's method); other bases get the same instance weight (an extension).
    Defaults are ``MADPOLoss``'s (c_max 2, c_min 0.5, lmbda 1, tau 2); the paper's experiments use
    ``tau = log(999) ~ 6.91`` with c_min = 1/c_max.

    Verified against: sirano1004/Margin-Apative-Direct-Preference-Optimization utils/loss_functions.py::MADPOLoss
    (``coef`` and ``forward``) @ 306779b33acbe6fb2a3df6087673e5ec1ca699d9; agrees with the abstract
    (continuous instance-level weight on the DPO loss from a reward model's margin).
    """

    name = "madpo"
    paper = "P19 (MADPO), instance-weighted DPO loss with margin-adaptive weight (sec. 3)"
    c_max: float = hp(2.0, "largest scaling c of the margin (small reward margins)", low=1.0, low_open=True)
    c_min: float = hp(0.5, "smallest scaling c of the margin (large reward margins)", low=0.0, high=1.0,
                      high_open=True)
    lmbda: float = hp(1.0, "steepness of c in |margin|", low=0.0, low_open=True)
    tau: float = hp(2.0, "reward-margin threshold: c = 1 at |m| = tau, weight 1 for m <= -tau", low=0.0)
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
        m = m.detach().to(stats.policy_chosen_logps.dtype)  # type: ignore[union-attr]
        c = madpo_coef(m.abs(), self.c_max, self.c_min, self.lmbda, self.tau)
        w = torch.sigmoid(c * m) / torch.sigmoid(m)
        return torch.where(m > -self.tau, w, torch.ones_like(w))

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        w = self.weights(stats)
        out = self.base_objective(_with_weight(stats, w))
        out.metrics["madpo/weight"] = w.detach().float().mean()
        return out


def tars_perturb_tokens(input_ids: Tensor, loss_mask: Tensor, *, ratio: float = 0.05, mode: str = "replace",
                        similarity: Tensor | None = None, vocab_size: int | None = None,
                        ignore_ids: tuple[int, ...] = (), mask_token_id: int = 0,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """TARS's token perturbation (P55), for the supplier that must run the perturbed forward.

    ``similarity`` [B, L] given (P55: each token's similarity to the visual input; higher = more grounded):
    ``round-down(ratio * B * L)`` positions (at least 1) of the whole batch are drawn without replacement with
    probability proportional to ``(1 - similarity) / max(1 - similarity)``. ``similarity=None``: each position
    independently with probability ``ratio`` (the authors' random variant). Positions holding an id in
    ``ignore_ids`` (bos/eos/pad) are never perturbed. ``mode='replace'`` puts a uniform random id from
    ``[5, vocab_size)`` there, ``'mask'`` puts ``mask_token_id``. Perturbed positions leave the loss mask
    (their labels become ignore). Returns ``(new_ids, new_loss_mask, perturbed)``.

    Authors: KejiaZhang-Robust/TARS llava/train/llava_trainer.py::perturb_tokens_with_labels,
    ::generate_probabilistic_topk_mask and ::perturb_tokens_randomly @ b2e62881bb39dd28a0d12b81d5bcbdf033f7fa9d.
    """
    if mode not in ("replace", "mask"):
        raise ValueError(f"tars_perturb_tokens: mode must be 'replace' or 'mask', got {mode!r}")
    B, L = input_ids.shape
    dev = input_ids.device
    if similarity is None:
        sel = torch.rand((B, L), device=dev, generator=generator) < ratio
    else:
        score = 1.0 - torch.nan_to_num(similarity.to(dev, torch.float64), nan=1.0)
        if float(score.max()) > 0:
            score = score / score.max()
        k = max(int(B * L * ratio), 1)
        idx = torch.multinomial(score.flatten() / score.sum(), k, replacement=False, generator=generator)
        sel = torch.zeros(B * L, dtype=torch.bool, device=dev)
        sel[idx] = True
        sel = sel.view(B, L)
    for t in ignore_ids:
        sel &= input_ids != t
    ids = input_ids.clone()
    if mode == "replace":
        if vocab_size is None:
            raise ValueError("tars_perturb_tokens: mode 'replace' needs vocab_size")
        rnd = torch.randint(5, vocab_size, (B, L), device=dev, generator=generator)
        ids[sel] = rnd[sel]
    else:
        ids[sel] = mask_token_id
    return ids, loss_mask.bool() & ~sel, sel


def tars_frequency_triplet(z_pw: Tensor, z_cw: Tensor, z_cr: Tensor, margin: float = 0.5) -> Tensor:
    """TARS's spectral triplet term per pair: ``relu(mse(|F z_pw|, |F z_cw|) - mse(|F z_pw|, |F z_cr|) + margin)``,
    ``F`` the FFT over the sequence axis, mse the mean over positions and features. ``[B, T, D]`` each ->
    ``[B]``. ``z_pw``: policy input embeddings of the perturbed chosen sequence; ``z_cw`` / ``z_cr``:
    reference input embeddings of the clean chosen / rejected sequences (same padded length T)."""
    f = [torch.fft.fft(z.float(), dim=1).abs() for z in (z_pw, z_cw, z_cr)]
    pos = ((f[0] - f[1]) ** 2).mean(dim=(1, 2))
    neg = ((f[0] - f[2]) ** 2).mean(dim=(1, 2))
    return torch.relu(pos - neg + margin)


TARS_LOGPS = ("tars_policy_chosen_logps", "tars_policy_rejected_logps", "tars_reference_chosen_logps",
              "tars_reference_rejected_logps")
TARS_EMBEDS = ("tars_policy_chosen_embeds", "tars_reference_chosen_embeds", "tars_reference_rejected_embeds")


@register
@dataclass
class TARS(Wrapper):
    """TARS (P55, Zhang et al. 2025, arXiv 2507.21584), text-only form: the base preference loss evaluated on
    *token-perturbed* responses plus a spectral triplet term.

    The authors' inner "max" is not a gradient step: a fraction ``adv_p`` of tokens, drawn with probability
    growing as the token's similarity to the input falls (P55's semantic constraint), is replaced by random
    tokens (or masked) in the input and removed from the log-prob sum (:func:`tars_perturb_tokens`); policy
    and reference are run on the perturbed sequences, and the DPO loss is taken on those log-probs. That needs a
    forward pass the objective cannot do, so a supplier must provide (need ``tars_perturbed_logps``), [B] each:
    ``extras['tars_policy_chosen_logps']``, ``['tars_policy_rejected_logps']``,
    ``['tars_reference_chosen_logps']``, ``['tars_reference_rejected_logps']`` -- summed log-probs of the
    perturbed sequences over their unperturbed response tokens. The loss is then
    ``L_base(perturbed) + beta_fre * tars_frequency_triplet(...)`` per pair, the triplet read from (need
    ``tars_embeddings``, only when ``beta_fre > 0``) ``extras['tars_policy_chosen_embeds']`` (policy input
    embeddings of the perturbed chosen sequence), ``['tars_reference_chosen_embeds']``,
    ``['tars_reference_rejected_embeds']`` (reference input embeddings of the clean sequences), [B, T, D].
    ``adv_p`` / ``token_mode`` are the supplier's settings (recorded here so the run's config carries them).

    Left out for text-only models: the cross-modal term ``-log sigmoid(beta ((pi_w - ref_w) - (pi_w' - ref_w')))``
    with ``'`` the chosen response under a diffusion-noised image, and the CLIP token-image similarity (a
    text-only supplier must choose its own ``similarity``, or none: uniform random selection). The authors'
    code takes the triplet term on the first pair of the micro-batch only (their batch size is 1); here it is
    taken per pair.

    Verified against: KejiaZhang-Robust/TARS llava/train/llava_trainer.py::LLAVADPOTrainer.compute_loss,
    ::adv_loss, ::perturb_tokens_with_labels (defaults adv_p 0.05, token_mode_adv 'replace', beta_fre 0.1 from
    llava/train/train.py TrainingArguments; triplet margin 0.5) @ b2e62881bb39dd28a0d12b81d5bcbdf033f7fa9d.
    """

    name = "tars"
    paper = "P55 (TARS), min-max token-perturbed preference loss + spectral alignment (sec. 3)"
    adv_p: float = hp(0.05, "fraction of tokens perturbed (supplier setting)", low=0.0, high=1.0)
    token_mode: str = hp("replace", "how perturbed tokens are changed (supplier setting)",
                         choices=("replace", "mask"))
    beta_fre: float = hp(0.1, "weight of the spectral triplet term (0 drops it)", low=0.0)
    fre_margin: float = hp(0.5, "margin of the spectral triplet term", low=0.0)

    def __post_init__(self) -> None:
        self.extra_needs = ("tars_perturbed_logps",) + (("tars_embeddings",) if self.beta_fre > 0 else ())  # type: ignore[misc]
        super().__post_init__()

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        need = TARS_LOGPS[:2] + (TARS_LOGPS[2:] if self.base_objective.needs_reference else ())
        missing = [k for k in need if k not in stats.extras]
        if missing:
            raise ValueError(f"objective 'tars' needs extras {', '.join(missing)}: log-probs of the token-perturbed "
                             "responses (see TARS's docstring and tars_perturb_tokens)")
        x = stats.extras
        pert = dataclasses.replace(
            stats, policy_chosen_logps=x[TARS_LOGPS[0]], policy_rejected_logps=x[TARS_LOGPS[1]],
            reference_chosen_logps=x.get(TARS_LOGPS[2], stats.reference_chosen_logps),
            reference_rejected_logps=x.get(TARS_LOGPS[3], stats.reference_rejected_logps),
            policy_chosen_token_logps=None, policy_rejected_token_logps=None,
            reference_chosen_token_logps=None, reference_rejected_token_logps=None)
        out = self.base_objective(pert)
        loss = out.loss
        if self.beta_fre > 0:
            missing = [k for k in TARS_EMBEDS if k not in x]
            if missing:
                raise ValueError(f"objective 'tars' (beta_fre > 0) needs extras {', '.join(missing)} [B, T, D]; "
                                 "or set beta_fre=0")
            trip = tars_frequency_triplet(*(x[k] for k in TARS_EMBEDS), margin=self.fre_margin)
            loss = loss + self.beta_fre * apply_weight(trip.to(loss.dtype), stats.weight)
            out.metrics["tars/freq_triplet"] = trip.detach().float().mean()
        return ObjectiveOutput(loss, out.metrics)
