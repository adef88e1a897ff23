"""``rm eval`` (issue 14): pairwise accuracy with ties, per subset, RewardBench v1 section weighting, RewardBench 2
best-of-n with ties and its Ties score, length bias -- in closed form with fake scorers -- then end to end through the
CLI with a tiny trained reward model and a tiny causal LM (implicit reward against a reference, reference-free)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward.evaluate import (EXAMPLE_COUNTS, best_of_n_credit, evaluate_reward, length_bias,
                                      rewardbench_v1_sections, ties_score)


def by_length(prompts, responses):
    return [float(len(r)) for r in responses]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pair_accuracy_counts_ties_half_and_groups_by_subset():
    rows = [{"prompt": "p", "chosen": "xx", "rejected": "x", "subset": "a"},    # right
            {"prompt": "p", "chosen": "x", "rejected": "y", "subset": "a"},     # tie
            {"prompt": "p", "chosen": "x", "rejected": "yy", "subset": "b"},    # wrong
            {"prompt": "p", "chosen": "xxx", "rejected": "y"}]                  # right, no subset
    r = evaluate_reward(by_length, rows)
    assert r["format"] == "pairs" and r["n"] == 4 and r["ties"] == 1
    assert r["accuracy"] == pytest.approx(2.5 / 4)
    assert r["subsets"] == {"a": {"n": 2, "accuracy": 0.75, "ties": 1}, "b": {"n": 1, "accuracy": 0.0, "ties": 0},
                            "(none)": {"n": 1, "accuracy": 1.0, "ties": 0}}
    assert "rewardbench_v1" not in r  # no RewardBench subset names
    assert set(evaluate_reward(by_length, rows, subset_column=None)["subsets"]) == {"(none)"}


def test_rewardbench_v1_sections_weight_subsets_by_example_counts(tmp_path):
    def pair(sub, outcome):
        rej = {"right": "x", "tie": "y", "wrong": "yyy"}[outcome]
        return {"prompt": "q", "chosen": "xx", "rejected": rej + ("y" if outcome == "tie" else ""), "subset": sub}

    rows = [pair("alpacaeval-easy", "right"), pair("alpacaeval-easy", "tie"), pair("mt-bench-easy", "wrong"),
            pair("math-prm", "right"), pair("math-prm", "right"), pair("hep-python", "wrong"),
            pair("xstest-should-refuse", "right"), pair("my-own", "wrong")]
    r = evaluate_reward(by_length, _jsonl(tmp_path / "rb.jsonl", rows))
    v1 = r["rewardbench_v1"]
    # RewardBench (scripts/run_rm.py) scores a tie 0: alpacaeval-easy is 1/2 there, 3/4 in our pair accuracy
    assert r["subsets"]["alpacaeval-easy"]["accuracy"] == 0.75
    assert v1["subset_accuracy"] == {"alpacaeval-easy": 0.5, "mt-bench-easy": 0.0, "math-prm": 1.0, "hep-python": 0.0,
                                     "xstest-should-refuse": 1.0}
    chat = (0.5 * 100 + 0.0 * 28) / (100 + 28)
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)   # math-prm weighs 984 (= 6 x 164), not its 447 rows
    assert v1["sections"] == pytest.approx({"Chat": chat, "Reasoning": reasoning, "Safety": 1.0})
    assert v1["score"] == pytest.approx((chat + reasoning + 1.0) / 3)
    assert set(v1["incomplete"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert "hep-go" in v1["incomplete"]["Reasoning"] and "math-prm" not in v1["incomplete"]["Reasoning"]
    full = rewardbench_v1_sections({s: 1.0 for s in EXAMPLE_COUNTS})
    assert full["incomplete"] == {} and full["score"] == 1.0


def test_rewardbench_v2_best_of_four_with_ties_at_the_top():
    assert best_of_n_credit(3, [1, 2, 2]) == 1.0
    assert best_of_n_credit(3, [3, 2, 1]) == 0.5
    assert best_of_n_credit(3, [3, 3, 1]) == pytest.approx(1 / 3)
    assert best_of_n_credit(3, [4, 1, 1]) == 0.0
    rows = [{"prompt": "q", "chosen": ["aaaa"], "rejected": ["a", "bb", "ccc"], "subset": "Math"},       # 1
            {"prompt": "q", "chosen": ["aaa"], "rejected": ["a", "bbb", "ccc"], "subset": "Math"},       # 1/3
            {"prompt": "q", "chosen": ["aa"], "rejected": ["a", "bbb", "c"], "subset": "Focus"},         # 0
            {"prompt": "q", "chosen": ["aa"], "rejected": ["a", "bb", "c"], "subset": "Focus"}]          # 1/2
    r = evaluate_reward(by_length, rows)
    assert r["format"] == "rewardbench-v2" and r["n"] == 4
    assert r["subsets"]["Math"] == {"n": 2, "accuracy": pytest.approx((1 + 1 / 3) / 2)}
    assert r["subsets"]["Focus"] == {"n": 2, "accuracy": 0.25}
    assert r["accuracy"] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert r["rewardbench_v2"]["score"] == pytest.approx(((1 + 1 / 3) / 2 + 0.25) / 2)


def test_rewardbench_v2_ties_subset_is_scored_as_rewardbench_does():
    # ref:0 -- one correct answer (score 5) above the wrong ones (1, 2): accurate, gap 3
    # tied:0 -- correct answers 6 and 4 (spread 2) above the wrong ones (1, 3): accurate, gap 1
    # ref:1 -- correct 2 below a wrong 3: gap -1;  tied:1 -- correct 5, 5 (spread 0) above wrong 1: gap 4
    rows = [{"prompt": "q0", "chosen": ["x" * 5], "rejected": ["x", "xx"], "subset": "Ties", "id": "ref:0"},
            {"prompt": "q0", "chosen": ["x" * 6, "x" * 4], "rejected": ["x", "xxx"], "subset": "Ties", "id": "tied:0"},
            {"prompt": "q1", "chosen": ["xx"], "rejected": ["xxx"], "subset": "Ties", "id": "ref:1"},
            {"prompt": "q1", "chosen": ["x" * 5, "y" * 5], "rejected": ["x"], "subset": "Ties", "id": "tied:1"}]
    t = evaluate_reward(by_length, rows)["subsets"]["Ties"]["ties_score"]
    pref = (float(1 > 2) + float(4 > 0)) / 2                        # tied gap > spread
    hard = (float(min(3, 1) > 2) + float(min(-1, 4) > 0)) / 2       # min(ref gap, tied gap) > spread
    margin = (math.tanh(min(3, 1) / 2 - 1) + math.tanh(-math.inf)) / 2   # -1 / 0 -> -inf, as numpy divides
    want = 0.30 * 1.0 + 0.30 * 0.5 + 0.20 * pref + 0.20 * hard + 0.01 * margin
    assert t["ref_accuracy"] == 0.5 and t["tied_accuracy"] == 1.0
    assert t["correctness_preferred"] == pref and t["correctness_preferred_hard"] == hard
    assert t["score"] == pytest.approx(want)
    assert ties_score({("ref", 0): [(True, 1.0), (False, 1.0)], ("tied", 0): [(True, 2.0), (True, 2.0), (False, 2.0)]}
                      )["margin_score"] == 0.0   # 0 / 0 -> nan -> 0
    no_ids = [dict(r, id=None) for r in rows]
    r = evaluate_reward(by_length, no_ids)
    assert "ties_score" not in r["subsets"]["Ties"] and "ties_note" in r["rewardbench_v2"]


def test_length_bias_in_characters():
    shorter = lambda p, rs: [-float(len(r)) for r in rs]  # noqa: E731 - a scorer that prefers short answers
    rows = [{"prompt": "p", "chosen": "long answer", "rejected": "short"},
            {"prompt": "p", "chosen": "long answer", "rejected": "no"},
            {"prompt": "p", "chosen": "ok", "rejected": "wrong answer"},
            {"prompt": "p", "chosen": "same", "rejected": "size"}]
    lb = evaluate_reward(shorter, rows)["length_bias"]
    assert lb == {"n": 4, "longer_is_chosen": (2 + 0 + 0.5) / 4, "model_picks_longer": 0.5 / 4, "equal_length": 1}
    assert length_bias([])["longer_is_chosen"] is None


def test_bad_rows_are_the_one_line_errors_of_train(tmp_path):
    from preftune.errors import DataError

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                          {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError) as e:
        evaluate_reward(by_length, bad)
    assert str(e.value).startswith(f"{bad}, row 2")
    assert evaluate_reward(by_length, bad, on_bad_row="skip")["n"] == 1
    v2bad = _jsonl(tmp_path / "v2.jsonl", [{"prompt": "p", "chosen": ["a"], "rejected": ["b", "c"]},
                                           {"prompt": "p", "chosen": [], "rejected": ["b"]}])
    with pytest.raises(DataError, match=r"row 2, field 'chosen'"):
        evaluate_reward(by_length, v2bad, format="rewardbench-v2")


# ---------------------------------------------------------------------------------------------- end to end

def test_rm_eval_cli_with_a_trained_reward_model(tiny_dir, tmp_path, capsys):
    from conftest import arithmetic_rows

    from preftune.cli.main import main
    from preftune.reward import RewardModel, train_reward_model
    from preftune.train import TrainConfig

    rows = arithmetic_rows(24, seed=2)
    train_data = _jsonl(tmp_path / "train.jsonl", rows)
    res = train_reward_model(TrainConfig(model=str(tiny_dir), data=str(train_data), output=str(tmp_path / "rm"),
                                         batch_size=8, lr=3e-3, max_steps=20, progress=False, seed=0,
                                         lr_schedule="constant"))
    subs = ["math-prm", "hep-python", "alpacaeval-easy"]
    data = _jsonl(tmp_path / "eval.jsonl", [dict(r, subset=subs[i % 3]) for i, r in enumerate(rows)])
    capsys.readouterr()
    rc = main(["rm", "eval", "--model", str(res.final_dir), "--data", str(data), "--output", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and report["scorer"] == "classifier" and report["n"] == 24
    rm = RewardModel.from_pretrained(res.final_dir)
    c = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    j = rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    want = float(((c > j).float() + 0.5 * (c == j).float()).mean())
    assert report["accuracy"] == pytest.approx(want)
    assert set(report["subsets"]) == set(subs) and sum(d["n"] for d in report["subsets"].values()) == 24
    assert set(report["rewardbench_v1"]["sections"]) == {"Chat", "Reasoning"}
    assert "math-prm" in out and "Reasoning" in out and "length bias" in out
    rc = main(["rm", "eval", "--model", str(res.final_dir), "--data", str(data), "--reference-free", "sum"])
    assert rc == 2 and "do not apply" in capsys.readouterr().err


def test_rm_eval_cli_with_a_causal_lm_implicit_reward_and_reference_free(tiny_dir, tmp_path, capsys):
    from conftest import arithmetic_rows

    from preftune.cli.main import main
    from preftune.data import load_examples, tokenize_examples
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.models.scoring import pair_logps

    policy = load_model(str(tiny_dir), attn_implementation=None)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.save_pretrained(tmp_path / "policy")
    tok = load_tokenizer(str(tiny_dir))
    tok.save_pretrained(tmp_path / "policy")
    rows = arithmetic_rows(12, seed=3)
    data = _jsonl(tmp_path / "pairs.jsonl", rows)

    pairs = tokenize_examples(load_examples(str(data), kind="pair").examples, tok, max_length=1024,
                              max_prompt_length=None).items
    ref = load_model(str(tiny_dir), attn_implementation=None)
    lp, lr = pair_logps(policy, pairs, tok.pad_token_id), pair_logps(ref, pairs, tok.pad_token_id)

    def acc(c, j):
        return float(((c > j).float() + 0.5 * (c == j).float()).mean())

    def run(*extra):
        capsys.readouterr()
        rc = main(["rm", "eval", "--model", str(tmp_path / "policy"), "--data", str(data), "--output",
                   str(tmp_path / "r.json"), *extra])
        assert rc == 0, capsys.readouterr().err
        return json.loads((tmp_path / "r.json").read_text())

    r = run("--ref-model", str(tiny_dir), "--beta", "0.1")
    assert r["scorer"].startswith("implicit reward")
    assert r["accuracy"] == pytest.approx(acc(lp.chosen - lr.chosen, lp.rejected - lr.rejected))
    assert run("--ref-model", str(tiny_dir), "--beta", "3")["accuracy"] == r["accuracy"]  # beta ranks nothing
    assert run("--reference-free", "sum")["accuracy"] == pytest.approx(acc(lp.chosen, lp.rejected))
    assert run("--reference-free", "average")["accuracy"] == pytest.approx(
        acc(lp.chosen / lp.chosen_lengths, lp.rejected / lp.rejected_lengths))
    # the policy against itself: every implicit reward is 0, every pair a tie
    same = main(["rm", "eval", "--model", str(tiny_dir), "--data", str(data), "--ref-model", str(tiny_dir),
                 "--output", str(tmp_path / "s.json")])
    s = json.loads((tmp_path / "s.json").read_text())
    assert same == 0 and s["accuracy"] == 0.5 and s["ties"] == 12
    capsys.readouterr()
    assert main(["rm", "eval", "--model", str(tiny_dir), "--data", str(data)]) == 2
    assert "is a causal LM" in capsys.readouterr().err


def test_scorer_kind_is_read_from_the_config(tiny_dir, tmp_path):
    from preftune.reward.evaluate import load_scorer, model_kind

    assert model_kind(tiny_dir) == "causal-lm"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    assert model_kind(tmp_path) == "classifier"
    with pytest.raises(ConfigError, match="exclude each other"):
        load_scorer(tiny_dir, ref_model=tiny_dir, reference_free="sum")
