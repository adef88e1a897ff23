"""preftune.logic: the logic of preference losses (P03, Richardson et al. 2024, "Understanding the Logic of
Direct Preference Alignment through Logic").

A small formula language over the atoms of a preference pair (:mod:`.formula`), preference structures
``(P, P_C, P_A)`` (:mod:`.structure`), their compilation to a loss by weighted model counting (:mod:`.compile`)
over atom log-odds taken from a pair's log-probs (:mod:`.scores`), decompilation of a loss back to its structure
(:mod:`.decompile`), entailment between losses (:mod:`.entail`), and a structure as an objective
(:class:`LogicObjective`, :mod:`.objective`).

>>> import torch
>>> from preftune.logic import ONE_HOT, compile_loss
>>> s = {"M_w": torch.tensor([0.3]), "M_l": torch.tensor([-0.2])}
>>> round(compile_loss(ONE_HOT, s).item(), 6)  # -log sigmoid(0.3 + 0.2)
0.474077
"""
from .compile import compile_loss, log_wmc, probability, semantic_loss
from .decompile import PROBED, Decompiled, decompile, decompile_objective, objective_loss_fn
from .entail import entailment_order, entails, equivalent
from .formula import FALSE, M_L, M_W, R_L, R_W, TRUE, Atom, Formula, display, formula_of, iff, parse
from .objective import LogicObjective
from .scores import (avg_log_prob_scores, log_prob_scores, log_ratio_scores, odds_scores, probability_scores,
                     reference_atom_scores)
from .structure import (CPO_PROBABILITY, CROSS_ENTROPY, DPO_REFERENCE, NAMED, ONE_HOT, UNLIKELIHOOD, Structure,
                        from_roles)

__all__ = ["CPO_PROBABILITY", "CROSS_ENTROPY", "DPO_REFERENCE", "FALSE", "M_L", "M_W", "NAMED", "ONE_HOT", "PROBED",
           "R_L", "R_W", "TRUE", "UNLIKELIHOOD", "Atom", "Decompiled", "Formula", "LogicObjective", "Structure",
           "avg_log_prob_scores", "compile_loss", "decompile", "decompile_objective", "display", "entailment_order",
           "entails", "equivalent", "formula_of", "from_roles", "iff", "log_prob_scores", "log_ratio_scores",
           "log_wmc", "objective_loss_fn", "odds_scores", "parse", "probability", "probability_scores",
           "reference_atom_scores", "semantic_loss"]
