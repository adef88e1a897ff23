"""GPO, General Preference Optimization (P31, Zhang et al. 2024, sec. 5): SPPO's squared loss with a general
preference model's *preference score* in place of the win rate.

SPPO (P61, Wu et al. 2024, eq. 4.7) regresses each response's log-ratio against the current policy ``pi_t`` on
``eta * (P(y > pi_t | x) - 1/2)``; the ``1/2`` is ``P(pi_t > pi_t)``, its estimate of ``log Z / eta``. GPO
replaces the win probability by the GPM preference score ``s(y > pi_t | x) = E_{y' ~ pi_t} s(y > y' | x)``,
whose self-comparison is ``s(pi_t > pi_t) = 0`` (the score is skew-symmetric), so the target has no offset:

    loss = (h_w - eta * s(y_w > pi_t | x))^2 + (h_l - eta * s(y_l > pi_t | x))^2,   h = log pi(y|x) - log pi_t(y|x)

with ``eta = 1 / beta``. The two responses' terms are summed, as preftune's and TRL's ``sppo_hard`` sum theirs
(the authors' SPPO trainer averages them: a factor 1/2, a learning-rate rescaling). The reference model is
``pi_t`` (the policy that sampled the responses, in an iterative loop). The minimiser over free log-ratios is
``h = eta * s``: the multiplicative-weights update ``pi_{t+1} proportional to pi_t exp(eta s(y > pi_t | x))``.

Where the scores come from (``source``):

* ``scores``: the data columns ``score_chosen`` = ``s(y_w > pi_t | x)`` and ``score_rejected`` =
  ``s(y_l > pi_t | x)``, estimated from K samples of ``pi_t`` by :func:`preftune.reward.gpm.policy_scores` (the
  mean of a row of the GPM's score matrix, :func:`preftune.reward.gpm.score_matrix`) -- the paper's estimate;
* ``margin`` (the default, so that plain pair data trains): the ``margin`` column is the GPM's pair score
  ``m = s(y_w > y_l | x)`` and the pair itself is the sample of ``pi_t`` (K = 2): the row means of the 2x2 table
  ``[[0, m], [-m, 0]]`` give ``s_w = m/2``, ``s_l = -m/2``. At ``m = 1`` the loss is ``sppo_hard``'s exactly.

Authors' code: github.com/general-preference/general-preference-model @ 267a7d4a85b089771e88fb5ffc3a1354c2a94439,
``general_preference/scripts/compute_score_from_raw.py`` (``from_ranks``, ``prepare_score``: the per-response
score is the mean of the GPM score table's row, ``chosen_probs_win``/``chosen_probs_lose``) and
``run_gpo_llama-3_table_gp.sh`` / ``scripts/pipeline_score_table.sh`` (``--loss_type sppo_score``, ``beta`` 0.001
to 0.03). The ``sppo_score`` loss itself lives in their fork of the SPPO trainer, which is not in that
repository, nor in uclaml/SPPO ``sppo/trainer.py`` @ 2c5eb7f36ffb25daccc287c9802186ed7b1b5539 (``dpo_loss`` has
``sppo`` and ``sppo_single`` only): the loss here follows the paper's description (SPPO's eq. 4.7 with the score
for the win rate and no 1/2 offset) and that trainer's ``sppo`` form ``(h - (1/beta) * (p - 0.5))^2``, averaged
there over the two responses.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, logratios, register, require, reward_metrics


def gpo_loss(h_chosen: Tensor, h_rejected: Tensor, s_chosen: Tensor, s_rejected: Tensor, eta: float) -> Tensor:
    """Per-pair GPO loss (P31 sec. 5): ``(h_w - eta s_w)^2 + (h_l - eta s_l)^2``; ``h`` the log-ratios against
    ``pi_t``, ``s`` the preference scores ``s(y > pi_t | x)``."""
    return (h_chosen - eta * s_chosen) ** 2 + (h_rejected - eta * s_rejected) ** 2


@register
@dataclass
class GPO(Objective):
    """General Preference Optimization (P31 sec. 5): SPPO's squared loss (P61 eq. 4.7) on the GPM preference
    score ``s(y > pi_t | x)``, ``eta = 1/beta``; the scores from the ``score_chosen``/``score_rejected`` columns
    (``source='scores'``) or from the pair score in ``margin`` (``source='margin'``, K = 2)."""

    name = "gpo"
    paper = "P31 (GPM/GPO) sec. 5: SPPO's loss (P61 eq. 4.7) with the preference score for the win rate"
    kind = "pair"
    needs_reference = True
    needs = ("margin",)
    beta: float = hp(0.1, "inverse step size: the log-ratio target is s(y > pi_t | x) / beta", low=0.0,
                     low_open=True)
    source: str = hp("margin", "scores: columns score_chosen/score_rejected = s(y > pi_t | x); margin: the pair's "
                     "GPM score s(y_w > y_l | x), giving s_w = m/2, s_l = -m/2", choices=("margin", "scores"))

    def __post_init__(self) -> None:
        cols = ("margin",) if self.source == "margin" else ("score_chosen", "score_rejected")
        self.needs = cols  # type: ignore[misc]  # the trainer checks the data has them
        super().__post_init__()

    def policy_scores(self, stats: PairStats) -> tuple[Tensor, Tensor]:
        """``(s(y_w > pi_t | x), s(y_l > pi_t | x))`` per pair, from the stats' columns."""
        dt = stats.policy_chosen_logps.dtype
        if self.source == "margin":
            require(stats, self.name, "margin")
            m = stats.margin.to(dt)  # type: ignore[union-attr]
            return m / 2, -m / 2
        require(stats, self.name, "score_chosen", "score_rejected")
        return stats.score_chosen.to(dt), stats.score_rejected.to(dt)  # type: ignore[union-attr]

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sc, sr = self.policy_scores(stats)
        sc, sr = sc.detach(), sr.detach()  # targets from the preference model, not trained here
        hc, hr = logratios(stats)
        loss = gpo_loss(hc, hr, sc, sr, 1.0 / self.beta)
        m = reward_metrics(self.beta * hc, self.beta * hr, stats)
        m["gpo/score_chosen"], m["gpo/score_rejected"] = sc.float().mean(), sr.float().mean()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


__all__ = ["GPO", "gpo_loss"]
