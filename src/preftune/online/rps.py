"""Robust Preference Selection (P09 RPS; Mao, Shi, Gu, Wei 2025, "Robust Preference Alignment via Directional
Neighborhood Consensus", arXiv 2510.20498, ICLR 2026): training-free, at inference.

A user's preference is a unit direction ``v`` over reward dimensions (P09's preference space: ``v = (cos t, sin t)`` over
helpfulness and verbosity), a response's quality for that user the projected reward ``v^T r(x, y)``. A model
conditioned on the direction (the direction written into the prompt, as DPA does) serves directions near the centre
of its training data well and the others worse (the "preference coverage gap"). RPS does not ask for ``v`` alone:

1. neighbourhood: ``k`` directions ``v_1..v_k`` within the angle ``theta_max`` of ``v`` (P09: ``k = 5``,
   ``theta_max = 30 deg``);
2. generation: one response ``y_i ~ pi(. | x, v_i)`` per direction;
3. consensus selection: ``y* = argmax_i v^T r(x, y_i)`` -- scored for the user's own direction (P09 Phase 3).

The baseline it is compared with (P09's "strong baseline", the same compute) draws the ``k`` responses all from
``pi(. | x, v)`` and keeps the best by the same score: :func:`robust_preference_selection` with
``neighbourhood="same"``.

Authors' code: rcmao/Robust_Preference_Selection (the paper names github.com/rcmao/robust-preference-alignment,
not stored here): ``utils/directions.py`` ``get_angle_perturbations`` and ``build_dpa_input`` (commit
045d358665e8d19a8f3235e501c8d5022d8614a4), ``rps/rps_generation.py`` and ``scoring/best_selection.py``
``pick_best`` (commit c718278a601353ebfb17b71b7af010a0ebdaccf5). The neighbourhood there is not random: angles
on a 5-degree grid inside a fixed range (``[-40, 40]`` deg), those within ``theta_max`` of the target, the ``k``
closest -- :func:`grid_neighbours`. The paper says the k directions are *sampled* within ``theta_max``:
:func:`sample_neighbours` (uniform angle, any number of dimensions). The conditioning prompt is the authors'
``build_dpa_input``: :func:`dpa_prompt`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError

Direction = tuple[float, ...]


def unit(direction: Sequence[float]) -> Direction:
    """``v / |v|``; a zero or non-finite vector is refused (a preference direction must point somewhere)."""
    v = [float(x) for x in direction]
    n = math.sqrt(sum(x * x for x in v))
    if len(v) < 2 or not math.isfinite(n) or n == 0:
        raise ConfigError(f"a preference direction needs >= 2 finite weights, not all 0; got {list(direction)}")
    return tuple(x / n for x in v)


def angle_between(u: Sequence[float], v: Sequence[float]) -> float:
    """The angle between two directions, in degrees (``arccos`` of the cosine, clipped to [-1, 1])."""
    a, b = unit(u), unit(v)
    return math.degrees(math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b))))))


def direction_at(angle_deg: float) -> Direction:
    """The 2-D direction ``(cos t, sin t)`` of P09's preference space (t in degrees)."""
    t = math.radians(angle_deg)
    return (math.cos(t), math.sin(t))


def to_simplex(direction: Sequence[float]) -> Direction:
    """A nonnegative direction as weights that sum to 1 (the same ranking of responses: a positive rescaling)."""
    v = [float(x) for x in direction]
    if any(x < 0 for x in v) or sum(v) <= 0:
        raise ConfigError(f"to_simplex needs nonnegative weights with a positive sum, got {v}")
    s = sum(v)
    return tuple(x / s for x in v)


def _check(k: int, theta_max: float) -> None:
    if k < 1:
        raise ConfigError(f"k (directions in the neighbourhood) must be >= 1, got {k}")
    if not 0 <= theta_max <= 180:
        raise ConfigError(f"theta_max must be in [0, 180] degrees, got {theta_max}")


def grid_neighbours(direction: Sequence[float], k: int = 5, theta_max: float = 30.0, *, step: float = 5.0,
                    angle_range: tuple[float, float] = (-40.0, 40.0)) -> list[Direction]:
    """The authors' neighbourhood (2-D): the angles ``lo, lo + step, ..., <= hi`` of ``angle_range``, those within
    ``theta_max`` of ``direction``, the ``k`` closest to it (nearest first; equal distances: the smaller angle
    first). ``angle_range`` bounds the directions the model is asked for (the authors': [-40, 40] deg); the target
    itself is among them when it lies on the grid. Fewer than ``k`` when the grid has fewer within reach."""
    _check(k, theta_max)
    v = unit(direction)
    if len(v) != 2:
        raise ConfigError(f"grid_neighbours is the 2-D scheme of P09; got a {len(v)}-D direction "
                          "(use sample_neighbours)")
    lo, hi = angle_range
    if step <= 0 or hi < lo:
        raise ConfigError(f"grid needs step > 0 and angle_range lo <= hi, got step {step}, range {angle_range}")
    angles = [lo + i * step for i in range(int(math.floor((hi - lo) / step + 1e-9)) + 1)]
    near = [(angle_between(direction_at(a), v), a) for a in angles]
    # distances rounded so that the two grid angles equally far away (in exact arithmetic) tie, smaller first
    near = sorted((round(d, 9), a) for d, a in near if d <= theta_max + 1e-9)
    return [direction_at(a) for _, a in near[:k]]


def sample_neighbours(direction: Sequence[float], k: int = 5, theta_max: float = 30.0, *, seed: int = 0,
                      nonnegative: bool = False, max_tries: int = 10_000) -> list[Direction]:
    """``k`` unit directions at angles drawn uniformly from ``[0, theta_max]`` to ``direction`` (P09 Phase 1),
    each tilted towards a random direction orthogonal to it: ``cos(t) v + sin(t) u`` (in 2-D: an angle offset
    uniform in ``[-theta_max, theta_max]``). ``nonnegative``: weights of the simplex's quadrant only (a direction
    with a negative weight is drawn again). Deterministic for a ``seed``."""
    _check(k, theta_max)
    v = unit(direction)
    if nonnegative and any(x < 0 for x in v):
        raise ConfigError(f"nonnegative neighbours of a direction with a negative weight ({list(direction)})")
    rng = random.Random(f"rps-{seed}")
    out: list[Direction] = []
    for _ in range(max_tries):
        if len(out) == k:
            return out
        g = [rng.gauss(0.0, 1.0) for _ in v]
        dot = sum(a * b for a, b in zip(g, v))
        u = [a - dot * b for a, b in zip(g, v)]  # the component orthogonal to v: the way to tilt
        norm = math.sqrt(sum(x * x for x in u))
        if norm < 1e-12:
            continue
        t = math.radians(rng.uniform(0.0, theta_max))
        w = tuple(math.cos(t) * a + math.sin(t) * b / norm for a, b in zip(v, u))
        if nonnegative and any(x < 0 for x in w):
            continue
        out.append(w)
    if len(out) < k:
        raise ConfigError(f"found {len(out)} of {k} nonnegative directions within {theta_max} deg of "
                          f"{list(direction)} in {max_tries} draws")
    return out


def projected_scores(rewards: Sequence[Sequence[float]], direction: Sequence[float]) -> list[float]:
    """``s_i = v^T r(x, y_i)`` for each candidate's reward vector ``r(x, y_i)`` (P09 Phase 3). ``v`` is used as
    given (a unit direction or simplex weights: either ranks the candidates the same)."""
    v = [float(x) for x in direction]
    out = []
    for i, r in enumerate(rewards):
        if len(r) != len(v):
            raise ConfigError(f"candidate {i} has {len(r)} reward dimensions, the direction {len(v)}")
        out.append(sum(a * b for a, b in zip(v, r)))
    return out


def select(rewards: Sequence[Sequence[float]], direction: Sequence[float]) -> int:
    """The index of ``argmax_i v^T r(x, y_i)``; the first one on a tie."""
    if not rewards:
        raise ConfigError("no candidates to select from")
    s = projected_scores(rewards, direction)
    return max(range(len(s)), key=lambda i: (s[i], -i))


def dpa_prompt(prompt: str, direction: Sequence[float], names: Sequence[str] = ("helpfulness", "verbosity")) -> str:
    """The authors' conditioning (``build_dpa_input``, after DPA): the weights as integers ``round(100 v_j)`` in an
    instruction before the user's prompt."""
    if len(names) != len(direction):
        raise ConfigError(f"{len(direction)} weights but {len(names)} names")
    rating = " + ".join(f"{n}*{int(round(100 * w))}" for n, w in zip(names, direction))
    return f"You are a helpful assistant. Your response should maximize weighted rating = {rating}.\n\n{prompt}"


@dataclass
class Candidate:
    direction: Direction           # the direction the response was generated for
    response: str
    rewards: list[float]           # r(x, y): one value per reward function
    score: float                   # v_user^T r(x, y)


@dataclass
class Selection:
    prompt: str
    response: str                  # the selected candidate's
    score: float
    index: int                     # into candidates
    candidates: list[Candidate] = field(default_factory=list)


def neighbourhood_of(direction: Sequence[float], mode: str, *, k: int, theta_max: float, seed: int,
                     step: float = 5.0, angle_range: tuple[float, float] = (-40.0, 40.0),
                     nonnegative: bool = False) -> list[Direction]:
    """The ``k`` directions to generate from: ``grid`` (the authors'), ``sample`` (the paper's wording) or
    ``same`` (the baseline: ``v`` itself ``k`` times)."""
    if mode == "grid":
        return grid_neighbours(direction, k, theta_max, step=step, angle_range=angle_range)
    if mode == "sample":
        return sample_neighbours(direction, k, theta_max, seed=seed, nonnegative=nonnegative)
    if mode == "same":
        _check(k, theta_max)
        return [unit(direction)] * k
    raise ConfigError(f"neighbourhood must be grid, sample or same, got {mode!r}")


def robust_preference_selection(model: Any, tokenizer: Any, prompts: Sequence[str], direction: Sequence[float],
                                reward_fns: Sequence[Callable[..., Any]], *, k: int = 5, theta_max: float = 30.0,
                                neighbourhood: str = "grid", step: float = 5.0,
                                angle_range: tuple[float, float] = (-40.0, 40.0), nonnegative: bool = False,
                                format_prompt: Callable[[str, Direction], Any] = dpa_prompt,
                                max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                                top_k: int = 0, seed: int = 0, batch_size: int = 64) -> list[Selection]:
    """RPS (P09 Algorithm: neighbourhood -> one response per direction -> ``argmax_i v^T r(x, y_i)``) for each
    prompt; ``neighbourhood="same"`` is the baseline (k responses for ``v`` itself, the same selection).

    ``reward_fns``: one function per reward dimension, called as TRL calls reward functions,
    ``fn(prompts=[...], completions=[...])`` with the user's prompts (not the conditioned ones); ``direction``: the
    user's weights over them (normalised to unit length, P09's convention). ``format_prompt(prompt, v_i)`` writes a
    direction into the prompt (default: :func:`dpa_prompt`; a list of chat messages is rendered with the
    tokenizer's chat template). Generation is :func:`preftune.models.generate.generate`, seeded."""
    from ..models.generate import generate
    from .rewards import FunctionReward, checked_scores

    if not prompts:
        raise ConfigError("no prompts")
    if len(reward_fns) != len(direction):
        raise ConfigError(f"{len(reward_fns)} reward functions for a direction of {len(direction)} weights: "
                          "give one function per reward dimension")
    v = unit(direction)
    dirs = neighbourhood_of(v, neighbourhood, k=k, theta_max=theta_max, seed=seed, step=step,
                            angle_range=angle_range, nonnegative=nonnegative)
    if not dirs:
        raise ConfigError(f"no grid direction of angle_range {angle_range} (step {step}) lies within "
                          f"{theta_max} deg of {list(direction)}")
    ids = [_encode(tokenizer, format_prompt(p, d)) for p in prompts for d in dirs]
    gens = generate(model, tokenizer, ids, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, top_k=top_k, seed=seed, batch_size=batch_size)
    texts = tokenizer.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
    users = [p for p in prompts for _ in dirs]
    per_dim = [checked_scores(FunctionReward(fn), users, texts, {}, step=0) for fn in reward_fns]
    for fn, dim in zip(reward_fns, per_dim):
        if None in dim:  # every dimension must score every candidate: v^T r needs all of r
            i = dim.index(None)
            raise ConfigError(f"reward function {getattr(fn, '__name__', fn)} returned None for candidate "
                              f"{i % len(dirs)} of prompt {users[i]!r}; RPS needs a number for every dimension")
    out = []
    for i, p in enumerate(prompts):
        cands = []
        for j, d in enumerate(dirs):
            r = [float(dim[i * len(dirs) + j]) for dim in per_dim]
            cands.append(Candidate(d, texts[i * len(dirs) + j], r, projected_scores([r], v)[0]))
        best = select([c.rewards for c in cands], v)
        out.append(Selection(p, cands[best].response, cands[best].score, best, cands))
    return out


def _encode(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, list):  # chat messages
        out = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)
        return list(out["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


__all__ = ["Candidate", "Selection", "angle_between", "direction_at", "dpa_prompt", "grid_neighbours",
           "neighbourhood_of", "projected_scores", "robust_preference_selection", "sample_neighbours", "select",
           "to_simplex", "unit"]
