"""P59 regret preference model (issue 14): the gridworld's values by hand, partial return and regret in closed form
on a corridor, the telescoping identity, the paper's identifiability example, gradients through V*, and a small
learning check where the regret model recovers the optimal policy."""
from __future__ import annotations

import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward.gridworld import (greedy_optimal_fraction, make_gridworld, optimal_policy, optimal_values,
                                       random_gridworld)
from preftune.reward.regret import (Segments, fit_reward, label_pairs, partial_return, preference_logits, regret,
                                    regret_from_advantages, sample_segments)

G = 0.9
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def corridor():
    # states 0 1 2 3 (blank) and 4 (goal); true weights blank -1, mud -5, goal +20, pit -20
    return make_gridworld(["....G"], gamma=G)


def seg(states, actions):
    return Segments(torch.tensor([states]), torch.tensor([actions]))


def test_corridor_values_by_hand():
    world = corridor()
    v, q = optimal_values(world, world.true_reward())
    # from state 3 one step right enters the goal: 20; from s, d = 4 - s steps: -1 - G - ... + G^(d-1) * 20
    for s in range(4):
        d = 4 - s
        expect = sum(-G ** t for t in range(d - 1)) + G ** (d - 1) * 20
        assert v[s].item() == pytest.approx(expect, abs=1e-9)
    assert v[4].item() == 0.0                                   # terminal
    # Q(2, left) = -1 + G * V(1)
    assert q[2, LEFT].item() == pytest.approx(-1 + G * v[1].item(), abs=1e-9)
    # bumping the wall at state 0 stays there and costs a blank step
    assert q[0, LEFT].item() == pytest.approx(-1 + G * v[0].item(), abs=1e-9)
    assert optimal_policy(world, world.true_reward())[:4].tolist() == [RIGHT] * 4


def test_partial_return_and_regret_closed_form():
    world = corridor()
    r = world.true_reward()
    v, _ = optimal_values(world, r)
    vh = [sum(-G ** t for t in range(3 - s)) + G ** (3 - s) * 20 for s in range(4)] + [0.0]
    # sigma1: 1 -> 2 -> 3 (right, right); sigma2: 1 -> 0 -> 0 (left, left: the second bumps the wall)
    s1, s2 = seg([1, 2, 3], [RIGHT, RIGHT]), seg([1, 0, 0], [LEFT, LEFT])
    pr1, pr2 = -1 + G * -1, -1 + G * -1          # every step enters a blank cell: equal partial returns
    assert partial_return(world, r, s1).item() == pytest.approx(pr1)
    assert partial_return(world, r, s2).item() == pytest.approx(pr2)
    reg1 = vh[1] - (pr1 + G ** 2 * vh[3])
    reg2 = vh[1] - (pr2 + G ** 2 * vh[0])
    assert reg1 == pytest.approx(0.0, abs=1e-9)                  # optimal segment: zero regret
    assert regret(world, r, s1).item() == pytest.approx(reg1, abs=1e-9)
    assert regret(world, r, s2).item() == pytest.approx(reg2, abs=1e-9)
    assert reg2 > 1.0
    # the two models disagree on this pair: partial return is indifferent, regret prefers sigma1
    assert preference_logits(world, r, s1, s2, "partial_return").item() == pytest.approx(0.0, abs=1e-12)
    assert preference_logits(world, r, s1, s2, "regret").item() == pytest.approx(reg2 - reg1, abs=1e-9)
    # a segment entering the goal then staying (absorbing, zero reward)
    s3 = seg([3, 4, 4], [RIGHT, UP])
    assert partial_return(world, r, s3).item() == pytest.approx(20.0)
    assert regret(world, r, s3).item() == pytest.approx(vh[3] - 20.0, abs=1e-9)


def test_regret_equals_sum_of_negative_advantages():
    world = random_gridworld(seed=3, size=5, gamma=0.9)
    g = torch.Generator().manual_seed(0)
    segs = sample_segments(world, 64, 4, g)
    w = torch.tensor([-0.3, -2.0, 5.0, -7.0], dtype=torch.float64)
    a = regret(world, world.rewards(w), segs)
    b = regret_from_advantages(world, world.rewards(w), segs)
    assert torch.allclose(a, b, atol=1e-9)
    assert bool((a >= -1e-9).all())             # regret is never negative


def test_optimal_values_satisfy_bellman_and_match_value_iteration():
    world = random_gridworld(seed=1, size=5, gamma=0.9)
    r = world.rewards(torch.tensor([0.5, -1.0, 3.0, -4.0], dtype=torch.float64))   # positive steps: loops pay
    v, q = optimal_values(world, r)
    vi = torch.zeros(world.n_states, dtype=torch.float64)
    for _ in range(250):
        vi = (r + world.gamma * vi[world.next_state]).max(1).values * (~world.terminal)
    assert torch.allclose(v, vi, atol=1e-8)
    assert torch.allclose(q.max(1).values * (~world.terminal), v, atol=1e-9)


def test_gradient_of_regret_logit_through_values():
    # d/dw of V*(s) for a unique optimal policy is the discounted count of features along it: check by hand on
    # the corridor, where from state 1 the optimal path enters blank, blank, goal.
    world = corridor()
    w = world.weights.clone().requires_grad_(True)
    v, _ = optimal_values(world, world.rewards(w))
    v[1].backward()
    assert w.grad.tolist() == pytest.approx([1 + G, 0.0, G ** 2, 0.0])


def test_identifiability_constant_shift():
    """P59's identifiability example: adding a constant c to every reward changes the optimal policy (with a
    terminal state, a large enough c makes staying away from the goal pay), yet leaves every partial-return
    preference between equal-length segments unchanged -- so no amount of partial-return data tells r from r + c.
    Regret preferences do change, so data generated by the regret model identifies the reward."""
    world = corridor()
    c = 10.0
    r, r_shift = world.rewards(world.weights), world.rewards(world.weights + c)
    pi, pi_shift = optimal_policy(world, r), optimal_policy(world, r_shift)
    assert pi[:4].tolist() == [RIGHT] * 4
    assert pi_shift[3] != RIGHT                           # +9 a step forever (90) beats the goal's +30 once
    segs = []
    for s0 in range(4):
        for a0 in range(4):
            for a1 in range(4):
                s1 = int(world.next_state[s0, a0])
                if s1 != 4:                                 # no zero-reward transition out of the goal
                    segs.append(([s0, s1, int(world.next_state[s1, a1])], [a0, a1]))
    pairs = [(i, j) for i in range(len(segs)) for j in range(len(segs))]
    one = Segments(torch.tensor([segs[i][0] for i, _ in pairs]), torch.tensor([segs[i][1] for i, _ in pairs]))
    two = Segments(torch.tensor([segs[j][0] for _, j in pairs]), torch.tensor([segs[j][1] for _, j in pairs]))
    p_pr = torch.sigmoid(preference_logits(world, r, one, two, "partial_return"))
    p_pr_shift = torch.sigmoid(preference_logits(world, r_shift, one, two, "partial_return"))
    assert torch.allclose(p_pr, p_pr_shift, atol=1e-12)
    p_rg = torch.sigmoid(preference_logits(world, r, one, two, "regret"))
    p_rg_shift = torch.sigmoid(preference_logits(world, r_shift, one, two, "regret"))
    assert (p_rg - p_rg_shift).abs().max().item() > 0.5


def test_regret_is_shift_invariant_without_terminal_states():
    # the limit case: with no terminal cell, V* shifts by c / (1 - gamma) everywhere and regret does not change,
    # and neither does the optimal policy -- the shift is then harmless
    world = make_gridworld(["..m", ".m.", "..."], gamma=G)
    g = torch.Generator().manual_seed(0)
    segs = sample_segments(world, 32, 3, g)
    a = regret(world, world.rewards(world.weights), segs)
    b = regret(world, world.rewards(world.weights + 4.0), segs)
    assert torch.allclose(a, b, atol=1e-8)


def test_labels_follow_the_model_probability():
    # two suboptimal segments from the corridor: sigma1 = 1 -> 1 -> 1 (up, up: bumps the wall twice),
    # sigma2 = 2 -> 3 -> 2 (right, left); both enter blank cells only, so equal partial returns
    world = corridor()
    n = 4000
    s1 = Segments(torch.tensor([[1, 1, 1]] * n), torch.tensor([[UP, UP]] * n))
    s2 = Segments(torch.tensor([[2, 3, 2]] * n), torch.tensor([[RIGHT, LEFT]] * n))
    v1 = -1 - G + G ** 2 * 20          # V*(1): blank, blank, goal
    v2 = -1 + G * 20                   # V*(2): blank, goal
    pr = -1 - G
    reg1 = v1 - pr - G ** 2 * v1
    reg2 = v2 - pr - G ** 2 * v2
    p = 1 / (1 + math.exp(-(reg2 - reg1)))
    assert 0.55 < p < 0.7
    y = label_pairs(world, s1, s2, model="regret", generator=torch.Generator().manual_seed(0))
    assert y.mean().item() == pytest.approx(p, abs=0.025)
    y_pr = label_pairs(world, s1, s2, model="partial_return", generator=torch.Generator().manual_seed(0))
    assert y_pr.mean().item() == pytest.approx(0.5, abs=0.025)


def test_bad_arguments():
    world = corridor()
    with pytest.raises(ConfigError, match="model must be one of"):
        preference_logits(world, world.true_reward(), seg([0, 1], [RIGHT]), seg([0, 1], [RIGHT]), "bt")
    with pytest.raises(ConfigError, match="gamma"):
        make_gridworld(["..G"], gamma=0.0)
    with pytest.raises(ConfigError, match="unknown cell codes"):
        make_gridworld(["..X"])


@pytest.mark.slow
def test_regret_model_learns_the_optimal_policy_where_partial_return_does_not():
    # one row of benchmarks/reward/regret_gridworld.py (seed 2, 30 pairs): fitted to the same regret-model labels,
    # the partial-return model cannot pin the constant shift down and learns a positive step reward (wandering
    # pays); the regret model recovers the optimal policy
    torch.set_num_threads(1)
    world = random_gridworld(seed=2, size=7, p_mud=0.4, n_pits=4, gamma=0.9)
    g = torch.Generator().manual_seed(1002)
    s1, s2 = sample_segments(world, 300, 3, g), sample_segments(world, 300, 3, g)
    y = label_pairs(world, s1, s2, model="regret", generator=g)
    n = 30
    s1, s2, y = Segments(s1.states[:n], s1.actions[:n]), Segments(s2.states[:n], s2.actions[:n]), y[:n]
    w_pr = fit_reward(world, s1, s2, y, model="partial_return")
    frac_regret = greedy_optimal_fraction(world, fit_reward(world, s1, s2, y, model="regret"))
    frac_pr = greedy_optimal_fraction(world, w_pr)
    assert w_pr[0].item() > 0                   # blank step learned as a reward
    assert frac_regret >= 0.95
    assert frac_pr < 0.5
