"""The soft-preference cross-entropy (P28, Zhai et al. 2024, "Online Self-Preferring Language Models", the SPCE loss).

A pair ``(y_w, y_l)`` comes with a preference strength ``p = P(y_w > y_l) in [0, 1]`` instead of a hard label, and
the DPO implicit reward model ``P_theta(y_w > y_l) = sigmoid(z)``, ``z = beta (h_w - h_l)``,
``h = log pi_theta(y|x) - log pi_ref(y|x)``, is fitted to it by cross-entropy against the soft target:

    L = -[ p log sigmoid(z) + (1 - p) log sigmoid(-z) ],        dL/dz = sigmoid(z) - p.

``p = 1`` is DPO's sigmoid loss; ``p = 1/2`` pulls the two log-ratios together (zero gradient only at ``z = 0``);
in general the minimiser is ``z = logit(p)`` -- a pair is pushed apart only as far as its strength says, which is
the paper's argument against overfitting hard labels. (cDPO, ``cdpo``, is the special case of one constant
``p = 1 - eps`` for every pair.)

The strength is read from the pair's ``strength`` column. ``strength_is='margin'`` (default) takes it as a reward
margin ``r_w - r_l`` and uses its Bradley-Terry probability ``p = sigmoid(strength)`` -- what P67's ``preftune rm
strength`` writes and what ``preftune online --algo osp`` writes (``logit s_w - logit s_l`` of the self-judged
strengths); ``strength_is='probability'`` takes ``p`` as given (each in [0, 1]).

Authors' code: no public code found (searched the code index for "self-preferring", "2405.14103", "soft-preference
cross-entropy", and GitHub repository names for self-preferring / OSP). The formula above is the soft-label
cross-entropy the paper names; the full paper text was not available to check its exact typesetting (see
``docs/online-self-preferring.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ObjectiveOutput, PairStats, hp, register
from .dpo import FDivergenceObjective


def soft_preference_ce(z: Tensor, p: Tensor) -> Tensor:
    """P28's soft-preference cross-entropy per pair: ``-(p log sigmoid(z) + (1 - p) log sigmoid(-z))``."""
    return -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z))


@register
@dataclass
class SoftPreferenceCE(FDivergenceObjective):
    __doc__ = ("Soft-preference cross-entropy (P28 OSP, SPCE loss): ``-[p log sigmoid(z) + (1-p) log sigmoid(-z)]``, "
               "``z = beta (h_w - h_l)``, ``p`` the pair's preference strength from its ``strength`` column "
               "(``sigmoid(strength)`` for a reward margin, or a probability as given). p = 1 is DPO.")
    name = "spce"
    paper = "P28 (Zhai et al. 2024, Online Self-Preferring LMs), soft-preference cross-entropy; no public code"
    strength_is: str = hp("margin", "what the 'strength' column holds: a reward margin r_w - r_l (p = "
                                    "sigmoid(strength); P67's and --algo osp's) or the probability p itself",
                          choices=("margin", "probability"))

    def __call__(self, stats: PairStats) -> ObjectiveOutput:  # type: ignore[override]
        self.check_stats(stats)
        s = stats.extras.get("strength")
        if s is None:
            raise ValueError("spce needs each pair's preference strength in the 'strength' column (a reward margin, "
                             "or a probability with strength_is='probability')")
        sc, sr, hc, hr = self.scores(stats)
        s = s.to(sc.dtype)
        if self.strength_is == "probability":
            if bool(((s < 0) | (s > 1) | torch.isnan(s)).any()):
                raise ValueError(f"spce: strength_is='probability' needs every strength in [0, 1], got "
                                 f"{s[(s < 0) | (s > 1) | torch.isnan(s)][0].item()}")
            p = s
        else:
            p = torch.sigmoid(s)
        z = self.beta * (sc - sr)
        return self.finish(soft_preference_ce(z, p), stats, hc, hr, strength=p,
                           target_gap=(torch.sigmoid(z) - p).abs())


__all__ = ["SoftPreferenceCE", "soft_preference_ce"]
