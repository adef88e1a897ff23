"""Reward-model objectives: functions of :class:`~preftune.reward.forward.PairScores`.

``bradley_terry`` -- the Bradley-Terry reward loss of RLHF (Ouyang et al. 2022, eq. 1; Stiennon et al. 2020,
eq. 1): ``-log sigmoid(r(x, y_w) - r(x, y_l) - m)`` with an optional per-pair margin ``m`` (Llama 2's
margin loss, TRL's ``margin`` column) and TRL's ``center_rewards_coefficient`` term
``c * (r_w + r_l)^2`` (Eisenstein et al. 2023), which keeps rewards centred on zero. The mean over a batch is
exactly TRL's ``RewardTrainer.compute_loss`` (verified: ``tests/test_reward.py`` against trl 1.16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..objectives.base import Objective, ObjectiveOutput, apply_weight, hp, register


@register
@dataclass
class BradleyTerry(Objective):
    """Bradley-Terry reward loss (Ouyang et al. 2022, eq. 1), with TRL's margin and reward centring; trains
    reward models (``preftune rm train``), reading the scores of :class:`~preftune.reward.ScoreForward`."""

    name = "bradley_terry"
    paper = "Ouyang et al. 2022 (InstructGPT), eq. 1; margin: Touvron et al. 2023 (Llama 2), eq. 2"
    kind = "pair"
    needs_reference = False
    needs = ("scores",)
    center_rewards_coefficient: float = hp(0.0, "weight of (r_chosen + r_rejected)^2 (TRL's name; 0 = off)",
                                           low=0.0)

    def __call__(self, stats) -> ObjectiveOutput:
        if not hasattr(stats, "chosen_scores"):
            raise TypeError(f"objective '{self.name}' takes reward-model scores (PairScores); train it with "
                            "`preftune rm train`, which scores sequences with a reward model")
        rc, rr = stats.chosen_scores, stats.rejected_scores
        diff = rc - rr if stats.margin is None else rc - rr - stats.margin.to(rc.dtype)
        loss = -F.logsigmoid(diff)
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * (rc + rr) ** 2
        c, r = rc.detach(), rr.detach()
        both = torch.cat([c, r])
        m = {"accuracy": (c > r).float().mean(), "margin": (c - r).mean(), "rewards/chosen": c.mean(),
             "rewards/rejected": r.mean(), "min_reward": both.min(), "mean_reward": both.mean(),
             "max_reward": both.max()}
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)
