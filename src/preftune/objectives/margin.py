"""The DPO family over chosen/rejected log-ratios: the losses TRL's DPOTrainer shares, plus cDPO and RPO.

Conventions follow TRL ``DPOTrainer`` exactly (sums over response tokens; IPO and ``ln_dpo`` divide
each score by its own response length), so that a loss here equals TRL's on the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, logratios, register, require, reward_metrics
from .compose import WeightedSum
from .dpo import DPO, FDivergenceObjective, f_score
from .sft import SFT


def _lengths(stats: PairStats, name: str) -> tuple[Tensor, Tensor]:
    require(stats, name, "chosen_lengths", "rejected_lengths")
    dt = stats.policy_chosen_logps.dtype
    return (stats.chosen_lengths.to(dt).clamp(min=1.0),  # type: ignore[union-attr]
            stats.rejected_lengths.to(dt).clamp(min=1.0))  # type: ignore[union-attr]


@dataclass
class _Plain(Objective):
    """Base for family members without an f-divergence option (TRL forbids it for them)."""

    beta: float = hp(0.1, "inverse temperature of the implicit reward", low=0.0, low_open=True)

    def finish(self, loss: Tensor, stats: PairStats, hc: Tensor, hr: Tensor) -> ObjectiveOutput:
        return ObjectiveOutput(apply_weight(loss, stats.weight), reward_metrics(self.beta * hc, self.beta * hr, stats))


@register
@dataclass
class Hinge(FDivergenceObjective):
    """SLiC / RSO hinge loss (P34, Liu et al. 2024, eq. 9 with the reference log-ratios as in TRL
    ``loss_type='hinge'``): ``max(0, 1 - beta * (h_w - h_l))``. ``1/beta`` is the margin."""

    name = "hinge"
    paper = "P34 (RSO) eq. 9; SLiC-HF (Zhao et al. 2023) eq. 2"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        return self.finish(torch.relu(1 - self.beta * (sc - sr)), stats, hc, hr)


@register
@dataclass
class IPO(FDivergenceObjective):
    """IPO (Azar et al. 2023, eq. 17) in TRL's per-token-averaged convention:
    ``((h_w/|y_w| - h_l/|y_l|) - 1/(2 beta))^2``. Minimum (0) at averaged margin ``1/(2 beta)``;
    ``beta`` is the paper's tau."""

    name = "ipo"
    paper = "Azar et al. 2023 (IPO), eq. 17; per-token averaging as TRL"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        nc, nr = _lengths(stats, self.name)
        return self.finish((sc / nc - sr / nr - 1 / (2 * self.beta)) ** 2, stats, hc, hr)


@register
@dataclass
class LNDPO(FDivergenceObjective):
    """Length-normalized DPO (P52; TRL ``sigmoid_norm``): ``-log sigmoid(beta (h_w/|y_w| - h_l/|y_l|))``."""

    name = "ln_dpo"
    paper = "P52 (ln-DPO), eq. 3; TRL loss_type='sigmoid_norm'"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        nc, nr = _lengths(stats, self.name)
        return self.finish(-F.logsigmoid(self.beta * (sc / nc - sr / nr)), stats, hc, hr)


@register
@dataclass
class EXOPair(FDivergenceObjective):
    """EXO-pref (Ji et al. 2024, eq. 16): ``KL(q || p)`` with ``q = softmax`` of ``beta`` times the
    scores over {chosen, rejected} and target ``p = (1 - eps, eps)``."""

    name = "exo_pair"
    paper = "Ji et al. 2024 (EXO), eq. 16"
    label_smoothing: float = hp(1e-3, "eps of the target distribution (1 - eps, eps); the paper uses 1e-3",
                                low=0.0, high=0.5, low_open=True, high_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        z = self.beta * (sc - sr)
        eps = torch.tensor(self.label_smoothing, dtype=z.dtype, device=z.device)
        loss = (torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps)))
        return self.finish(loss, stats, hc, hr)


@register
@dataclass
class RDPO(FDivergenceObjective):
    """Robust DPO (P12, Chowdhury et al. 2024, eq. 5): unbiased under label flips with rate eps,
    ``[(1-eps) l(z) - eps l(-z)] / (1 - 2 eps)`` with ``l(z) = -log sigmoid(z)``, ``z = beta (h_w - h_l)``.
    eps = 0 is DPO. TRL ``loss_type='robust'``."""

    name = "rdpo"
    paper = "P12 (rDPO) eq. 5"
    label_smoothing: float = hp(0.1, "assumed label-flip rate eps", low=0.0, high=0.5, high_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        z, e = self.beta * (sc - sr), self.label_smoothing
        loss = (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)
        return self.finish(loss, stats, hc, hr)


@register
@dataclass
class CDPO(FDivergenceObjective):
    """Conservative DPO (Mitchell 2023; the label-smoothing baseline of P12, eq. 4):
    ``-(1-eps) log sigmoid(z) - eps log sigmoid(-z)``, ``z = beta (h_w - h_l)``. eps = 0 is DPO."""

    name = "cdpo"
    paper = "P12 eq. 4 (cDPO, Mitchell 2023)"
    label_smoothing: float = hp(0.1, "label smoothing eps: probability the label is wrong",
                                low=0.0, high=0.5, high_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        z, e = self.beta * (sc - sr), self.label_smoothing
        return self.finish(-(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z), stats, hc, hr)


@register
@dataclass
class DiscoPOP(FDivergenceObjective):
    """DiscoPOP (Chris Lu et al. 2024, eq. 5): log-ratio-modulated blend of the logistic and exponential
    losses, ``(1 - s) * -log sigmoid(z) + s * exp(-z)`` with ``s = sigmoid(z / tau)``, ``z = beta (h_w - h_l)``."""

    name = "discopop"
    paper = "Lu et al. 2024 (DiscoPOP), eq. 5"
    tau: float = hp(0.05, "temperature of the mixing sigmoid (TRL discopop_tau)", low=0.0, low_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        z = self.beta * (sc - sr)
        s = torch.sigmoid(z / self.tau)
        return self.finish(-F.logsigmoid(z) * (1 - s) + torch.exp(-z) * s, stats, hc, hr)


def length_desensitized(token_logps: Tensor, mask: Tensor, shared: Tensor, alpha: float) -> Tensor:
    """LD-DPO's sequence log-prob: tokens within the pair's shared length count fully, tokens
    beyond it are weighted by ``alpha`` (P38 eq. 11). ``shared`` ``[B]`` = min(|y_w|, |y_l|)."""
    pos = mask.long().cumsum(-1)
    in_shared = mask & (pos <= shared.unsqueeze(-1))
    tail = mask & (pos > shared.unsqueeze(-1))
    return (token_logps * in_shared).sum(-1) + alpha * (token_logps * tail).sum(-1)


@register
@dataclass
class LDDPO(FDivergenceObjective):
    """LD-DPO (P38, eq. 11-12): DPO on length-desensitized log-probs. For each pair, tokens beyond the
    shorter response's length (the 'excess' verbosity part) enter both the policy and reference
    log-probs with weight ``alpha``; ``alpha = 1`` is DPO, ``alpha = 0`` compares equal-length prefixes.
    TRL ``ld_alpha``."""

    name = "ld_dpo"
    paper = "P38 (LD-DPO) eq. 11-12"
    needs = ("token_logps",)
    alpha: float = hp(0.5, "weight of tokens beyond the pair's shared length", low=0.0, high=1.0)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "policy_chosen_token_logps", "policy_rejected_token_logps",
                "reference_chosen_token_logps", "reference_rejected_token_logps", "chosen_mask", "rejected_mask")
        mc, mr = stats.chosen_mask.bool(), stats.rejected_mask.bool()  # type: ignore[union-attr]
        shared = torch.minimum(mc.sum(-1), mr.sum(-1))

        def ld(tok: Tensor, m: Tensor) -> Tensor:
            return length_desensitized(tok, m, shared, self.alpha)

        ld_stats = PairStats(ld(stats.policy_chosen_token_logps, mc), ld(stats.policy_rejected_token_logps, mr),
                             ld(stats.reference_chosen_token_logps, mc), ld(stats.reference_rejected_token_logps, mr),
                             stats.chosen_lengths, stats.rejected_lengths, weight=stats.weight)
        sc, sr, hc, hr = self.scores(ld_stats)
        out = self.finish(-F.logsigmoid(self.beta * (sc - sr)), ld_stats, hc, hr)
        return out


@register
@dataclass
class NCAPair(_Plain):
    """NCA, pairwise (Chen et al. 2024, eq. 11; TRL ``nca_pair``):
    ``-log sigmoid(r_w) - 0.5 log sigmoid(-r_w) - 0.5 log sigmoid(-r_l)``, ``r = beta h``."""

    name = "nca_pair"
    paper = "Chen et al. 2024 (NCA), eq. 11"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        rc, rr = self.beta * hc, self.beta * hr
        return self.finish(-F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr), stats, hc, hr)


@register
@dataclass
class BCOPair(_Plain):
    """BCO on paired data without reward shift (P56 eq. 6 with delta = 0; TRL ``bco_pair``):
    ``-log sigmoid(r_w) - log sigmoid(-r_l)``, ``r = beta h``. The unpaired BCO is ``bco``."""

    name = "bco_pair"
    paper = "P56 (BCO) eq. 6, delta = 0"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        return self.finish(-F.logsigmoid(self.beta * hc) - F.logsigmoid(-self.beta * hr), stats, hc, hr)


@register
@dataclass
class SPPOHard(_Plain):
    """SPPO with hard win probabilities (P61, Wu et al. 2024, eq. 4.7 with P = 1 / 0; TRL ``sppo_hard``):
    ``(h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2``. The self-play loop with soft estimates is M2."""

    name = "sppo_hard"
    paper = "P61 (SPPO) eq. 4.7, hard probabilities"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        return self.finish((hc - 0.5 / self.beta) ** 2 + (hr + 0.5 / self.beta) ** 2, stats, hc, hr)


def _smoothed_logistic(delta: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps


@dataclass
class _Sorted(_Plain):
    """Base of the AOT losses: the per-example loss is per *sorted quantile* of the batch, not per pair,
    so a per-pair weight (a ``weight`` column, WPO, MADPO, LCPO) would land on the wrong quantile.
    TRL 1.16 refuses ``use_weighting`` with ``aot``/``aot_unpaired`` likewise (``NotImplementedError``).
    ``accepts_weights = False`` tells wrappers to refuse this base at construction."""

    accepts_weights: ClassVar[bool] = False

    def check_stats(self, stats: PairStats) -> None:  # type: ignore[override]
        super().check_stats(stats)
        if stats.weight is not None:
            raise ConfigError(f"objective '{self.name}' sorts the batch, so per-pair weights (a weight column, "
                              "wpo, madpo, lcpo) would land on sorted quantiles, not pairs; drop the weights")


@register
@dataclass
class AOT(_Sorted):
    """AOT, paired (Melnyk et al. 2024, eq. 9; TRL ``aot``): distributional alignment via optimal transport
    in 1-D, i.e. the logistic loss on the *sorted* policy log-ratios minus the *sorted* reference ones
    across the batch. Depends on the whole batch: the per-example loss is per sorted quantile."""

    name = "aot"
    paper = "Melnyk et al. 2024 (AOT), eq. 9"
    label_smoothing: float = hp(0.0, "label smoothing of the logistic loss", low=0.0, high=0.5, high_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        assert stats.reference_chosen_logps is not None and stats.reference_rejected_logps is not None
        pol = torch.sort(stats.policy_chosen_logps - stats.policy_rejected_logps, dim=0).values
        ref = torch.sort(stats.reference_chosen_logps - stats.reference_rejected_logps, dim=0).values
        hc, hr = logratios(stats)
        return self.finish(_smoothed_logistic(pol - ref, self.beta, self.label_smoothing), stats, hc, hr)


@register
@dataclass
class AOTUnpaired(_Sorted):
    """AOT, unpaired (Melnyk et al. 2024, eq. 8; TRL ``aot_unpaired``): logistic loss on sorted chosen
    log-ratios minus sorted rejected log-ratios across the batch."""

    name = "aot_unpaired"
    paper = "Melnyk et al. 2024 (AOT), eq. 8"
    label_smoothing: float = hp(0.0, "label smoothing of the logistic loss", low=0.0, high=0.5, high_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        delta = torch.sort(hc, dim=0).values - torch.sort(hr, dim=0).values
        return self.finish(_smoothed_logistic(delta, self.beta, self.label_smoothing), stats, hc, hr)


@register
@dataclass
class APOZero(_Plain):
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): ``1 - sigmoid(r_w) + sigmoid(r_l)``: raise chosen,
    lower rejected, each against zero. Use when chosen outputs beat the model's own."""

    name = "apo_zero"
    paper = "D'Oosterlinck et al. 2024 (APO), eq. 7"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        return self.finish(1 - torch.sigmoid(self.beta * hc) + torch.sigmoid(self.beta * hr), stats, hc, hr)


@register
@dataclass
class APODown(_Plain):
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): ``sigmoid(r_w) + 1 - sigmoid(r_w - r_l)``: lower both,
    rejected more. Use when chosen outputs are worse than the model's own."""

    name = "apo_down"
    paper = "D'Oosterlinck et al. 2024 (APO), eq. 8"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        loss = torch.sigmoid(self.beta * hc) + 1 - torch.sigmoid(self.beta * (hc - hr))
        return self.finish(loss, stats, hc, hr)


@register
@dataclass
class RPO(WeightedSum):
    """RPO (P07, Liu et al. 2024, eq. 3): ``DPO(beta) + alpha * NLL(chosen)``, built as the weighted sum
    ``dpo:1, sft:alpha`` (no branch of its own). NLL is TRL's batch token mean (``sft``, normalize='batch');
    ``rpo_alpha`` in TRL. alpha = 0 is DPO."""

    name = "rpo"
    paper = "P07 (RPO) eq. 3"
    beta: float = hp(0.1, "inverse temperature of the DPO term", low=0.0, low_open=True)
    alpha: float = hp(1.0, "weight of the NLL (SFT) term on the chosen response", low=0.0)

    def __post_init__(self) -> None:
        self.validate()
        self.terms = [(1.0, DPO(beta=self.beta)), (self.alpha, SFT())]
        super().__post_init__()
        self.name = "rpo"  # type: ignore[misc]

    def config(self) -> dict:
        return {"beta": self.beta, "alpha": self.alpha}


__all__ = ["AOT", "AOTUnpaired", "APODown", "APOZero", "BCOPair", "CDPO", "DiscoPOP", "EXOPair", "Hinge", "IPO",
           "LDDPO", "LNDPO", "NCAPair", "RDPO", "RPO", "SPPOHard", "f_score", "length_desensitized"]
