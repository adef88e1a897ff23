"""Preference models over trajectory segments: partial return against regret (P59, Knox et al. 2022).

>>> import torch
>>> from preftune.reward.gridworld import random_gridworld
>>> from preftune.reward.regret import sample_segments, label_pairs, fit_reward
>>> world = random_gridworld(seed=0)
>>> g = torch.Generator().manual_seed(0)
>>> s1, s2 = sample_segments(world, 300, 3, g), sample_segments(world, 300, 3, g)
>>> y = label_pairs(world, s1, s2, model="regret", generator=g)       # synthetic "human" following P_regret
>>> w_regret = fit_reward(world, s1, s2, y, model="regret")          # learned reward weights [F]
>>> w_pr = fit_reward(world, s1, s2, y, model="partial_return")

Paper: W. Bradley Knox, Stephane Hatgis-Kessell, Serena Booth, Scott Niekum, Peter Stone, Alessandro Allievi,
"Models of human preference for learning reward functions" (arXiv:2206.02231, TMLR 2024). A segment
``sigma = (s_0, a_0, s_1, ..., s_k)`` of a deterministic MDP and a reward ``r``:

* partial return model: ``P_Sr(sigma1 > sigma2) = logistic(Sr(sigma1) - Sr(sigma2))`` with the partial return
  ``Sr(sigma) = sum_t r(s_t, a_t)``;
* regret model: ``P_regret(sigma1 > sigma2) = logistic(regret(sigma2) - regret(sigma1))`` with, for deterministic
  transitions, ``regret_d(sigma) = V*_r(s_0) - (Sr(sigma) + V*_r(s_k))``, which equals
  ``sum_t [V*_r(s_t) - Q*_r(s_t, a_t)]`` (the sum of the optimal advantages' negatives) by telescoping.

The paper's tasks are undiscounted (``gamma = 1``); here ``gamma`` is the world's discount and enters both models
the same way, ``Sr = sum_t gamma^t r_t`` and ``regret_d = V*(s_0) - Sr - gamma^k V*(s_k)`` (equal to the paper's at
``gamma = 1``). The telescoping identity holds for every ``gamma`` (tested).

Learning under the regret model needs ``V*`` of the reward being learned. The paper approximates it with successor
features of a fixed set of policies and a soft maximum over them (generalised policy improvement); here it is
computed exactly and differentiably (:func:`preftune.reward.gridworld.optimal_values`: policy iteration finds the
optimal policy, then ``V* = (I - gamma P_pi)^{-1} r_pi`` is a linear solve autograd differentiates -- the gradient of
value iteration run to convergence), which a tabular world affords.
The authors' code: Stephanehk/Regret_Based_Reward_Learning,
``Reward_Learning/models.py``, ``RewardFunctionRegret.forward`` / ``get_vals`` (successor features, softmax over
policies at temperature 0.001) and ``RewardFunctionPR.forward``, commit 0a7c1415ae04217b4b22cc7ad46a9d3c09a2b44c.
Both models there are linear rewards over features, fitted by the logistic loss, as here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .gridworld import GridWorld, optimal_policy, optimal_values

MODELS = ("partial_return", "regret")


@dataclass
class Segments:
    """``states[N, k+1]`` and ``actions[N, k]`` (long) of N segments of length k."""

    states: torch.Tensor
    actions: torch.Tensor

    def __len__(self) -> int:
        return int(self.states.shape[0])


def sample_segments(world: GridWorld, n: int, length: int, generator: torch.Generator) -> Segments:
    """``n`` segments of ``length`` uniformly random actions from uniformly random non-terminal start states."""
    if n < 1 or length < 1:
        raise ConfigError(f"n and length must be >= 1, got n={n}, length={length}")
    live = torch.nonzero(~world.terminal).squeeze(1)
    s = live[torch.randint(len(live), (n,), generator=generator)]
    acts = torch.randint(world.n_actions, (n, length), generator=generator)
    states = [s]
    for t in range(length):
        s = world.next_state[s, acts[:, t]]
        states.append(s)
    return Segments(torch.stack(states, dim=1), acts)


def partial_return(world: GridWorld, rewards: torch.Tensor, seg: Segments) -> torch.Tensor:
    """``[N]`` partial returns ``sum_t gamma^t r(s_t, a_t)`` (P59, the partial return; undiscounted at gamma=1)."""
    k = seg.actions.shape[1]
    disc = world.gamma ** torch.arange(k, dtype=rewards.dtype)
    return (rewards[seg.states[:, :-1], seg.actions] * disc).sum(dim=1)


def regret(world: GridWorld, rewards: torch.Tensor, seg: Segments, v: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` deterministic regret ``V*(s_0) - (Sr(sigma) + gamma^k V*(s_k))`` (P59, regret_d), ``V*`` of
    ``rewards`` (:func:`~preftune.reward.gridworld.optimal_values`) unless given."""
    if v is None:
        v, _ = optimal_values(world, rewards)
    k = seg.actions.shape[1]
    return v[seg.states[:, 0]] - partial_return(world, rewards, seg) - world.gamma ** k * v[seg.states[:, -1]]


def regret_from_advantages(world: GridWorld, rewards: torch.Tensor, seg: Segments) -> torch.Tensor:
    """``[N]`` regret as ``sum_t gamma^t [V*(s_t) - Q*(s_t, a_t)]`` (P59, the general form); equals :func:`regret`
    for deterministic transitions."""
    v, q = optimal_values(world, rewards)
    k = seg.actions.shape[1]
    disc = world.gamma ** torch.arange(k, dtype=rewards.dtype)
    adv = v[seg.states[:, :-1]] - q[seg.states[:, :-1], seg.actions]
    return (adv * disc).sum(dim=1)


def preference_logits(world: GridWorld, rewards: torch.Tensor, seg1: Segments, seg2: Segments,
                      model: str, *, policy: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` logits of ``P(sigma1 > sigma2)``: ``Sr1 - Sr2`` (partial return) or ``regret2 - regret1`` (regret)."""
    if model == "partial_return":
        return partial_return(world, rewards, seg1) - partial_return(world, rewards, seg2)
    if model == "regret":
        v, _ = optimal_values(world, rewards, policy=policy)
        return regret(world, rewards, seg2, v) - regret(world, rewards, seg1, v)
    raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")


def label_pairs(world: GridWorld, seg1: Segments, seg2: Segments, *, model: str = "regret",
                generator: torch.Generator) -> torch.Tensor:
    """``[N]`` labels in {0, 1} (1: sigma1 preferred) drawn from the preference model under the world's true
    reward: a synthetic annotator that is stochastic exactly as the model says."""
    p = torch.sigmoid(preference_logits(world, world.true_reward(), seg1, seg2, model))
    return (torch.rand(p.shape, generator=generator, dtype=p.dtype) < p).to(torch.float64)


def fit_reward(world: GridWorld, seg1: Segments, seg2: Segments, labels: torch.Tensor, *, model: str,
               steps: int = 200, lr: float = 0.2) -> torch.Tensor:
    """Linear reward weights ``[F]`` (from zeros) minimising the logistic loss of ``labels`` under ``model``,
    full batch Adam. Under the regret model each step computes V* of the current reward (warm-started policy
    iteration, one differentiable solve) and backpropagates through it."""
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if steps < 1 or lr <= 0:
        raise ConfigError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    w = torch.zeros(world.features.shape[-1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    pi = None
    for _ in range(steps):
        r = world.rewards(w)
        if model == "regret":
            pi = optimal_policy(world, r, init=pi)   # the last step's optimal policy: one or two solves from there
        logits = preference_logits(world, r, seg1, seg2, model, policy=pi)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()
