"""A preference structure as a preftune objective (P03, Richardson et al. 2024): write a loss as formulas, train it.

``LogicObjective(core=..., given=..., additive=..., scores=...)`` compiles the structure ``(P, P_C, P_A)`` by
weighted model counting (:func:`preftune.logic.compile_loss`) over the atom scores named by ``scores``. The
defaults are the one-hot structure over DPO's log-ratios: DPO itself. It is not in the objective registry (so
``--loss`` does not know it yet); call it on :class:`~preftune.objectives.PairStats` directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..errors import ConfigError
from ..objectives.base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, reward_metrics
from . import scores as sc
from .compile import compile_loss
from .structure import Structure

SCORES: dict[str, tuple[Callable[..., dict[str, Tensor]], tuple[str, ...], bool, tuple[str, ...]]] = {
    # name: (function, atoms it scores, needs a reference, stats fields it needs)
    "log_ratio": (lambda st, o: sc.log_ratio_scores(st, o.beta), ("M_w", "M_l"), True, ()),
    "reference_atoms": (lambda st, o: sc.reference_atom_scores(st, o.beta), ("M_w", "M_l", "R_w", "R_l"), True, ()),
    "log_prob": (lambda st, o: sc.log_prob_scores(st, o.beta), ("M_w", "M_l"), False, ()),
    "avg_log_prob": (lambda st, o: sc.avg_log_prob_scores(st, o.beta, o.gamma), ("M_w", "M_l"), False,
                     ("chosen_lengths",)),
    "odds": (lambda st, o: sc.odds_scores(st), ("M_w", "M_l"), False, ("chosen_lengths",)),
}


@dataclass
class LogicObjective(Objective):
    """The loss of the preference structure ``(core, given, additive)`` (P03; formulas as :func:`parse` reads
    them) over the atom scores ``scores``: ``-log sigmoid(log WMC(top) - log WMC(bottom))``. Defaults: DPO."""

    name = "logic"
    paper = "P03 (Richardson et al. 2024), semantic loss of a preference structure"
    core: str = hp("M_w & ~M_l", "core formula P: what the loss asks to be true")
    given: str = hp("M_w ^ M_l", "conditioning constraint P_C: the worlds counted")
    additive: str = hp("false", "additive constraint P_A: worlds counted on both sides")
    scores: str = hp("log_ratio", "atom log-odds: log_ratio (DPO), reference_atoms, log_prob (CPO), avg_log_prob "
                     "(SimPO), odds (ORPO)", choices=tuple(SCORES))
    beta: float = hp(0.1, "scale of the log-prob scores (not used by 'odds')", low=0.0, low_open=True)
    gamma: float = hp(0.0, "SimPO's margin, subtracted from the chosen atom ('avg_log_prob' only)", low=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        fn, atoms, needs_ref, needs = SCORES[self.scores]
        try:
            self.structure = Structure(self.core, self.given, self.additive)
        except ConfigError as e:
            raise ConfigError(f"objective 'logic': {e}") from None
        extra = sorted(set(self.structure.atoms) - set(atoms))
        if extra:
            raise ConfigError(f"objective 'logic': scores={self.scores!r} gives atoms {', '.join(atoms)}, not "
                              f"{', '.join(extra)}")
        if not self.structure.top():
            raise ConfigError(f"objective 'logic': {self.structure} has no world on the preferred side")
        self.structure = self.structure.over(atoms)
        self._score = fn
        self.needs_reference = needs_ref  # type: ignore[misc]  # set per instance: it depends on `scores`
        self.needs = needs  # type: ignore[misc]

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        s = self._score(stats, self)
        loss = compile_loss(self.structure, s)
        return ObjectiveOutput(apply_weight(loss, stats.weight), reward_metrics(s["M_w"], s["M_l"], stats))


__all__ = ["LogicObjective", "SCORES"]
