"""EGPO (P47): the online IPO loss against hand computations, the preference gaps, the extragradient step against a
hand-written extragradient (mirror-prox) recursion on rock-paper-scissors -- where it converges in the last
iterate and plain mirror descent cycles --, the optimizer-state restore, and a short run on a tiny model."""
import json
import math

import pytest

from helpers.e_vs_o import p_e, prefer_e  # noqa: F401  (prefer_e: loaded by name, --preference-fn FILE:prefer_e)
import torch

from preftune.errors import ConfigError
from preftune.objectives import build as build_objective
from preftune.objectives.base import PairStats
from preftune.online.egpo import extragradient_step, preference_gaps

# rock, paper, scissors: P[i, j] = P(answer_i > answer_j)
RPS = torch.tensor([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]], dtype=torch.float64)
REF = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)


# ----------------------------------------------------------------------------- the loss


def _stats(pw, pl, rw, rl, gap):
    return PairStats(policy_chosen_logps=torch.tensor(pw, requires_grad=True),
                     policy_rejected_logps=torch.tensor(pl, requires_grad=True),
                     reference_chosen_logps=torch.tensor(rw), reference_rejected_logps=torch.tensor(rl),
                     margin=torch.tensor(gap))


def test_online_ipo_loss_by_hand():
    tau = 0.5
    out = build_objective("egpo", tau=tau)(_stats([-1.0, -2.0], [-1.5, -1.0], [-1.2, -1.5], [-1.2, -1.5],
                                                  [0.3, -0.1]))
    # pair 0: policy log-ratio 0.5, pi_ref's 0.0, target gap / tau = 0.6 -> (0.5 - 0 - 0.6)^2
    # pair 1: policy log-ratio -1.0, pi_ref's 0.0, target -0.2 -> (-1.0 + 0.2)^2
    assert out.loss.tolist() == pytest.approx([(0.5 - 0.6) ** 2, (-1.0 + 0.2) ** 2])
    out2 = build_objective("egpo", tau=0.1)(_stats([-1.0], [-3.0], [-2.0], [-1.0], [0.05]))
    # log-ratio 2.0 minus pi_ref's -1.0 = 3.0; target 0.05 / 0.1 = 0.5
    assert out2.loss.item() == pytest.approx((3.0 - 0.5) ** 2)


def test_online_ipo_gradient_raises_the_sample_that_wins_more_and_vanishes_at_the_target():
    s = _stats([-1.0], [-1.0], [-1.0], [-1.0], [0.4])
    build_objective("egpo", tau=1.0)(s).loss.sum().backward()
    assert s.policy_chosen_logps.grad.item() < 0 < s.policy_rejected_logps.grad.item()  # descent raises y
    at = _stats([-1.0 + 0.4 / 0.2], [-1.0], [-1.0], [-1.0], [0.4])
    assert build_objective("egpo", tau=0.2)(at).loss.item() == pytest.approx(0.0, abs=1e-12)
    # swapping y and y' (and the sign of the gap) changes nothing: the pair's order is immaterial
    a = build_objective("egpo", tau=0.3)(_stats([-1.0], [-2.5], [-1.1], [-2.0], [0.2])).loss.item()
    b = build_objective("egpo", tau=0.3)(_stats([-2.5], [-1.0], [-2.0], [-1.1], [-0.2])).loss.item()
    assert a == pytest.approx(b)


def test_egpo_objective_needs_the_gap_and_a_positive_tau():
    s = _stats([-1.0], [-1.0], [-1.0], [-1.0], [0.0])
    s.margin = None
    with pytest.raises(ValueError, match="margin"):
        build_objective("egpo")(s)
    with pytest.raises(ConfigError, match="tau"):
        build_objective("egpo", tau=0.0)


# ----------------------------------------------------------------------------- the preference gaps


def test_preference_gaps_from_a_preference_function_and_from_a_reward():
    def prefer(prompts, a, b):  # 'x' beats anything else 0.8; unjudgeable if either side is '?'
        return [None if "?" in (u, v) else 0.5 if (u == "x") == (v == "x") else (0.8 if u == "x" else 0.2)
                for u, v in zip(a, b)]

    g = preference_gaps(prefer, None, ["p0", "p1"], ["x", "a"], ["b", "?"], ["b", "x", "?", "c"], 2, step=1)
    # prompt 0: opponents b, x: P(x > .) = 0.8, 0.5; P(b > .) = 0.5, 0.2 -> (0.65) - (0.35)
    # prompt 1: y' = '?' is never judged -> no opponent with both judgements -> None
    assert g[0] == pytest.approx(0.3) and g[1] is None

    class Reward:
        def parts(self, prompts, texts, columns, *, step, on_bad, skipped):
            return [float(len(t)) for t in texts], {}

    g = preference_gaps(None, Reward(), ["p"], ["aaa"], ["a"], ["aa"], 1, step=1)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  (Bradley-Terry of the length rewards)
    assert g[0] == pytest.approx(sig(3 - 2) - sig(1 - 2))


# ----------------------------------------------------------------------------- the extragradient step


def _tabular(tau, lr, opt="sgd"):
    """A softmax policy over r/p/s, the exact online IPO loss with mu uniform over all ordered pairs (the authors'
    ``online_ipo_1``), opponents' win rates ``P(y > pi)`` at the policy when sampled."""
    theta = torch.nn.Parameter(REF.log().clone())
    optimizer = torch.optim.SGD([theta], lr=lr) if opt == "sgd" else torch.optim.Adam([theta], lr=lr)

    def sample():
        return RPS @ torch.softmax(theta.detach(), 0)  # P(y > pi_now) for each y

    def loss_fn(win):
        lp = torch.log_softmax(theta, 0)
        pol = lp[:, None] - lp[None, :]
        ref = REF.log()[:, None] - REF.log()[None, :]
        return ((pol - ref - (win[:, None] - win[None, :]) / tau) ** 2).mean()

    return theta, optimizer, sample, loss_fn


def _mirror(pi, opp, eta, tau):
    """pi^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > opp)), normalised: the step P47 takes twice."""
    w = pi.pow(1 - eta * tau) * REF.pow(eta * tau) * torch.exp(eta * (RPS @ opp))
    return w / w.sum()


def _exploit(pi):
    return float((RPS @ pi).max() - 0.5)


def test_one_sgd_step_on_the_online_ipo_loss_is_the_mirror_descent_step():
    tau, eta = 0.1, 2.0
    theta, opt, sample, loss_fn = _tabular(tau, lr=3 * eta * tau / 4)  # eta tau = 4 lr / |Y|
    pi = REF.clone()
    for _ in range(4):
        extragradient_step([theta], opt, sample, loss_fn, half_step=False)
        pi = _mirror(pi, pi, eta, tau)
        assert torch.softmax(theta.detach(), 0).tolist() == pytest.approx(pi.tolist(), abs=1e-9)


def test_extragradient_step_is_the_hand_written_extragradient_and_not_mirror_descent():
    tau, eta = 0.05, 2.0
    theta, opt, sample, loss_fn = _tabular(tau, lr=3 * eta * tau / 4)
    pi = omd = REF.clone()
    for _ in range(6):
        extragradient_step([theta], opt, sample, loss_fn)
        half = _mirror(pi, pi, eta, tau)      # pi_{t+1/2}: against pi_t
        pi = _mirror(pi, half, eta, tau)      # pi_{t+1}: from pi_t, against pi_{t+1/2}
        omd = _mirror(omd, omd, eta, tau)
    got = torch.softmax(theta.detach(), 0)
    assert got.tolist() == pytest.approx(pi.tolist(), abs=1e-9)
    assert (got - omd).abs().max() > 0.05  # skipping the half step (mirror descent) lands elsewhere


def test_extragradient_converges_in_the_last_iterate_where_mirror_descent_cycles():
    tau, eta = 0.02, 2.0
    runs = {}
    for half in (True, False):
        theta, opt, sample, loss_fn = _tabular(tau, lr=3 * eta * tau / 4)
        ex = []
        for _ in range(300):
            extragradient_step([theta], opt, sample, loss_fn, half_step=half)
            ex.append(_exploit(torch.softmax(theta.detach(), 0)))
        runs[half] = ex
    # the regularised Nash policy's exploitability (tau = 0.02) is about 0.016; SFT's 0.23
    assert max(runs[True][-100:]) < 0.02
    assert max(runs[False][-100:]) > 0.1 and min(runs[False][-100:]) < max(runs[False][-100:]) - 0.05


def test_the_full_step_starts_from_the_saved_parameters_and_optimizer_state():
    tau, lr = 0.1, 0.05
    theta, opt, sample, loss_fn = _tabular(tau, lr, opt="adam")
    theta0 = theta.detach().clone()
    extragradient_step([theta], opt, sample, loss_fn)
    # by hand: the half step (one Adam step from a fresh state) gives theta_half; the full step's gradient is the
    # loss against pi_half's win rates, taken at theta0, applied by a *first* Adam step
    g_half = torch.autograd.functional.jacobian(
        lambda t: _loss_at(t, RPS @ torch.softmax(theta0, 0), tau), theta0)
    theta_half = theta0 - lr * g_half / (g_half.abs() + 1e-8)   # Adam's first step: lr * m_hat / (sqrt(v_hat) + eps)
    g = torch.autograd.functional.jacobian(lambda t: _loss_at(t, RPS @ torch.softmax(theta_half, 0), tau), theta0)
    st = opt.state[theta]
    assert int(st["step"]) == 1  # one step survives, not two
    assert st["exp_avg"].tolist() == pytest.approx((0.1 * g).tolist(), rel=1e-9, abs=1e-12)
    assert theta.detach().tolist() == pytest.approx((theta0 - lr * g / (g.abs() + 1e-8)).tolist(), abs=1e-9)


def _loss_at(t, win, tau):
    lp = torch.log_softmax(t, 0)
    pol, ref = lp[:, None] - lp[None, :], REF.log()[:, None] - REF.log()[None, :]
    return ((pol - ref - (win[:, None] - win[None, :]) / tau) ** 2).mean()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from helpers.e_vs_o import even_sft

    return even_sft(tmp_path_factory, demos=120, steps=120)


@pytest.mark.slow
def test_egpo_run_on_a_tiny_model_moves_towards_the_winner_and_writes_its_run(sft, tmp_path):
    from preftune.online import OnlineConfig, train_online
    from preftune.train import TrainConfig

    out = tmp_path / "egpo"
    # a step size at which the move held on seeds 0-3 (p(e) 0.556 -> 0.67-0.70); at 4e-2 for 6 steps it ranged from
    # 0.10 to 0.99 with the seed
    cfg = TrainConfig(model=str(sft), output=str(out), max_steps=12, batch_size=16, lr=5e-3, progress=False,
                      save_every=3, seed=0, loss="egpo", tau=0.5)
    online = OnlineConfig(algo="egpo", prompts=[{"prompt": f"n {i}:"} for i in range(32)], max_new_tokens=3,
                          num_generations=2, preference_fn=f"{__file__}:prefer_e")
    before = p_e(sft)
    res = train_online(cfg, online)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert all("loss/half" in r and r["egpo/pairs"] == 16 for r in recs)  # two gradient evaluations per step
    assert (out / "snapshots" / "step-9" / "config.json").is_file() and (out / "final" / "config.json").is_file()
    assert "egpo_pairs: policy" in (out / "config.yaml").read_text()
    assert res.steps == 12 and len(res.history) == 12
    assert p_e(out / "final") > before + 0.08, (before, p_e(out / "final"))
    with pytest.raises(ConfigError, match="does not resume"):
        train_online(cfg.replace(resume=True), online)
