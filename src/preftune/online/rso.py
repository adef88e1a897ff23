"""RSO's statistical rejection sampling (P34, Liu et al. 2024, "Statistical Rejection Sampling Improves Preference
Optimization", Algorithm 1): draw responses from the SFT policy and accept each with probability
``exp((r(x, y) - r_max) / beta)``, so that the accepted ones follow ``pi_sft(y|x) exp(r(x, y) / beta)`` -- the
optimal policy's distribution -- instead of pi_sft's. Pairs of accepted responses, labelled by the reward, train
the sigmoid (``dpo``) or hinge (``hinge``) loss (the paper's RSO-sigmoid and RSO-hinge).

``preftune online --algo rso`` runs it in rounds (one round is the paper's setting): K candidates per prompt from
the round's policy, two accepted by rejection sampling, the better-scored one chosen.

Authors' code: none public (searched GitHub for RSO / "statistical rejection sampling"); the sampler follows the
paper's Algorithm 1, checked by hand in ``tests/test_online_objectives.py::test_rso_rejection_sampling_by_hand``.
"""
from __future__ import annotations

import math
import random
from typing import Sequence


def rso_accept(rewards: Sequence[float | None], m: int, beta: float, rng: random.Random) -> list[int]:
    """Indices of up to ``m`` candidates accepted by statistical rejection sampling (P34 Algorithm 1): in random
    order, each remaining candidate is accepted with probability ``exp((r_i - r_max) / beta)``, ``r_max`` the
    largest remaining reward; an accepted candidate leaves the pool (sampling without replacement), and passes
    repeat until ``m`` are accepted or the pool is empty. Unscored candidates (None) are never accepted."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pool = [i for i, r in enumerate(rewards) if r is not None]
    accepted: list[int] = []
    while len(accepted) < m and pool:
        r_max = max(rewards[i] for i in pool)  # type: ignore[type-var]
        order = pool[:]
        rng.shuffle(order)
        for i in order:
            if rng.random() < math.exp((rewards[i] - r_max) / beta):  # type: ignore[operator]
                accepted.append(i)
                pool.remove(i)
                break
    return accepted


__all__ = ["rso_accept"]
