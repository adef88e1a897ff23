"""Preference strength from M reward models (P67, Secrets of RLHF II, sec. 2.2, eq. 4).

>>> from preftune.reward import RewardEnsemble                                        # doctest: +SKIP
>>> from preftune.reward.strength import pair_strength                               # doctest: +SKIP
>>> ens = RewardEnsemble.from_pretrained(["runs/rm/member-0/final", "runs/rm/member-1/final"])  # doctest: +SKIP
>>> s = pair_strength(ens, prompts, chosen, rejected)                                # doctest: +SKIP
>>> s.mean, s.std                                                                    # doctest: +SKIP

Each of M reward models ``r_m`` (trained on the same pairs, other seeds and data orders) gives pair ``i`` the
margin ``d_{i,m} = r_m(x_i, y_c) - r_m(x_i, y_r)``; the pair's preference strength is their mean and spread

    mu_i = (1/M) sum_m d_{i,m},     sigma_i = sqrt((1/M) sum_m (d_{i,m} - mu_i)^2)          (P67 eq. 4)

(the population std, as in the paper, so one model has spread 0). A negative ``mu_i`` says the models, though
trained on the pair, still score its rejected answer higher: a likely wrong label (P67 sec. 2.2, Figure 3);
``mu_i`` near zero an ambiguous one. :func:`weakest` picks the pairs to flip (P67 sec. 2.4.1), and
:func:`flip_detection_auroc` measures how well ``-mu`` finds labels known to be flipped.

The strength enters training as the data column ``strength`` (and ``strength_std``), written by
``preftune rm strength`` (:mod:`preftune.cli.rm_strength`). The objectives of
:mod:`preftune.reward.robust_objectives` read it as ``stats.extras['strength']``, filled by the
:class:`PairStrengthColumn` supplier from the batch's examples.

Source: the authors' repository OpenLMLab/MOSS-RLHF at 4865d826fc6705dfdf1894aede00b4c81dabb24b trains plain
Bradley-Terry reward models (``rm/reward_trainer.py``, ``RewardTrainer._criterion``) and publishes the annotated
data, not the strength computation: eq. 4 is implemented from the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..suppliers.base import Supplier, register_supplier

COLUMN, STD_COLUMN = "strength", "strength_std"


@dataclass
class PairStrength:
    """Per-pair strength: ``mean`` and ``std`` ``[N]`` (P67 eq. 4) and the members' margins ``margins`` ``[M, N]``."""

    mean: torch.Tensor
    std: torch.Tensor
    margins: torch.Tensor


def strength_from_margins(margins: torch.Tensor) -> PairStrength:
    """P67 eq. 4 from the margins ``d`` ``[M, N]`` (model m, pair i): mean and population std over models."""
    d = torch.as_tensor(margins).float()
    if d.dim() != 2 or d.shape[0] < 1:
        raise ValueError(f"margins must be [M, N] with M >= 1 models, got shape {tuple(d.shape)}")
    return PairStrength(d.mean(0), d.std(0, correction=0), d)


def pair_strength(models: Any, prompts: Sequence[Any], chosen: Sequence[Any],
                  rejected: Sequence[Any]) -> PairStrength:
    """The strength of pairs ``(prompts[i], chosen[i], rejected[i])`` under M reward models.

    ``models``: a :class:`~preftune.reward.RewardEnsemble`, a list of scorers (anything with
    ``score(prompts, responses)``), or a list of saved reward-model directories. Every member scores every
    chosen and rejected response once (batched, no gradient)."""
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen and {len(rejected)} rejected responses")
    ens = as_ensemble(models)
    n = len(prompts)
    if n == 0:
        z = torch.zeros(0)
        return PairStrength(z, z, torch.zeros(len(ens), 0))
    members = ens.score(list(prompts) * 2, list(chosen) + list(rejected)).members
    return strength_from_margins(members[:, :n] - members[:, n:])


def as_ensemble(models: Any) -> Any:
    """A :class:`~preftune.reward.RewardEnsemble` of ``models``: itself, scorers, or reward-model directories."""
    from .ensemble import RewardEnsemble

    if isinstance(models, RewardEnsemble):
        return models
    if isinstance(models, (str, Path)):
        models = [models]
    models = list(models)
    if models and all(isinstance(m, (str, Path)) for m in models):
        return RewardEnsemble.from_pretrained(models)
    return RewardEnsemble(models)


def strength_of_pairs(models: Any, pairs: Sequence[Any]) -> PairStrength:
    """:func:`pair_strength` of :class:`~preftune.data.types.PairExample` s (or anything with ``prompt``,
    ``chosen``, ``rejected``)."""
    return pair_strength(models, [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])


def weakest(strength: torch.Tensor, *, below: float | None = None, fraction: float | None = None) -> torch.Tensor:
    """Bool ``[N]``: the pairs to flip (P67 sec. 2.4.1) -- those with ``strength < below`` (the paper flips
    ``mu < 0``), or the ``round(fraction * N)`` weakest (the paper's "bottom 20%"; ties broken by position)."""
    s = torch.as_tensor(strength).float()
    if (below is None) == (fraction is None):
        raise ConfigError("give one of below (a strength threshold) or fraction (a share of pairs)")
    if below is not None:
        return s < below
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction}")
    k = round(fraction * s.numel())
    out = torch.zeros(s.numel(), dtype=torch.bool)
    out[torch.sort(s, stable=True).indices[:k]] = True
    return out


def flip_pairs(pairs: Sequence[Any], flip: Sequence[bool], strength: torch.Tensor | None = None) -> list[Any]:
    """The pairs with chosen and rejected swapped where ``flip`` (P67's "Flip"); a pair's extras keep their keys,
    with ``strength`` negated (it is measured towards the label) and ``score_chosen``/``score_rejected`` swapped.
    With ``strength`` given, every returned pair carries it (negated where flipped) as ``extras['strength']``."""
    from ..data.types import PairExample

    out = []
    for i, (p, f) in enumerate(zip(pairs, flip)):
        ex = dict(p.extras)
        if strength is not None:
            ex[COLUMN] = float(strength[i])
        if f:
            if COLUMN in ex:
                ex[COLUMN] = -ex[COLUMN]
            if "score_chosen" in ex and "score_rejected" in ex:
                ex["score_chosen"], ex["score_rejected"] = ex["score_rejected"], ex["score_chosen"]
            if "margin" in ex:
                ex["margin"] = -ex["margin"]
            out.append(PairExample(p.prompt, p.rejected, p.chosen, row=p.row, source=p.source, extras=ex))
        else:
            out.append(PairExample(p.prompt, p.chosen, p.rejected, row=p.row, source=p.source, extras=ex))
    return out


def with_strength(pairs: Sequence[Any], strength: PairStrength | torch.Tensor) -> list[Any]:
    """The pairs with ``extras['strength']`` (and ``strength_std`` when given a :class:`PairStrength`), the form in
    which :class:`PairStrengthColumn` hands them to the robust objectives through the Python API."""
    from ..data.types import PairExample

    mean = strength.mean if isinstance(strength, PairStrength) else torch.as_tensor(strength)
    std = strength.std if isinstance(strength, PairStrength) else None
    if mean.numel() != len(pairs):
        raise ValueError(f"{mean.numel()} strengths for {len(pairs)} pairs")
    out = []
    for i, p in enumerate(pairs):
        ex = {**p.extras, COLUMN: float(mean[i])}
        if std is not None:
            ex[STD_COLUMN] = float(std[i])
        out.append(PairExample(p.prompt, p.chosen, p.rejected, row=p.row, source=p.source, extras=ex))
    return out


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[bool] | torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the positives ``labels``: the probability that a random
    positive scores above a random negative, ties counting 1/2 (Mann-Whitney U over average ranks). NaN
    without both classes."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(labels, dtype=torch.bool).reshape(-1)
    if s.numel() != y.numel():
        raise ValueError(f"{s.numel()} scores for {y.numel()} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    i = 0
    n = s.numel()
    while i < n:   # average ranks over ties (1-based)
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def flip_detection_auroc(strength: torch.Tensor, flipped: Sequence[bool] | torch.Tensor) -> float:
    """How well low strength finds flipped labels: :func:`auroc` of ``-strength`` against the flip indicator
    (1 = every flipped pair is weaker than every clean one, 0.5 = chance)."""
    return auroc(-torch.as_tensor(strength, dtype=torch.float64), flipped)


@register_supplier
class PairStrengthColumn(Supplier):
    """``strength`` ``[B]``: each pair's preference strength (P67 eq. 4), a column of the data.

    Taken from the batch when its collator carried the column, else from the batch's examples'
    ``extras['strength']`` (pairs built with :func:`with_strength` or :func:`flip_pairs`, passed to the trainer as
    ``train_examples``). Checked before training: every example must carry it."""

    provides = (COLUMN,)

    def prepare(self, objective: Any, reference: Any, train_items: Sequence[Any], other_items: Sequence[Any],
                pad_id: int, device: Any) -> dict[str, Any] | None:
        for what, items in (("training", train_items), ("evaluation", other_items)):
            missing = [getattr(it, "row", i) for i, it in enumerate(items) if COLUMN not in it.extras]
            if missing:
                raise ConfigError(
                    f"objective '{objective.name}' needs each pair's preference strength ('{COLUMN}'); "
                    f"{len(missing)} {what} pairs lack it (first rows {missing[:5]}): compute it with "
                    "preftune.reward.strength (with_strength) and pass the pairs as train_examples "
                    "(docs/reward-strength.md)")
        return None

    def supply(self, stats: Any, step: Any) -> None:
        if COLUMN in stats.extras:
            return
        items, _ = step.need_items(f"the '{COLUMN}' column")
        missing = [it.row for it in items if COLUMN not in it.extras]
        if missing:
            raise ConfigError(f"objective '{step.objective.name}' needs '{COLUMN}'; rows {missing[:5]} lack it")
        stats.extras[COLUMN] = torch.tensor([float(it.extras[COLUMN]) for it in items],
                                            dtype=stats.chosen_scores.dtype, device=stats.chosen_scores.device)


__all__ = ["COLUMN", "PairStrength", "PairStrengthColumn", "STD_COLUMN", "as_ensemble", "auroc", "flip_detection_auroc",
           "flip_pairs", "pair_strength", "strength_from_margins", "strength_of_pairs", "weakest", "with_strength"]
