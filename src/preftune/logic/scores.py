"""Atom scores: the log-odds ``s`` of each atom, from a pair's log-probabilities (P03, sec. 3-4).

An atom is true with probability ``p = sigmoid(s)``. Which ``s`` a loss uses is its *model* side, separate from
its logic: DPO, CPO, SimPO and ORPO's odds term share one structure (:data:`~preftune.logic.structure.ONE_HOT`) and
differ only here. Each function returns ``{atom: [B] tensor}``:

* :func:`log_ratio_scores` -- ``beta (log pi - log pi_ref)``: DPO's implicit reward as the atom's log-odds;
* :func:`reference_atom_scores` -- ``beta log pi`` for ``M``, ``beta log pi_ref`` for ``Ref`` atoms;
* :func:`log_prob_scores` -- ``beta log pi`` (CPO);
* :func:`avg_log_prob_scores` -- ``beta log pi / |y|``, the chosen one lowered by SimPO's margin ``gamma``;
* :func:`odds_scores` -- the log-odds of ``exp(log pi / |y|)`` (ORPO, ASFT), i.e. ``p`` = the geometric-mean
  token probability itself.
"""
from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from ..objectives.base import PairStats
from ..objectives.reference_free import avg_logps, log_odds


def _beta(beta: float) -> float:
    if not beta > 0:
        raise ConfigError(f"beta must be > 0, got {beta}")
    return float(beta)


def log_ratio_scores(stats: PairStats, beta: float = 0.1) -> dict[str, Tensor]:
    """``M_w: beta (log pi(y_w) - log pi_ref(y_w))``, ``M_l`` likewise (DPO; needs reference log-probs)."""
    if not stats.has_reference:
        raise ConfigError("log_ratio_scores needs reference log-probs (reference_chosen/rejected_logps)")
    b = _beta(beta)
    return {"M_w": b * (stats.policy_chosen_logps - stats.reference_chosen_logps),
            "M_l": b * (stats.policy_rejected_logps - stats.reference_rejected_logps)}


def reference_atom_scores(stats: PairStats, beta: float = 0.1) -> dict[str, Tensor]:
    """``M_*: beta log pi``, ``R_*: beta log pi_ref`` -- the reference as atoms of its own (DPO_REFERENCE)."""
    if not stats.has_reference:
        raise ConfigError("reference_atom_scores needs reference log-probs (reference_chosen/rejected_logps)")
    b = _beta(beta)
    return {"M_w": b * stats.policy_chosen_logps, "M_l": b * stats.policy_rejected_logps,
            "R_w": b * stats.reference_chosen_logps, "R_l": b * stats.reference_rejected_logps}


def log_prob_scores(stats: PairStats, beta: float = 0.1) -> dict[str, Tensor]:
    """``M_w: beta log pi(y_w)``, ``M_l: beta log pi(y_l)`` (CPO's preference term)."""
    b = _beta(beta)
    return {"M_w": b * stats.policy_chosen_logps, "M_l": b * stats.policy_rejected_logps}


def avg_log_prob_scores(stats: PairStats, beta: float = 2.0, gamma: float = 0.0) -> dict[str, Tensor]:
    """``M_w: beta log pi(y_w)/|y_w| - gamma``, ``M_l: beta log pi(y_l)/|y_l|`` (SimPO; needs lengths).

    The margin only shifts the chosen atom's log-odds: under the one-hot structure the loss reads only
    ``s_w - s_l``, so this is SimPO's ``-log sigmoid(beta ā_w - beta ā_l - gamma)`` exactly."""
    b = _beta(beta)
    ac, ar = avg_logps(stats, "avg_log_prob_scores")
    return {"M_w": b * ac - gamma, "M_l": b * ar}


def odds_scores(stats: PairStats) -> dict[str, Tensor]:
    """``M: log(q / (1 - q))`` with ``q = exp(log pi / |y|)``, so the atom's probability is ``q`` (ORPO, ASFT)."""
    ac, ar = avg_logps(stats, "odds_scores")
    return {"M_w": log_odds(ac), "M_l": log_odds(ar)}


def probability_scores(logp_chosen: Tensor, logp_rejected: Tensor) -> dict[str, Tensor]:
    """Atom probability = ``exp(logp)`` itself (any log-probability below 0): log-odds ``logp - log(1 - e^logp)``."""
    return {"M_w": log_odds(logp_chosen), "M_l": log_odds(logp_rejected)}


__all__ = ["avg_log_prob_scores", "log_prob_scores", "log_ratio_scores", "odds_scores", "probability_scores",
           "reference_atom_scores"]
