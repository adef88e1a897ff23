"""Flex-DPO (P13: Yan et al. 2024, "3D-Properties: Identifying Challenges in DPO and Charting a Path Forward",
arXiv 2406.07327): DPO with separate inverse temperatures for the chosen and the rejected log-ratio."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, logratios, register, reward_metrics


@register
@dataclass
class FlexDPO(Objective):
    """Flex-DPO (P13, Yan et al. 2024, the paper's regularization against the 3D-properties):
    ``-log sigmoid(beta_chosen * h_w - beta_rejected * h_l)``, ``h = log pi(y|x) - log pi_ref(y|x)`` summed over
    response tokens. The paper's remedy for the Drastic drop of the rejected likelihood is to decouple the two
    betas; ``beta_chosen = beta_rejected = beta`` is DPO. The other remedy of the paper, an added SFT term on
    the chosen response, is the composition ``flex_dpo:1,sft:alpha``.

    Rewards (metrics) are ``beta_chosen * h_w`` and ``beta_rejected * h_l``.
    """

    name = "flex_dpo"
    paper = "P13 (3D-properties, Yan et al. 2024, arXiv 2406.07327), Flex-DPO: DPO eq. 7 with beta_w != beta_l"
    beta_chosen: float = hp(0.1, "inverse temperature of the chosen log-ratio", low=0.0, low_open=True)
    beta_rejected: float = hp(0.1, "inverse temperature of the rejected log-ratio", low=0.0, low_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        hc, hr = logratios(stats)
        rc, rr = self.beta_chosen * hc, self.beta_rejected * hr
        return ObjectiveOutput(apply_weight(-F.logsigmoid(rc - rr), stats.weight), reward_metrics(rc, rr, stats))


__all__ = ["FlexDPO"]
