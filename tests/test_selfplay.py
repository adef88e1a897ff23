"""SPPO (P61) and INPO (P11): the win-rate estimate, both losses against hand computations, their gradient
directions and fixed points, the preference matrices, and one round of each on a tiny model."""
import json
import math

import pytest

from helpers.e_vs_o import p_e, prefer_e
import torch

from preftune.errors import ConfigError
from preftune.objectives import build as build_objective
from preftune.objectives.base import ListStats, PairStats
from preftune.online.selfplay import inpo_loss, preference_matrices, win_rates

P3 = [[0.5, 0.8, 0.3], [0.2, 0.5, 0.6], [0.7, 0.4, 0.5]]


# ----------------------------------------------------------------------------- win rates


def test_win_rates_leave_the_sample_itself_out():
    w = win_rates(torch.tensor([P3]))
    assert w.tolist()[0] == pytest.approx([(0.8 + 0.3) / 2, (0.2 + 0.6) / 2, (0.7 + 0.4) / 2])


def test_win_rates_with_self_are_the_authors_estimator():
    w = win_rates(torch.tensor([P3]), include_self=True)  # compute_prob.py: sum over all K of P(y_i > y_j), / K
    assert w.tolist()[0] == pytest.approx([(0.5 + 0.8 + 0.3) / 3, (0.2 + 0.5 + 0.6) / 3, (0.7 + 0.4 + 0.5) / 3])


def test_win_rates_skip_unjudged_pairs():
    P = torch.tensor([P3])
    P[0, 0, 2] = P[0, 2, 0] = float("nan")
    assert win_rates(P).tolist()[0] == pytest.approx([0.8, (0.2 + 0.6) / 2, 0.4])


# ----------------------------------------------------------------------------- SPPO


def _list_stats(pol, ref, wr, valid=None):
    return ListStats(policy_logps=torch.tensor(pol, requires_grad=True), scores=torch.tensor(wr),
                     reference_logps=torch.tensor(ref), valid=None if valid is None else torch.tensor(valid))


def test_sppo_loss_by_hand():
    pol = [[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.5]]
    ref = [[-1.2, -1.8, -0.5], [-2.0, -2.0, -2.0]]
    wr = [[0.9, 0.2, 0.5], [0.4, float("nan"), 0.7]]
    eta = 2.0
    out = build_objective("sppo", eta=eta)(_list_stats(pol, ref, wr))
    # row 0: log-ratios 0.2, -0.2, 0.0; targets eta (w - 1/2) = 0.8, -0.6, 0.0
    row0 = ((0.2 - 0.8) ** 2 + (-0.2 + 0.6) ** 2 + 0.0 ** 2) / 3
    # row 1: the unscored sample is left out; log-ratios -1.0, -0.5; targets -0.2, 0.4
    row1 = ((-1.0 + 0.2) ** 2 + (-0.5 - 0.4) ** 2) / 2
    assert out.loss.tolist() == pytest.approx([row0, row1])


def test_sppo_best_worst_is_the_authors_pair_loss():
    pol, ref, wr = [[-1.0, -2.0, -0.5]], [[-1.2, -1.8, -0.5]], [[0.9, 0.2, 0.5]]
    eta = 4.0
    out = build_objective("sppo", eta=eta, samples="best_worst")(_list_stats(pol, ref, wr))
    # SPPOTrainer.sppo_loss: ((logits_w - (p_w - .5)/beta)^2 + (logits_l - (p_l - .5)/beta)^2) / 2, eta = 1/beta
    loss_w = (0.2 - eta * (0.9 - 0.5)) ** 2
    loss_l = (-0.2 - eta * (0.2 - 0.5)) ** 2
    assert out.loss.item() == pytest.approx((loss_w + loss_l) / 2)


def test_sppo_gradient_raises_winners_and_lowers_losers_and_vanishes_at_the_target():
    stats = _list_stats([[-1.0, -1.0, -1.0]], [[-1.0, -1.0, -1.0]], [[0.8, 0.5, 0.1]])
    build_objective("sppo", eta=1.0)(stats).loss.sum().backward()
    g = stats.policy_logps.grad[0]
    assert g[0] < 0 and g[2] > 0 and g[1] == 0  # descent raises log pi of the winner, lowers the loser's
    eta = 3.0
    at_target = _list_stats([[eta * 0.3 - 1.0, -1.0]], [[-1.0, -1.0]], [[0.8, 0.5]])
    assert build_objective("sppo", eta=eta)(at_target).loss.item() == pytest.approx(0.0, abs=1e-12)


def test_sppo_rejects_a_bad_eta():
    with pytest.raises(ConfigError, match="eta"):
        build_objective("sppo", eta=0.0)


# ----------------------------------------------------------------------------- INPO


def _pair_stats(pc, pr, rc, rr, margin=None):
    return PairStats(torch.tensor(pc, requires_grad=True), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr),
                     margin=None if margin is None else torch.tensor(margin))


def test_inpo_loss_by_hand():
    eta, tau = 2.0, 0.25
    s = _pair_stats([-1.0, -2.0], [-1.5, -1.0], [-1.2, -1.5], [-1.4, -1.5], margin=[0.3, -0.6])
    out = build_objective("inpo", eta=eta, tau=tau)(s)
    exp = []
    for pc, pr, rc, rr, m in [(-1.0, -1.5, -1.2, -1.4, 0.3), (-2.0, -1.0, -1.5, -1.5, -0.6)]:
        h = (pc - pr) - eta * tau * m - (1 - eta * tau) * (rc - rr)
        exp.append((h - eta / 2) ** 2)
    assert out.loss.tolist() == pytest.approx(exp)


def test_inpo_without_tau_needs_no_margin_and_with_tau_does():
    s = _pair_stats([-1.0], [-1.5], [-1.2], [-1.4])
    out = build_objective("inpo", eta=1.0)(s)
    assert out.loss.item() == pytest.approx(((0.5 - 0.2) - 0.5) ** 2)
    with pytest.raises(ValueError, match="margin"):
        build_objective("inpo", eta=1.0, tau=0.5)(s)
    with pytest.raises(ConfigError, match="eta \\* tau"):
        build_objective("inpo", eta=2.0, tau=0.75)


def test_inpo_gradient_raises_the_winner_below_the_target_margin():
    s = _pair_stats([-1.0], [-1.0], [-1.0], [-1.0])  # h = 0 < eta/2
    build_objective("inpo", eta=1.0)(s).loss.sum().backward()
    assert s.policy_chosen_logps.grad.item() < 0


def test_inpo_minimiser_is_the_mirror_descent_step():
    """P11's claim: over pairs y, y' ~ pi_t labelled by P, the loss is minimised where
    log pi(y) - log pi(y') = (1 - eta tau) log-ratio of pi_t + eta tau log-ratio of pi_ref
    + eta (P(y > pi_t) - P(y' > pi_t)). A 3-action softmax policy, the expectation taken exactly."""
    P = torch.tensor([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]], dtype=torch.float64)
    pi_t = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi_ref = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    eta, tau = 1.5, 0.4
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)
    lt, lr = pi_t.log(), pi_ref.log()

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(logits, 0)
        total = 0
        for y in range(3):
            for y2 in range(3):  # ordered draw (y, y2) from pi_t; y wins with probability P[y, y2]
                h = (lp[y] - lp[y2]) - eta * tau * (lr[y] - lr[y2]) - (1 - eta * tau) * (lt[y] - lt[y2])
                total = total + pi_t[y] * pi_t[y2] * P[y, y2] * inpo_loss(h, eta)
        total.backward()
        return total

    opt.step(closure)
    lp = torch.log_softmax(logits, 0).detach()
    target = (1 - eta * tau) * lt + eta * tau * lr + eta * (P @ pi_t)
    assert (lp - lp[0]).tolist() == pytest.approx((target - target[0]).tolist(), abs=1e-6)


# ----------------------------------------------------------------------------- preferences


def test_preference_matrices_judge_each_pair_once_and_complete_by_symmetry():
    calls = []

    def prefer(prompts, a, b):
        calls.append(len(a))
        return [0.9 if (x, y) == ("a", "b") else 0.25 for x, y in zip(a, b)]

    M = preference_matrices(prefer, None, ["q"], ["a", "b", "c"], 3, step=1)
    assert calls == [3]  # (0, 1), (0, 2), (1, 2) in one call
    assert M[0].flatten().tolist() == pytest.approx([0.5, 0.9, 0.25, 0.1, 0.5, 0.25, 0.75, 0.75, 0.5])


def test_preference_matrices_from_a_reward_are_bradley_terry():
    class R:
        def parts(self, prompts, completions, columns, **_):
            return [{"a": 1.0, "b": 0.0}[c] for c in completions], {}

    M = preference_matrices(None, R(), ["q"], ["a", "b"], 2, step=1)
    s = 1 / (1 + math.exp(-1.0))
    assert M[0].flatten().tolist() == pytest.approx([0.5, s, 1 - s, 0.5])


def test_a_preference_outside_zero_one_is_a_one_line_error():
    with pytest.raises(ConfigError, match="probability in \\[0, 1\\]"):
        preference_matrices(lambda p, a, b: [1.5] * len(a), None, ["q"], ["a", "b"], 2, step=1)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from helpers.e_vs_o import even_sft

    return even_sft(tmp_path_factory, demos=200, steps=60)


@pytest.mark.slow
@pytest.mark.parametrize("loss,k,data_file,hp", [("sppo", 3, "samples.jsonl", {"eta": 4.0}),
                                                 ("inpo", 2, "pairs.jsonl", {"eta": 2.0, "tau": 0.25})])
def test_selfplay_rounds_write_their_directories_and_move_towards_the_winner(sft, tmp_path, loss, k, data_file, hp):
    from preftune.online import OnlineConfig
    from preftune.online.run import load_online_prompts
    from preftune.online.selfplay import train_selfplay
    from preftune.train import TrainConfig
    from preftune.train.setup import load_tokenizer_for

    out = tmp_path / loss
    cfg = TrainConfig(model=str(sft), output=str(out), max_steps=8, batch_size=8, lr=5e-3, progress=False,
                      save_every=0, seed=0, loss=loss, **hp)
    online = OnlineConfig(algo="iterative_dpo", prompts=[{"prompt": f"n {i}:"} for i in range(32)],
                          num_generations=k, max_new_tokens=3, rounds=2 if loss == "sppo" else 1)
    tok = load_tokenizer_for(cfg, None)
    _, prompts = load_online_prompts(cfg, online, tok, None)
    before = p_e(sft)
    res = train_selfplay(cfg, online, prompts, prefer_e, tokenizer=tok)
    rows = [json.loads(x) for x in (out / "round-1" / data_file).read_text().splitlines()]
    assert len(rows) == 32
    if loss == "sppo":
        for r in rows:  # each win rate is the mean judged preference against the prompt's other samples
            for i, c in enumerate(r["completions"]):
                others = [prefer_e(None, [c], [d])[0] for j, d in enumerate(r["completions"]) if j != i]
                assert r["win_rates"][i] == pytest.approx(sum(others) / len(others))
    else:
        assert all(isinstance(r["ref_logratio"], float) for r in rows)
    assert (out / "round-1" / "final").is_dir() and (out / "final").is_dir()
    rounds = 2 if loss == "sppo" else 1
    assert [r["round"] for r in json.loads((out / "rounds.json").read_text())] == list(range(1, rounds + 1))
    assert res.history[-1]["round"] == rounds
    if rounds == 2:  # round 2 samples from, and refers to, round 1's policy: pi_t
        import yaml

        assert yaml.safe_load((out / "round-2" / "config.yaml").read_text())["model"].endswith("round-1/final")
    assert p_e(out / "final") > before + 0.05, (before, p_e(out / "final"))
