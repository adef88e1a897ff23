"""A small deterministic gridworld for learning rewards from segment preferences (P59, Knox et al. 2022).

>>> from preftune.reward.gridworld import random_gridworld, optimal_values
>>> world = random_gridworld(seed=0)                         # 6x6, the delivery-like cell types below
>>> v, q = optimal_values(world, world.true_reward())        # V*[S], Q*[S, A], differentiable

The world follows the shape of the paper's "delivery domain" (Knox et al., "Models of human preference for
learning reward functions", arXiv:2206.02231, Sec. 5): a grid of cells, each of one *type*; four moves; the reward
of a transition is linear in a one-hot feature of the cell it enters, ``r(s, a, s') = w . phi(s')``; some cell types
end the episode. Here the types are ``blank`` (a step, -1), ``mud`` (a costly step, -5), ``goal`` (+20, terminal)
and ``pit`` (-20, terminal). Moving into the border leaves the agent in place (and still costs the cell it is in).
A terminal cell is absorbing: every action from it stays there with reward 0 and features 0, so a segment that
reaches a terminal cell keeps going with zero-reward transitions, as in the paper's segments that end the episode.

Everything is deterministic given the seed; tensors are float64, so V* is exact to ~1e-12.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

CELL_TYPES = ("blank", "mud", "goal", "pit")
TRUE_WEIGHTS = (-1.0, -5.0, 20.0, -20.0)
TERMINAL_TYPES = ("goal", "pit")
ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))   # up, down, left, right (row, col)


@dataclass
class GridWorld:
    """A deterministic tabular MDP with linear rewards.

    ``next_state[S, A]`` (long), ``features[S, A, F]`` (the one-hot type of the cell entered; zero out of a terminal
    cell), ``terminal[S]`` (bool), ``cells[S]`` (the type index of each cell), ``weights[F]`` (the true reward),
    ``gamma`` (discount; 1 is the paper's undiscounted episodic setting)."""

    height: int
    width: int
    cells: torch.Tensor
    next_state: torch.Tensor
    features: torch.Tensor
    terminal: torch.Tensor
    weights: torch.Tensor
    gamma: float = 0.95

    @property
    def n_states(self) -> int:
        return self.height * self.width

    @property
    def n_actions(self) -> int:
        return len(ACTIONS)

    def rewards(self, weights: torch.Tensor) -> torch.Tensor:
        """``r[S, A] = features[S, A] . weights``: differentiable in ``weights``."""
        return self.features.to(weights.dtype) @ weights

    def true_reward(self) -> torch.Tensor:
        return self.rewards(self.weights)


def make_gridworld(layout: list[str], *, weights=TRUE_WEIGHTS, gamma: float = 0.95) -> GridWorld:
    """A world from a text layout, one string per row: ``.`` blank, ``m`` mud, ``G`` goal, ``P`` pit."""
    codes = {".": 0, "m": 1, "G": 2, "P": 3}
    if not layout or len({len(r) for r in layout}) != 1:
        raise ConfigError("layout must be a non-empty list of equally long rows")
    bad = sorted({c for r in layout for c in r} - set(codes))
    if bad:
        raise ConfigError(f"layout has unknown cell codes {bad}; allowed: . m G P")
    if not 0 < gamma <= 1:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
    h, w = len(layout), len(layout[0])
    cells = torch.tensor([codes[c] for r in layout for c in r], dtype=torch.long)
    n_types = len(CELL_TYPES)
    term_idx = [CELL_TYPES.index(t) for t in TERMINAL_TYPES]
    terminal = torch.isin(cells, torch.tensor(term_idx))
    nxt = torch.zeros(h * w, len(ACTIONS), dtype=torch.long)
    feats = torch.zeros(h * w, len(ACTIONS), n_types, dtype=torch.float64)
    for s in range(h * w):
        r, c = divmod(s, w)
        for a, (dr, dc) in enumerate(ACTIONS):
            if terminal[s]:
                nxt[s, a] = s            # absorbing, reward 0
                continue
            rr, cc = min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)
            s2 = rr * w + cc
            nxt[s, a] = s2
            feats[s, a, cells[s2]] = 1.0
    wt = torch.as_tensor(weights, dtype=torch.float64)
    if wt.shape != (n_types,):
        raise ConfigError(f"weights must have {n_types} entries ({', '.join(CELL_TYPES)}), got {tuple(wt.shape)}")
    return GridWorld(h, w, cells, nxt, feats, terminal, wt, float(gamma))


def random_gridworld(seed: int = 0, *, size: int = 6, p_mud: float = 0.25, n_pits: int = 2,
                     gamma: float = 0.95) -> GridWorld:
    """A ``size`` x ``size`` world with one goal, ``n_pits`` pits and mud on a fraction ``p_mud`` of the rest,
    placed by a seeded generator (the same seed gives the same world)."""
    if size < 3:
        raise ConfigError(f"size must be >= 3, got {size}")
    if not 0 <= p_mud < 1:
        raise ConfigError(f"p_mud must be in [0, 1), got {p_mud}")
    if not 0 <= n_pits <= size * size - 2:
        raise ConfigError(f"n_pits must be in [0, size*size - 2], got {n_pits}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(size * size, generator=g).tolist()
    kinds = ["."] * (size * size)
    kinds[order[0]] = "G"
    for s in order[1:1 + n_pits]:
        kinds[s] = "P"
    mud = torch.rand(size * size, generator=g) < p_mud
    for s in order[1 + n_pits:]:
        if mud[s]:
            kinds[s] = "m"
    layout = ["".join(kinds[r * size:(r + 1) * size]) for r in range(size)]
    return make_gridworld(layout, gamma=gamma)


def _policy_values(world: GridWorld, rewards: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``V_pi[S]`` of a deterministic policy ``pi[S]``: ``V = (I - gamma P_pi)^{-1} r_pi`` over the non-terminal
    states (terminal cells have value 0), one linear solve, differentiable in ``rewards``."""
    live = ~world.terminal
    idx = torch.nonzero(live).squeeze(1)
    pos = torch.full((world.n_states,), -1, dtype=torch.long)
    pos[idx] = torch.arange(len(idx))
    nxt = world.next_state[idx, pi[idx]]
    to_live = live[nxt]
    p = torch.zeros(len(idx), len(idx), dtype=rewards.dtype)
    p[torch.arange(len(idx))[to_live], pos[nxt[to_live]]] = 1.0     # moves into a terminal cell add value 0
    eye = torch.eye(len(idx), dtype=rewards.dtype)
    v_live = torch.linalg.solve(eye - world.gamma * p, rewards[idx, pi[idx]])
    return torch.zeros(world.n_states, dtype=rewards.dtype).index_put((idx,), v_live)


def optimal_policy(world: GridWorld, rewards: torch.Tensor, *, init: torch.Tensor | None = None,
                   max_iterations: int = 100) -> torch.Tensor:
    """An optimal deterministic policy ``pi[S]`` of ``rewards[S, A]`` by policy iteration (exact for a finite MDP),
    from ``init`` when given (a nearby reward's policy converges in one or two solves). An action is only replaced
    by a strictly better one, so ties keep the lowest-index or the earlier action and the iteration terminates."""
    with torch.no_grad():
        r = rewards.detach()
        pi = r.argmax(dim=1) if init is None else init.clone()
        for _ in range(max_iterations):
            v = _policy_values(world, r, pi)
            q = r + world.gamma * v[world.next_state]
            keep = q.gather(1, pi[:, None]).squeeze(1) >= q.max(dim=1).values - 1e-9
            new = torch.where(keep, pi, q.argmax(dim=1))
            if torch.equal(new, pi):
                return pi
            pi = new
    raise RuntimeError(f"policy iteration did not converge in {max_iterations} iterations")


def optimal_values(world: GridWorld, rewards: torch.Tensor, *,
                   policy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``V*[S]`` and ``Q*[S, A]`` of reward ``rewards[S, A]`` (Bellman optimality: ``Q(s,a) = r(s,a) +
    gamma * V(s')``, ``V(s) = max_a Q(s,a)``), differentiable in ``rewards``.

    :func:`optimal_policy` finds an optimal policy pi without gradient (``policy`` warm-starts it); then ``V*`` is
    recomputed as pi's value, ``V = (I - gamma P_pi)^{-1} r_pi``, a linear solve that autograd differentiates.
    Where the optimal policy is unique this is exactly V*, and its gradient is that of differentiable value
    iteration run to convergence (the arg-max is locally constant), at the cost of one solve instead of hundreds
    of recorded sweeps. Terminal cells have value 0.

    Needs ``gamma < 1``, or policies that end the episode from every state, for the solves to exist."""
    pi = optimal_policy(world, rewards, init=policy)
    v_all = _policy_values(world, rewards, pi)
    return v_all, rewards + world.gamma * v_all[world.next_state]


def greedy_optimal_fraction(world: GridWorld, learned_weights: torch.Tensor, *, tol: float = 1e-6) -> float:
    """Fraction of non-terminal states where the greedy action of the learned reward's Q* is optimal under the
    true reward (``Q*_true(s, a) >= V*_true(s) - tol``). Ties in the learned Q* are broken by the lowest action."""
    _, q_learned = optimal_values(world, world.rewards(learned_weights.detach().to(torch.float64)))
    v_true, q_true = optimal_values(world, world.true_reward())
    a = q_learned.argmax(dim=1)
    ok = q_true.gather(1, a[:, None]).squeeze(1) >= v_true - tol
    live = ~world.terminal
    return float(ok[live].double().mean())
