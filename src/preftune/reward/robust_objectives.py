"""Reward-model objectives that use each pair's preference strength (P67, Secrets of RLHF II, sec. 2.4) and the
contrastive term on the reward model's representations (P67 sec. 3.1).

Strength ``mu`` (P67 eq. 4, :mod:`preftune.reward.strength`) is read from ``stats.extras['strength']``, measured
towards the pair's label. For pair ``i`` with scores ``r_c``, ``r_r``:

* **Flip** (sec. 2.4.1): a pair with ``mu < flip_below`` has its label flipped -- trained as if the rejected answer
  were chosen; its strength towards the new label is ``-mu``.
* **Label smoothing** (eq. 5): ``-(1 - alpha) log p - alpha log(1 - p)``, ``p = sigmoid(r_c - r_r - m)``, on the pairs
  with (after flipping) ``mu < smooth_below``; the paper's "Soft Label + Margin" smooths the pairs with ``mu < 0``.
* **Adaptive margin** (eq. 6): ``-log sigmoid(r_c - r_r - m)`` with ``m = margin_scale * mu`` (the paper: ``m = mu``;
  its printed eq. 6 puts ``mu`` outside the log-sigmoid, a typo, since the text and Llama 2's margin loss it cites
  put it inside). The data's own ``margin`` column, when present, is added to ``m``.

One class, :class:`StrengthBradleyTerry` (``rm_strength_bt``, every knob off), and the paper's four methods as
registered presets (sec. 2.5): ``rm_flip``, ``rm_adaptive_margin``, ``rm_flip_margin`` and ``rm_soft_label_margin``,
plus ``rm_label_smoothing`` (eq. 5 on every pair).

**Contrastive term** (``rm_simcse``, sec. 3.1, eq. 9): SimCSE's InfoNCE over two dropout views of each instance,
the instances being the pairs' preference differences ``{f(x, y_c) - f(x, y_r), f(x, y_r) - f(x, y_c)}`` (sec.
3.1.1, "Preference Difference"; ``representation="pairs"``: the responses ``{f(x, y_c), f(x, y_r)}``), ``f`` the
reward model's final hidden state at the token its score head reads (:mod:`preftune.reward.contrastive_forward`).
It is a term to add to a reward loss, ``L = L_rm + beta * L_cl`` (the paper's beta = 1 for SimCSE):
``--loss "bradley_terry,rm_simcse:1.0"``.

Source: OpenLMLab/MOSS-RLHF at 4865d826fc6705dfdf1894aede00b4c81dabb24b holds only the plain Bradley-Terry loss
(``rm/reward_trainer.py``, ``RewardTrainer._criterion``: ``-log(sigmoid(r_c - r_r) + 1e-5)``); no public code found
for flipping, smoothing, the adaptive margin or the contrastive terms (searched that repository and GitHub code
for the paper's SimCSE/SwAV reward modelling). Everything here follows the paper's text. The paper does not give
the label-smoothing alpha; 0.1 is this module's default. SwAV (eqs. 7-8) is not implemented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..objectives.base import Objective, ObjectiveOutput, apply_weight, hp, register
from . import contrastive_forward as _features  # noqa: F401  (registers the chosen/rejected features supplier)
from .strength import COLUMN

INF = float("inf")


def _scores(objective: Objective, stats) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(stats, "chosen_scores"):
        raise TypeError(f"objective '{objective.name}' takes reward-model scores (PairScores); train it with "
                        "`preftune rm train` or preftune.reward.train_reward_model")
    return stats.chosen_scores, stats.rejected_scores


def score_metrics(c: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's reward metrics, as ``bradley_terry`` reports them, against the data's labels."""
    c, r = c.detach(), r.detach()
    both = torch.cat([c, r])
    return {"accuracy": (c > r).float().mean(), "margin": (c - r).mean(), "rewards/chosen": c.mean(),
            "rewards/rejected": r.mean(), "min_reward": both.min(), "mean_reward": both.mean(),
            "max_reward": both.max()}


def strength_loss(chosen: torch.Tensor, rejected: torch.Tensor, strength: torch.Tensor, *,
                  flip_below: float = -INF, smooth_below: float = -INF, alpha: float = 0.0,
                  margin_scale: float = 0.0, margin: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Per-pair loss of P67 sec. 2.4 (flip, eq. 5 label smoothing, eq. 6 adaptive margin) and the masks used.

    ``s = -1`` where ``strength < flip_below`` else 1; ``mu' = s * strength``; ``z = s * (r_c - r_r) - m``,
    ``m = margin_scale * mu' (+ margin)``; ``a = alpha`` where ``mu' < smooth_below`` else 0;
    ``loss = -(1 - a) log sigmoid(z) - a log sigmoid(-z)``."""
    mu = strength.to(chosen.dtype)
    flipped = mu < flip_below
    sign = 1.0 - 2.0 * flipped.to(chosen.dtype)
    mu_label = sign * mu
    m = margin_scale * mu_label
    if margin is not None:
        m = m + margin.to(chosen.dtype)
    z = sign * (chosen - rejected) - m
    smoothed = mu_label < smooth_below
    a = alpha * smoothed.to(chosen.dtype)
    loss = -(1.0 - a) * F.logsigmoid(z) - a * F.logsigmoid(-z)
    return loss, {"flipped": flipped, "smoothed": smoothed}


@register
@dataclass
class StrengthBradleyTerry(Objective):
    """Bradley-Terry reward loss with P67's strength-based remedies (sec. 2.4): flip the pairs with strength
    below ``flip_below``, label-smooth (eq. 5) those below ``smooth_below``, and add the adaptive margin
    ``margin_scale * strength`` (eq. 6). Reads ``strength`` (P67 eq. 4) from the data."""

    name = "rm_strength_bt"
    paper = "P67 (Secrets of RLHF II) sec. 2.4: flip; eq. 5 label smoothing; eq. 6 adaptive margin"
    kind = "pair"
    needs_reference = False
    needs = ("scores", COLUMN)
    flip_below: float = hp(-INF, "flip the label of pairs whose strength is below this (-inf: none; P67 flips < 0)")
    smooth_below: float = hp(-INF, "label-smooth pairs whose strength (after flipping) is below this "
                                   "(-inf: none, inf: all)")
    alpha: float = hp(0.1, "label-smoothing weight alpha of eq. 5 (the paper gives no value)", low=0.0, high=0.5)
    margin_scale: float = hp(0.0, "adaptive margin m = margin_scale * strength (eq. 6; 0 = off, the paper: 1)",
                             low=0.0)
    center_rewards_coefficient: float = hp(0.0, "weight of (r_chosen + r_rejected)^2 (TRL's name; 0 = off)",
                                           low=0.0)

    def validate(self) -> None:
        super().validate()
        for k in ("flip_below", "smooth_below"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ConfigError(f"objective '{self.name}': {k} must be a number (inf and -inf allowed), got {v!r}")

    def strength(self, stats) -> torch.Tensor:
        if COLUMN not in stats.extras:
            raise ValueError(f"objective '{self.name}' needs each pair's '{COLUMN}' in stats.extras "
                             "(preftune.reward.strength)")
        return stats.extras[COLUMN]

    def __call__(self, stats) -> ObjectiveOutput:
        rc, rr = _scores(self, stats)
        mu = self.strength(stats)
        loss, masks = strength_loss(rc, rr, mu, flip_below=self.flip_below, smooth_below=self.smooth_below,
                                    alpha=self.alpha, margin_scale=self.margin_scale, margin=stats.margin)
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * (rc + rr) ** 2
        m = score_metrics(rc, rr)
        m["strength/flipped"] = masks["flipped"].float().mean()
        m["strength/smoothed"] = masks["smoothed"].float().mean()
        m["strength/mean"] = mu.detach().float().mean()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


@register
@dataclass
class Flip(StrengthBradleyTerry):
    """P67's "Flip" (sec. 2.4.1, 2.5): Bradley-Terry with the labels of pairs of negative strength flipped."""

    name = "rm_flip"
    paper = "P67 (Secrets of RLHF II) sec. 2.4.1 (Flip)"
    flip_below: float = hp(0.0, "flip the label of pairs whose strength is below this (-inf: none)")


@register
@dataclass
class AdaptiveMargin(StrengthBradleyTerry):
    """P67's "Margin" (eq. 6): ``-log sigmoid(r_c - r_r - strength)`` on every pair."""

    name = "rm_adaptive_margin"
    paper = "P67 (Secrets of RLHF II) eq. 6 (adaptive margin)"
    margin_scale: float = hp(1.0, "adaptive margin m = margin_scale * strength (eq. 6)", low=0.0)


@register
@dataclass
class FlipMargin(StrengthBradleyTerry):
    """P67's "Flip + Margin" (sec. 2.5): flip pairs of negative strength, then the adaptive margin (eq. 6) on all
    pairs, measured towards the (flipped) label."""

    name = "rm_flip_margin"
    paper = "P67 (Secrets of RLHF II) sec. 2.5 (Flip + Margin), eq. 6"
    flip_below: float = hp(0.0, "flip the label of pairs whose strength is below this (-inf: none)")
    margin_scale: float = hp(1.0, "adaptive margin m = margin_scale * strength (eq. 6)", low=0.0)


@register
@dataclass
class SoftLabelMargin(StrengthBradleyTerry):
    """P67's "Soft Label + Margin" (sec. 2.5): label smoothing (eq. 5) on pairs of negative strength, the adaptive
    margin (eq. 6) on all pairs."""

    name = "rm_soft_label_margin"
    paper = "P67 (Secrets of RLHF II) sec. 2.5 (Soft Label + Margin), eqs. 5-6"
    smooth_below: float = hp(0.0, "label-smooth pairs whose strength is below this (-inf: none, inf: all)")
    margin_scale: float = hp(1.0, "adaptive margin m = margin_scale * strength (eq. 6)", low=0.0)


@register
@dataclass
class LabelSmoothing(StrengthBradleyTerry):
    """P67 eq. 5 on every pair: ``-(1 - alpha) log p - alpha log(1 - p)``. Needs no strength; reads it only
    when given (for the ``smooth_below`` threshold)."""

    name = "rm_label_smoothing"
    paper = "P67 (Secrets of RLHF II) eq. 5 (label smoothing)"
    needs = ("scores",)
    smooth_below: float = hp(INF, "label-smooth pairs whose strength is below this (inf: all pairs)")

    def strength(self, stats) -> torch.Tensor:
        if COLUMN in stats.extras:
            return stats.extras[COLUMN]
        if self.smooth_below != INF or self.flip_below != -INF or self.margin_scale:
            raise ValueError(f"objective '{self.name}' with a strength threshold or a margin needs '{COLUMN}'")
        return torch.zeros_like(stats.chosen_scores)   # every pair smoothed: the strength plays no part


# ------------------------------------------------------------------------------------- contrastive term


def info_nce(view_a: torch.Tensor, view_b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCSE's loss (P67 eq. 9) per instance ``i``: ``-log(exp(sim(a_i, b_i)/tau) / sum_j exp(sim(a_i, b_j)/tau))``,
    ``sim`` the cosine similarity; ``view_a``, ``view_b`` ``[N, H]``."""
    sim = F.cosine_similarity(view_a.unsqueeze(1), view_b.unsqueeze(0), dim=-1) / tau
    return -torch.diagonal(torch.log_softmax(sim, dim=1))


@register
@dataclass
class SimCSE(Objective):
    """P67 sec. 3.1 (eq. 9): SimCSE on the reward model's representations, two dropout views per instance.
    Add it to a reward loss: ``--loss "bradley_terry,rm_simcse:1.0"`` (``L_rm + beta * L_cl``)."""

    name = "rm_simcse"
    paper = "P67 (Secrets of RLHF II) sec. 3.1, eq. 9 (SimCSE; Gao et al. 2021)"
    kind = "pair"
    needs_reference = False
    needs = ("scores", "chosen_features")
    tau: float = hp(0.05, "temperature of the cosine similarities (SimCSE's 0.05)", low=0.0, low_open=True)
    dropout: float = hp(0.05, "dropout rate making the two views of each representation (the paper's 0.05)",
                        low=0.0, high=1.0, high_open=True)
    representation: str = hp("difference", "instances: difference (f_c - f_r and f_r - f_c, sec. 3.1.1) or pairs "
                                            "(f_c and f_r)", choices=("difference", "pairs"))

    def __call__(self, stats) -> ObjectiveOutput:
        rc, rr = _scores(self, stats)
        if "chosen_features" not in stats.extras or "rejected_features" not in stats.extras:
            raise ValueError(f"objective '{self.name}' needs chosen_features and rejected_features in stats.extras")
        fc, fr = stats.extras["chosen_features"], stats.extras["rejected_features"]
        # Two views of each response's representation, each through its own dropout mask (P67 app. B.2: "data
        # augmentation is performed using dropout with a rate of 0.05"); with dropout 0 the views coincide.
        views, on = [], self.dropout > 0 and torch.is_grad_enabled()   # no augmentation when evaluating
        for _ in range(2):
            c = F.dropout(fc, self.dropout, training=on)
            r = F.dropout(fr, self.dropout, training=on)
            views.append(torch.cat([c - r, r - c]) if self.representation == "difference" else torch.cat([c, r]))
        per_instance = info_nce(views[0].float(), views[1].float(), self.tau)
        B = fc.shape[0]
        loss = (per_instance[:B] + per_instance[B:]) / 2
        m = score_metrics(rc, rr)
        m["simcse/loss"] = loss.detach().mean()
        m["simcse/cos_chosen_rejected"] = F.cosine_similarity(fc.detach(), fr.detach(), dim=-1).mean()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


__all__ = ["AdaptiveMargin", "Flip", "FlipMargin", "LabelSmoothing", "SimCSE", "SoftLabelMargin",
           "StrengthBradleyTerry", "info_nce", "score_metrics", "strength_loss"]
