"""Turning scored samples into preference data: pairs, ranked lists and unpaired examples.

The annotator scores each sample with ``task.preference_score`` (the true reward unless the
task models a biased annotator). Per prompt the best and the worst sample make a pair
(``pairs="best_worst"``) or every two samples with different scores do (``pairs="all"``).

Label noise: exactly ``round(noise * n_pairs)`` pairs, chosen by a seeded RNG, have chosen and
rejected swapped; their score columns stay as they were, so a flipped pair looks like any other
(the annotator was wrong and confident: the higher score goes with the label). Every pair carries ``score_chosen``, ``score_rejected`` and
``margin = score_chosen - score_rejected`` in ``extras`` (P19 MADPO and other
strength-aware objectives read them).

Labelling by a reward model (``ArenaConfig(labeller="reward_model")``): :func:`rescore` replaces every
sample's score by a learned scorer's (anything with ``score(prompts, responses) -> [N]``: a
:class:`~preftune.reward.RewardModel` or an ensemble's ``as_reward_model()``), and the same
:func:`label` makes the pairs; :func:`pair_accuracy` measures a scorer against pairs labelled by the
true reward.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..data.types import PairExample, RankedExample, UnpairedExample


@dataclass
class PreferenceData:
    pairs: list[PairExample]
    ranked: list[RankedExample]
    flipped: list[int] = field(default_factory=list)   # indices into pairs whose label was flipped
    ties_dropped: int = 0

    def unpaired(self) -> list[UnpairedExample]:
        """Each pair as two thumbs: chosen desirable, rejected undesirable (KTO/BCO-style data)."""
        out = []
        for i, p in enumerate(self.pairs):
            out.append(UnpairedExample(p.prompt, p.chosen, True, row=2 * i, source=p.source))
            out.append(UnpairedExample(p.prompt, p.rejected, False, row=2 * i + 1, source=p.source))
        return out

    def for_kind(self, kind: str) -> list:
        return {"pair": self.pairs, "unpaired": self.unpaired(), "list": self.ranked}[kind]


def make_pairs(scored: Sequence[Sequence[tuple[str, str, float]]], *, mode: str = "best_worst",
               keep_ties: bool = False, source: str = "arena") -> tuple[list[PairExample], int]:
    """``scored[i]`` is a prompt's samples as ``(prompt, response, score)``. Returns ``(pairs, ties)``
    where ``ties`` counts the prompts (best_worst) or pairs (all) with equal scores.

    A kept tie is labelled with the first sample as chosen and has margin 0.
    """
    if mode not in ("best_worst", "all"):
        raise ValueError(f"pairs mode must be 'best_worst' or 'all', got {mode!r}")
    pairs: list[PairExample] = []
    ties = 0

    def add(p: str, a: tuple, b: tuple) -> None:
        pairs.append(PairExample(p, a[1], b[1], row=len(pairs), source=source,
                                 extras={"score_chosen": float(a[2]), "score_rejected": float(b[2]),
                                         "margin": float(a[2] - b[2])}))

    for group in scored:
        if not group:
            continue
        prompt = group[0][0]
        if mode == "best_worst":
            # stable: among equal scores the earliest sample wins "best", the latest "worst"
            best = max(group, key=lambda s: s[2])
            worst = min(reversed(group), key=lambda s: s[2])
            if best[2] == worst[2]:
                ties += 1
                if not keep_ties or best is worst:
                    continue
                best, worst = group[0], group[-1]
            add(prompt, best, worst)
        else:
            for i in range(len(group)):
                for j in range(i + 1, len(group)):
                    a, b = group[i], group[j]
                    if a[2] == b[2]:
                        ties += 1
                        if not keep_ties:
                            continue
                    elif a[2] < b[2]:
                        a, b = b, a
                    add(prompt, a, b)
    return pairs, ties


def flip_labels(pairs: list[PairExample], noise: float, seed: int) -> tuple[list[PairExample], list[int]]:
    """Swap chosen and rejected in exactly ``round(noise * len(pairs))`` pairs (scores stay with the label)."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    k = round(noise * len(pairs))
    idx = sorted(random.Random(f"flip-{seed}").sample(range(len(pairs)), k))
    out = list(pairs)
    for i in idx:
        p = pairs[i]
        out[i] = PairExample(p.prompt, p.rejected, p.chosen, row=p.row, source=p.source, extras=dict(p.extras))
    return out, idx


def make_ranked(scored: Sequence[Sequence[tuple[str, str, float]]], *, source: str = "arena") -> list[RankedExample]:
    """Every prompt's samples, best first, with their scores; prompts whose samples all tie are left out."""
    out = []
    for group in scored:
        if len({s[2] for s in group}) < 2:
            continue
        g = sorted(group, key=lambda s: -s[2])
        out.append(RankedExample(g[0][0], tuple(s[1] for s in g), tuple(float(s[2]) for s in g),
                                 row=len(out), source=source))
    return out


def label(scored: Sequence[Sequence[tuple[str, str, float]]], *, noise: float = 0.0, seed: int = 0,
          mode: str = "best_worst", keep_ties: bool = False) -> PreferenceData:
    pairs, ties = make_pairs(scored, mode=mode, keep_ties=keep_ties)
    pairs, flipped = flip_labels(pairs, noise, seed)
    return PreferenceData(pairs, make_ranked(scored), flipped, 0 if keep_ties else ties)


def rescore(scored: Sequence[Sequence[tuple[str, str, Any]]], scorer: Any) -> list[list[tuple[str, str, float]]]:
    """The same samples (``scored[i]``: a prompt's ``(prompt, response, score)``) with the score replaced by
    ``scorer.score(prompts, responses)`` -- one batched call for all of them."""
    flat = [(p, r) for group in scored for p, r, _ in group]
    if not flat:
        return [[] for _ in scored]
    values = [float(v) for v in scorer.score([p for p, _ in flat], [r for _, r in flat])]
    out, i = [], 0
    for group in scored:
        out.append([(p, r, values[i + j]) for j, (p, r, _) in enumerate(group)])
        i += len(group)
    return out


def pair_accuracy(scorer: Any, pairs: Sequence[PairExample]) -> float:
    """Share of ``pairs`` whose chosen response ``scorer`` scores strictly above the rejected one (a tie counts
    as wrong, as TRL's reward accuracy does); NaN without pairs."""
    if not pairs:
        return float("nan")
    prompts = [p.prompt for p in pairs]
    c = scorer.score(prompts, [p.chosen for p in pairs])
    r = scorer.score(prompts, [p.rejected for p in pairs])
    return sum(float(a) > float(b) for a, b in zip(c, r)) / len(pairs)
