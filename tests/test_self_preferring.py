"""OSP (P28): the soft-preference cross-entropy against hand computations and its limit cases, the ranked pairing
on a hand example, the self-judge against a direct forward pass, the round rows, and an end-to-end run in which
a tiny model that judges its own samples learns the right answer with no reward given."""
import contextlib
import json
import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import build as build_objective
from preftune.objectives.base import PairStats
from preftune.online import OnlineConfig
from preftune.online.self_preferring import (both_orders, check_options, judge_probability, log_odds, ranked_pairs,
                                             self_judge)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _stats(pc, pr, rc, rr, strength):
    return PairStats(policy_chosen_logps=torch.tensor(pc, dtype=torch.float64, requires_grad=True),
                     policy_rejected_logps=torch.tensor(pr, dtype=torch.float64, requires_grad=True),
                     reference_chosen_logps=torch.tensor(rc, dtype=torch.float64),
                     reference_rejected_logps=torch.tensor(rr, dtype=torch.float64),
                     extras={"strength": torch.tensor(strength, dtype=torch.float64)})


# ----------------------------------------------------------------------------- the soft-preference cross-entropy


def test_spce_by_hand_with_a_margin_strength():
    pc, pr, rc, rr = [-1.0, -4.0, -2.0], [-3.0, -2.0, -2.5], [-1.5, -3.0, -2.0], [-2.0, -2.5, -2.0]
    strength = [1.5, -0.4, 0.0]  # reward margins: p = sigmoid(strength)
    beta = 0.5
    out = build_objective("spce", beta=beta)(_stats(pc, pr, rc, rr, strength))
    want = []
    for i in range(3):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        p = 1 / (1 + math.exp(-strength[i]))
        want.append(-(p * math.log(_sig(z)) + (1 - p) * math.log(_sig(-z))))
    assert out.loss.tolist() == pytest.approx(want, rel=1e-12)


def test_spce_with_strength_one_is_the_dpo_sigmoid_loss():
    args = ([-1.0, -4.0], [-3.0, -2.0], [-1.5, -3.0], [-2.0, -2.5])
    spce = build_objective("spce", beta=0.3, strength_is="probability")(_stats(*args, [1.0, 1.0]))
    dpo = build_objective("dpo", beta=0.3)(_stats(*args, [1.0, 1.0]))
    assert spce.loss.tolist() == pytest.approx(dpo.loss.tolist(), rel=1e-12)
    z0 = 0.3 * ((-1.0 + 1.5) - (-3.0 + 2.0))
    assert spce.loss[0].item() == pytest.approx(-math.log(_sig(z0)), rel=1e-12)


def test_spce_with_strength_one_half_has_zero_gradient_only_where_the_log_ratios_agree():
    # pair 0: z = 0 -> no gradient; pair 1: h_w - h_l = 1 - 0, z = beta > 0 -> pushed back towards z = 0
    stats = _stats([-2.0, -1.0], [-3.0, -3.0], [-2.0, -2.0], [-3.0, -3.0], [0.5, 0.5])
    beta = 0.5
    build_objective("spce", beta=beta, strength_is="probability")(stats).loss.sum().backward()
    gc, gr = stats.policy_chosen_logps.grad, stats.policy_rejected_logps.grad
    assert gc[0].item() == 0.0 and gr[0].item() == 0.0
    z1 = beta * 1.0
    assert gc[1].item() == pytest.approx(beta * (_sig(z1) - 0.5), rel=1e-12)  # dL/dz = sigmoid(z) - p
    assert gr[1].item() == pytest.approx(-beta * (_sig(z1) - 0.5), rel=1e-12)
    assert gc[1] > 0  # gradient descent lowers the chosen log-ratio: a tie is not a preference


def test_spce_minimiser_is_the_log_odds_of_the_strength():
    p, beta = 0.8, 0.25
    z_star = math.log(p / (1 - p))
    stats = _stats([z_star / beta - 1.0], [-1.0], [-1.0], [-1.0], [p])
    build_objective("spce", beta=beta, strength_is="probability")(stats).loss.sum().backward()
    assert stats.policy_chosen_logps.grad.item() == pytest.approx(0.0, abs=1e-12)
    # below the target the chosen log-probability is raised (negative gradient), above it lowered
    for off, sign in ((-1.0, -1), (1.0, 1)):
        s = _stats([z_star / beta - 1.0 + off], [-1.0], [-1.0], [-1.0], [p])
        build_objective("spce", beta=beta, strength_is="probability")(s).loss.sum().backward()
        assert math.copysign(1, s.policy_chosen_logps.grad.item()) == sign


def test_spce_needs_a_strength_and_a_probability_in_range():
    st = _stats([-1.0], [-2.0], [-1.0], [-2.0], [0.5])
    st.extras.clear()
    with pytest.raises(ValueError, match="strength"):
        build_objective("spce")(st)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_objective("spce", strength_is="probability")(_stats([-1.0], [-2.0], [-1.0], [-2.0], [1.5]))
    with pytest.raises(ConfigError, match="strength_is"):
        build_objective("spce", strength_is="odds")


# ----------------------------------------------------------------------------- judging and ranked pairing


def test_judge_probability_and_both_orders_by_hand():
    assert judge_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    # a judge that says "A" 70 % whatever the order: no preference once both orders are averaged
    assert both_orders(0.7, 0.7) == pytest.approx(0.5)
    assert both_orders(0.9, 0.2) == pytest.approx((0.9 + 0.8) / 2)
    assert log_odds(0.5) == 0.0 and log_odds(1.0) == pytest.approx(math.log((1 - 1e-6) / 1e-6))


def test_ranked_pairing_by_hand():
    # log-odds of beating the baseline (sample 0, itself 0); sample 4 unjudged
    L = [0.0, 1.2, -0.7, 2.5, None, -2.0]
    # ranking: 3 (2.5), 1 (1.2), 0 (0.0), 2 (-0.7), 5 (-2.0)
    assert ranked_pairs(L, "nested") == [(3, 5, pytest.approx(4.5)), (1, 2, pytest.approx(1.9))]
    pairs = ranked_pairs(L, "all")
    assert len(pairs) == 10 and all(m >= 0 for _, _, m in pairs)
    assert (1, 0, pytest.approx(1.2)) in pairs and (0, 5, pytest.approx(2.0)) in pairs
    # Bradley-Terry composition of two judgments against the same baseline: with s_i = P(y_i > y_b),
    # P(y_3 > y_5) = odds_3 / (odds_3 + odds_5), which is sigmoid of the written margin
    s3, s5 = _sig(2.5), _sig(-2.0)
    odds3, odds5 = s3 / (1 - s3), s5 / (1 - s5)
    assert _sig(ranked_pairs(L, "nested")[0][2]) == pytest.approx(odds3 / (odds3 + odds5))
    assert ranked_pairs([0.0, 0.0, 0.0], "nested") == [(0, 2, 0.0)]  # ties: index order, strength 1/2
    with pytest.raises(ValueError, match="pairing"):
        ranked_pairs(L, "random")


def test_osp_options_are_checked_with_one_line_errors():
    assert check_options(OnlineConfig(algo="osp")) == ("A", "B")
    for kw, msg in (({"osp_judge": "oracle"}, "--osp-judge"), ({"osp_pairing": "zip"}, "--osp-pairing"),
                    ({"osp_verdicts": "A"}, "--osp-verdicts"), ({"osp_verdicts": "A,A"}, "--osp-verdicts"),
                    ({"osp_template": "{prompt} {a} {c}"}, "--osp-template"),
                    ({"osp_template": "{prompt} {a}"}, "both")):
        with pytest.raises(ConfigError, match=msg) as e:
            check_options(OnlineConfig(algo="osp", **kw))
        assert "\n" not in str(e.value)


def test_self_judge_is_the_models_verdict_probability(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    qs = ["1+2= A:3 B:4 better:", "7+1= A:9 B:8 better:"]
    got = self_judge(model, tok, qs, ("1", "2"))
    v1, v2 = (tok("1", add_special_tokens=False)["input_ids"], tok("2", add_special_tokens=False)["input_ids"])
    assert len(v1) == len(v2) == 1
    for q, g in zip(qs, got):
        ids = tok(text=q)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        want = math.exp(lp[v1[0]]) / (math.exp(lp[v1[0]]) + math.exp(lp[v2[0]]))
        assert g == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- rounds and end to end


def _judged_task():
    from conftest import SevenTask

    class JudgedSeven(SevenTask):
        """Seven prompts 'n 0:'..'n 6:', the right answer always 'e'; the demonstrations answer 'e' or 'o' at random,
        and half of them teach the judge: 'n 3: A:o B:e better:' -> 'B'."""

        name = "seven_judged"

        def reward(self, prompt, response):
            return float(response == "e")

        def demonstrations(self, n, rng):
            out = []
            for i in range(n):
                p = self.sample_prompts(1, rng)[0]
                if i % 2:
                    out.append((p, rng.choice("eo")))
                else:
                    a, b = rng.sample("eo", 2)
                    out.append((f"{p} A:{a} B:{b} better:", "A" if a == "e" else "B"))
            return out

    return JudgedSeven()


@pytest.fixture(scope="module")
def judged_sft(tmp_path_factory):
    from preftune.arena.models import SFTConfig, sft_model_dir

    cfg = SFTConfig(demos=200, steps=200, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    with _one_thread():
        path, _ = sft_model_dir(_judged_task(), 0, cfg, tmp_path_factory.mktemp("osp_sft"))
    return path


@contextlib.contextmanager
def _one_thread():
    """A 32-wide model: a second intra-op thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _p_right(model_dir):
    """Mean probability of the right answer 'e' over the seven prompts (renormalised over e and o)."""
    from preftune.arena.models import encode, load_sft
    from preftune.data.collate import collate_ranked
    from preftune.data.types import TokenizedRanked
    from preftune.models.logprobs import sequence_logps

    model, tok = load_sft(model_dir)
    items = [TokenizedRanked(encode(tok, f"n {i}:")[0], [encode(tok, "", "e")[1], encode(tok, "", "o")[1]], [0, 0])
             for i in range(7)]
    with torch.no_grad():
        p = sequence_logps(model, collate_ranked(items, tok.pad_token_id)).sums.exp().view(-1, 2)
    return float((p[:, 0] / p.sum(-1)).mean())


def test_round_rows_follow_the_ranked_pairing_of_the_judgments(judged_sft, tmp_path):
    """--osp-judge preference with a known judge: every row is a nested pair of the ranking its judgments give."""
    from preftune.online.run import load_online_prompts
    from preftune.online.self_preferring import train_self_preferring
    from preftune.train import TrainConfig
    from preftune.train.setup import load_tokenizer_for

    def prefer(prompts, a, b):  # 'e' beats anything else with probability 0.8
        return [0.5 if (x == "e") == (y == "e") else (0.8 if x == "e" else 0.2) for x, y in zip(a, b)]

    cfg = TrainConfig(model=str(judged_sft), output=str(tmp_path / "run"), max_steps=1, batch_size=8, lr=1e-3,
                      progress=False, save_every=0, seed=0, loss="spce")
    online = OnlineConfig(algo="osp", prompts=[{"prompt": f"n {i}:"} for i in range(16)], num_generations=4,
                          max_new_tokens=3, rounds=1, osp_judge="preference")
    tok = load_tokenizer_for(cfg, None)
    _, prompts = load_online_prompts(cfg, online, tok, None)
    train_self_preferring(cfg, online, prompts, prefer, tokenizer=tok)
    rows = [json.loads(x) for x in (tmp_path / "run" / "round-1" / "pairs.jsonl").read_text().splitlines()]
    info = json.loads((tmp_path / "run" / "round-1" / "round.json").read_text())
    assert rows and info["pairs"] == len(rows) and info["judge"] == "preference"
    for r in rows:
        # strength: logit P(w > base) - logit P(l > base), with the base the prompt's first sample
        assert r["chosen_ids"] != r["rejected_ids"]
        assert r["p"] == pytest.approx(_sig(r["strength"]))
        assert r["strength"] >= 0
        if (r["chosen"] == "e") != (r["rejected"] == "e"):  # one 'e' and one other answer: e wins, strength 0.8
            assert r["chosen"] == "e"
            assert r["strength"] == pytest.approx(math.log(4))  # logit 0.8 - logit 0.5, or logit 0.5 - logit 0.2


@pytest.mark.slow
def test_osp_without_any_reward_learns_from_its_own_judgments(judged_sft, tmp_path):
    """preftune online --algo osp with no reward: the SFT model judges 'e' better but answers at random; after two
    rounds of judging its own samples it answers 'e' more often."""
    from preftune.online import train_online
    from preftune.train import TrainConfig

    before = _p_right(judged_sft)
    cfg = TrainConfig(model=str(judged_sft), output=str(tmp_path / "osp"), max_steps=8, batch_size=8, lr=3e-3,
                      progress=False, save_every=0, seed=0, beta=0.5)
    online = OnlineConfig(algo="osp", prompts=[{"prompt": f"n {i % 7}:"} for i in range(32)], num_generations=4,
                          max_new_tokens=3, rounds=2)
    with _one_thread():
        res = train_online(cfg, online)
    infos = [json.loads((tmp_path / "osp" / f"round-{t}" / "round.json").read_text()) for t in (1, 2)]
    assert all(i["judge"] == "self" and i["pairs"] > 0 for i in infos)
    assert res.history[-1]["round"] == 2 and (tmp_path / "osp" / "final").is_dir()
    after = _p_right(tmp_path / "osp" / "final")
    assert after > before + 0.1, (before, after)
