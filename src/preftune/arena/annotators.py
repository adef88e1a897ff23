"""Annotators for arena preference data: who decides which of two answers is better.

An arena task's own annotator is :meth:`Task.preference_score` (the true reward unless the task models a biased
annotator). For reward-model scaling (P57 WorldPM, :mod:`preftune.reward.scaling`) the same answers are labelled
by two annotators side by side:

* ``objective`` -- the task's true reward: a well-defined answer, like WorldPM's *objective* benchmarks;
* ``style`` -- a *style-biased* annotator that mixes the true reward with a surface feature of the answer,
  ``s(x, y) = (1 - w) * r(x, y) + w * f(y)`` -- like the subjective benchmarks WorldPM finds do not scale, whose
  labels carry style preferences (length, formatting) next to correctness (P57, sec. 3.3 and 4).

Surface features (``f``), each in [0, 1] for the arena's short answers:

* ``length``: answer length in characters over 16 (capped at 1): "longer is better";
* ``digits``: share of the answer's characters that are digits or letters of ``"aeiou"`` -- a feature with no
  relation to the task;
* ``first_low``: 1 when the answer starts with a character at or below ``"4"`` (or ``"m"``), else 0.

:class:`StyleSortTask` (``sort_style``, registered with :func:`~preftune.arena.tasks.register_task`) is ``sort``
whose arena pairs are labelled by the style annotator, for ``run_arena`` and the other arena tools.

``temperature > 0`` makes an annotator stochastic: a pair is labelled ``a > b`` with probability
``sigmoid((s_a - s_b) / temperature)`` (the Bradley-Terry model of the annotator; seeded), instead of by the
larger score.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from ..data.types import PairExample
from ..errors import ConfigError
from .tasks import SortTask, Task, register_task

FEATURES: dict[str, Callable[[str], float]] = {
    "length": lambda y: min(len(y), 16) / 16,
    "digits": lambda y: sum(c in "aeiou13579" for c in y) / max(1, len(y)),
    "first_low": lambda y: float(bool(y) and (y[0] <= "4" or "a" <= y[0] <= "m")),
}


@dataclass(frozen=True)
class Annotator:
    """Scores an answer: ``(1 - style_weight) * task.reward + style_weight * FEATURES[feature](response)``.

    ``style_weight = 0`` is the objective annotator (the true reward). ``temperature`` > 0 samples each label from
    the annotator's Bradley-Terry model instead of taking the higher score (see the module docstring)."""

    name: str
    style_weight: float = 0.0
    feature: str = "length"
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.style_weight <= 1.0:
            raise ConfigError(f"annotator '{self.name}': style_weight must be in [0, 1], got {self.style_weight}")
        if self.feature not in FEATURES:
            raise ConfigError(f"annotator '{self.name}': unknown feature '{self.feature}'; "
                              f"available: {', '.join(sorted(FEATURES))}")
        if self.temperature < 0:
            raise ConfigError(f"annotator '{self.name}': temperature must be >= 0, got {self.temperature}")

    def score(self, task: Task, prompt: str, response: str) -> float:
        r = task.reward(prompt, response)
        if not self.style_weight:
            return r
        return (1 - self.style_weight) * r + self.style_weight * FEATURES[self.feature](response)

    def label(self, task: Task, prompt: str, a: str, b: str, rng: random.Random) -> tuple[str, str] | None:
        """``(chosen, rejected)`` for answers ``a`` and ``b``; None for a tie of a deterministic annotator."""
        sa, sb = self.score(task, prompt, a), self.score(task, prompt, b)
        if self.temperature:
            p = 1.0 / (1.0 + math.exp(-(sa - sb) / self.temperature))
            return (a, b) if rng.random() < p else (b, a)
        if sa == sb:
            return None
        return (a, b) if sa > sb else (b, a)


def objective_annotator() -> Annotator:
    return Annotator("objective")


def style_annotator(weight: float = 0.5, feature: str = "length", temperature: float = 0.0) -> Annotator:
    return Annotator("style", weight, feature, temperature)


def annotate_pairs(task: Task, groups: Sequence[Sequence[tuple[str, str]]], annotator: Annotator, *,
                   seed: int = 0, source: str = "arena") -> list[PairExample]:
    """One pair per prompt: ``groups[i]`` is a prompt's answers as ``(prompt, response)``; the first two distinct
    answers that the annotator does not tie on make the pair (so every pair comes from its own prompt and pairs
    are independent). Each pair's extras hold ``true_reward_chosen`` and ``true_reward_rejected``."""
    rng = random.Random(f"annotate-{annotator.name}-{seed}")
    out: list[PairExample] = []
    for group in groups:
        answers = list(dict.fromkeys(r for _, r in group))
        picked = None
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                picked = annotator.label(task, group[0][0], answers[i], answers[j], rng)
                if picked:
                    break
            if picked:
                break
        if picked:
            p = group[0][0]
            out.append(PairExample(p, picked[0], picked[1], row=len(out), source=source,
                                   extras={"true_reward_chosen": task.reward(p, picked[0]),
                                           "true_reward_rejected": task.reward(p, picked[1])}))
    return out


@register_task
class StyleSortTask(SortTask):
    """``sort`` labelled by the style-biased annotator: the true reward is :class:`SortTask`'s, but
    :meth:`preference_score` -- what labels the arena's pairs -- is ``(1 - w) * reward + w * f(response)``
    (:class:`Annotator`; default ``w = 0.9`` on ``length``, which agrees with the true reward on about 78% of pairs
    of the arena's SFT answers). For arena runs whose preference data carries a style bias (P57 WorldPM's
    subjective annotators)."""

    name = "sort_style"
    description = "sort, labelled by an annotator biased toward long answers (0.1 * true reward + 0.9 * length/16)"

    def __init__(self, min_len: int = 3, max_len: int = 6, demo_accuracy: float = 0.5, style_weight: float = 0.9,
                 style_feature: str = "length"):
        super().__init__(min_len, max_len, demo_accuracy)
        self.style_weight, self.style_feature = style_weight, style_feature
        self._annotator = Annotator("style", style_weight, style_feature)

    def preference_score(self, prompt: str, response: str) -> float:
        return self._annotator.score(self, prompt, response)
