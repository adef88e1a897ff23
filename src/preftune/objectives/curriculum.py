"""Curry-DPO (P35, Pattnaik et al. 2024, "Curry-DPO: Enhancing Alignment using Curriculum Learning &
Ranked Preferences", sec. 3): several ranked pairs per prompt from ranked data, ordered easy -> hard.

:func:`curriculum_pairs` turns each :class:`~preftune.data.types.RankedExample` into pairs and gives each
a difficulty; :class:`CurriculumSampler` yields pair indices stage by stage (easiest stage first,
shuffled within a stage); :func:`curriculum_stages` gives the stages as separate pair lists.

What P35 does (paper, sec. 3 and Fig. 1; no authors' code is public -- only the pairs, released as the
Hugging Face data set ServiceNow-AI/Curriculum_DPO_preferences): responses R1 > R2 > R3 > R4 ranked by
their rating; the chosen response is always R1; the pairs (R1, R4), (R1, R3), (R1, R2) are ordered by
their rating difference, largest (easiest) first; *iteration* i trains DPO on the i-th easiest pair of
every prompt, and the model trained in iteration i becomes the *reference model* of iteration i + 1.
``pairing='best_vs_rest'`` with ``criterion='score_gap'`` gives exactly these pairs and iterations
(stage i = iteration i).

Difference, said plainly: :class:`CurriculumSampler` orders the pairs of *one* training run -- the
reference stays the initial model throughout (a non-iterative curriculum). P35's iterative
reference update is a property of the training loop, not of a sampler: to reproduce it, train one run per
stage of :func:`curriculum_stages`, each starting from and using as its reference the previous stage's
final model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from ..data.types import PairExample, RankedExample
from ..errors import ConfigError

PAIRINGS = ("best_vs_rest", "all")
CRITERIA = ("score_gap", "rank_gap", "custom")


@dataclass(frozen=True)
class CurriculumPair:
    pair: PairExample
    difficulty: float  # lower is easier
    stage: int  # 0 = easiest stage


def curriculum_pairs(examples: Sequence[RankedExample], pairing: str = "best_vs_rest",
                     criterion: str = "score_gap", num_stages: int | None = None,
                     difficulty_fn: Callable[[RankedExample, int, int], float] | None = None) -> list[CurriculumPair]:
    """Build ranked pairs (chosen = higher score) with a difficulty and a stage.

    * ``pairing='best_vs_rest'``: the top response against every other one (P35's main setting,
      K-1 pairs per prompt); ``'all'``: every pair with different scores.
    * ``criterion``: ``'score_gap'`` -- difficulty = minus the score difference (a large quality gap is
      easy); ``'rank_gap'`` -- minus the rank difference; ``'custom'`` -- ``difficulty_fn(example, i, j)``
      (e.g. the reference model's margin, P35's other criterion).
    * stages: with ``best_vs_rest`` the stage of a pair is the rank of its rejected response counted
      from the bottom (the best-vs-worst pairs of every prompt form stage 0); otherwise pairs are cut
      into ``num_stages`` (default 3) equal-size groups by difficulty.

    The score difference is kept as ``extras['margin']`` so margin-aware objectives can use it.
    """
    if pairing not in PAIRINGS:
        raise ConfigError(f"pairing '{pairing}' is not allowed; one of {', '.join(PAIRINGS)}")
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion '{criterion}' is not allowed; one of {', '.join(CRITERIA)}")
    if criterion == "custom" and difficulty_fn is None:
        raise ConfigError("criterion 'custom' needs difficulty_fn(example, chosen_index, rejected_index)")
    out: list[tuple[PairExample, float, int]] = []
    for ex in examples:
        order = sorted(range(len(ex.scores)), key=lambda k: -ex.scores[k])  # best first
        rank = {k: r for r, k in enumerate(order)}
        if pairing == "best_vs_rest":
            cand = [(order[0], k) for k in order[1:] if ex.scores[k] < ex.scores[order[0]]]
        else:
            cand = [(i, j) for i in order for j in order if ex.scores[i] > ex.scores[j]]
        for i, j in cand:
            if criterion == "score_gap":
                d = -(ex.scores[i] - ex.scores[j])
            elif criterion == "rank_gap":
                d = -float(rank[j] - rank[i])
            else:
                d = float(difficulty_fn(ex, i, j))  # type: ignore[misc]
            stage = len(order) - 1 - rank[j]  # worst response -> stage 0
            pair = PairExample(ex.prompt, ex.completions[i], ex.completions[j], row=ex.row, source=ex.source,
                               extras={**ex.extras, "margin": float(ex.scores[i] - ex.scores[j])})
            out.append((pair, d, stage))
    if pairing != "best_vs_rest" or criterion == "custom":
        n = num_stages or 3
        rank_of = sorted(range(len(out)), key=lambda i: out[i][1])  # stable: ties keep input order
        stage_of = {i: pos * n // max(len(out), 1) for pos, i in enumerate(rank_of)}
        out = [(p, d, stage_of[i]) for i, (p, d, _) in enumerate(out)]
    return [CurriculumPair(p, d, s) for p, d, s in out]


class CurriculumSampler:
    """Indices of ``pairs`` stage by stage (stage 0 first); within a stage ordered by difficulty
    (``shuffle_within_stage=False``) or shuffled with ``seed``. One pass = one curriculum epoch."""

    def __init__(self, pairs: Sequence[CurriculumPair], shuffle_within_stage: bool = True, seed: int = 0):
        self.pairs, self.shuffle, self.seed, self.epoch = list(pairs), shuffle_within_stage, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        for stage in sorted({p.stage for p in self.pairs}):
            idx = [i for i, p in enumerate(self.pairs) if p.stage == stage]
            if self.shuffle:
                idx = [idx[k] for k in torch.randperm(len(idx), generator=g).tolist()]
            else:
                idx.sort(key=lambda i: self.pairs[i].difficulty)
            yield from idx


def curriculum_stages(pairs: Sequence[CurriculumPair]) -> list[list[PairExample]]:
    """The pairs of each stage, easiest stage first (P35's iterations): stage i's pairs in input order.
    For P35's iterative Curry-DPO train one run per stage, each from and against the previous stage's model."""
    stages = sorted({p.stage for p in pairs})
    return [[p.pair for p in pairs if p.stage == s] for s in stages]
