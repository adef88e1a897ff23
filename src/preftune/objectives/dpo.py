"""Direct Preference Optimization, sigmoid form, and the f-divergence scores it shares with its family."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, logratios, register, reward_metrics

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


# The registered objectives that accept ``f_divergence`` other than ``reverse_kl``: the losses that read only
# the chosen-minus-rejected score difference (TRL 1.16 ``DPOTrainer``: sigmoid, sigmoid_norm, hinge, ipo,
# exo_pair, robust, discopop, sft; its ``ld_alpha`` is orthogonal to the loss type, so ``ld_dpo`` too). The
# f-DPO reparameterization leaves a ``beta log Z(x)`` term that cancels only in that difference.
F_DIVERGENCE_OBJECTIVES = ("dpo", "ln_dpo", "hinge", "ipo", "exo_pair", "rdpo", "discopop", "ld_dpo")


def alpha_clamp_max(dtype: torch.dtype, alpha: float) -> float:
    """Largest exponent ``t = (alpha-1) h`` allowed in the alpha score of ``dtype``.

    TRL 1.16 (``DPOTrainer._compute_loss``) clamps ``t`` at 11 in float16 and at 80 in bfloat16/float32.
    In float16 that is not enough: ``(exp(11) - 1) / (alpha - 1)`` overflows once ``|alpha - 1| < 0.91``
    (alpha = 0.5 gives -1.2e5 > 65504, i.e. ``-inf``). So the bound is also capped at
    ``log1p(0.5 * max(dtype) * |alpha - 1|)``: every score, and the difference of two, stays finite.
    For float32 and bfloat16 the cap (about 87) is above 80, so the TRL value holds there.
    """
    trl = 11.0 if dtype == torch.float16 else 80.0
    return min(trl, math.log1p(0.5 * torch.finfo(dtype).max * abs(alpha - 1.0)))


def f_score(h: Tensor, divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """``f'(pi/pi_ref)`` as a function of the log-ratio ``h`` (f-DPO, Wang et al. 2023, Table 1 / eq. 12),
    with its constants, exactly as TRL 1.16 ``DPOTrainer._compute_loss`` (``f_divergence_type``).

    reverse KL: ``h``; forward KL: ``1 - exp(-h)``; Jensen-Shannon: ``log 2 + log sigmoid(h)``;
    alpha divergence: ``(exp((alpha-1) h) - 1) / (alpha - 1)`` (-> ``h`` as alpha -> 1), computed in float32
    (float64 stays float64) with the exponent clamped (:func:`alpha_clamp_max`), cast back to ``h``'s dtype,
    then scaled.

    The constants (1, log 2, -1/(alpha-1)) cancel in ``score_w - score_l`` but not once each score is divided
    by its own length (``ipo``, ``ln_dpo``). TRL dropped them from #3906 (Feb 2026) and restored them in #6559
    (Jul 2026, in 1.16); preftune keeps them, as 1.16 does.
    """
    if divergence == "reverse_kl":
        return h
    if divergence == "forward_kl":
        return 1 - torch.exp(-h)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(h)
    if divergence == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return h
        t = (alpha - 1.0) * h
        t = t if t.dtype == torch.float64 else t.float()
        t = torch.clamp(t, max=alpha_clamp_max(h.dtype, alpha))
        return (torch.exp(t) - 1.0).to(h.dtype) * (1.0 / (alpha - 1.0))
    raise ValueError(f"unknown f-divergence '{divergence}'; one of {', '.join(F_DIVERGENCES)}")


@dataclass
class FDivergenceObjective(Objective):
    """Base of the margin objectives whose margin may use an f-divergence score instead of the log-ratio.

    Only the objectives in :data:`F_DIVERGENCE_OBJECTIVES` (TRL 1.16's set) accept an ``f_divergence`` other
    than ``reverse_kl``; a subclass outside it refuses one at construction with a ConfigError.
    """

    beta: float = hp(0.1, "inverse temperature of the implicit reward", low=0.0, low_open=True)
    f_divergence: str = hp("reverse_kl", "divergence whose f' scores the policy/reference ratio (f-DPO)",
                           choices=F_DIVERGENCES)
    f_alpha: float = hp(0.5, "alpha of the alpha divergence (used when f_divergence='alpha_divergence')",
                        low=0.0, low_open=True)

    def validate(self) -> None:
        super().validate()
        if self.f_divergence != "reverse_kl" and self.name not in F_DIVERGENCE_OBJECTIVES:
            raise ConfigError(f"objective '{self.name}': f_divergence={self.f_divergence!r} is not allowed; "
                              f"f-divergence scores are offered on {', '.join(F_DIVERGENCE_OBJECTIVES)} only")

    def scores(self, stats: PairStats) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(chosen score, rejected score, chosen log-ratio, rejected log-ratio)."""
        hc, hr = logratios(stats)
        return f_score(hc, self.f_divergence, self.f_alpha), f_score(hr, self.f_divergence, self.f_alpha), hc, hr

    def finish(self, loss: Tensor, stats: PairStats, hc: Tensor, hr: Tensor, **extra: Tensor) -> ObjectiveOutput:
        m = reward_metrics(self.beta * hc, self.beta * hr, stats)
        m.update({k: v.detach().float().mean() for k, v in extra.items()})
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


@register
@dataclass
class DPO(FDivergenceObjective):
    """DPO (Rafailov et al., 2023, eq. 7): ``-log sigmoid(beta * (h_chosen - h_rejected))``,
    with ``h = log pi(y|x) - log pi_ref(y|x)`` summed over response tokens.

    With ``f_divergence`` other than ``reverse_kl``, ``h`` is replaced by ``f'(exp h)`` (f-DPO,
    Wang et al. 2023, eq. 12; TRL ``f_divergence_type``). The implicit rewards ``beta * h`` are
    reported as ``rewards/chosen`` and ``rewards/rejected``.
    """

    name = "dpo"
    paper = "Rafailov et al. 2023, eq. 7 (f-DPO: Wang et al. 2023, eq. 12)"

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr, hc, hr = self.scores(stats)
        return self.finish(-F.logsigmoid(self.beta * (sc - sr)), stats, hc, hr)
