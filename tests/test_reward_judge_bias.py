"""P58 DBG score (issue 14): per-item outcomes and win rates in closed form, the order averaging, gold majority,
the limit cases that separate DBG from the naive score, bad rows, and the `preftune rm judge-bias` command."""
from __future__ import annotations

import json

import pytest

from preftune.errors import DataError
from preftune.reward.judge_bias import (dbg_score, gold_item_score, judge_bias, judge_item_score,
                                        verdict_probability)


def test_item_outcomes():
    assert judge_item_score("own", "own") == 1.0
    assert judge_item_score("other", "other") == 0.0
    assert judge_item_score("own", "other") == 0.5            # position-driven disagreement is a tie
    assert judge_item_score(0.9, 0.3) == 1.0                  # mean 0.6 > 1/2
    assert judge_item_score(0.7, 0.2) == 0.0                  # mean 0.45 < 1/2
    assert judge_item_score(0.6, 0.4) == 0.5
    assert judge_item_score("tie", "own") == 1.0              # mean 0.75
    assert gold_item_score("own") == 1.0
    assert gold_item_score(["own", "other", "other"]) == 0.0
    assert gold_item_score(["own", "other", "tie", "tie"]) == 0.5
    assert gold_item_score([0.8, 0.6, 0.1]) == 1.0            # votes rounded: own, own, other
    assert verdict_probability(" OWN ") == 1.0


def test_win_rates_dbg_and_naive_by_hand():
    rows = [
        {"own_first": "own", "own_second": "own", "gold": "own"},        # judge 1,   gold 1
        {"own_first": "own", "own_second": "other", "gold": "other"},    # judge 1/2, gold 0
        {"own_first": "own", "own_second": "own", "gold": "other"},      # judge 1,   gold 0
        {"own_first": 0.2, "own_second": 0.1, "gold": ["other", "own"]}, # judge 0,   gold 1/2
        {"own_first": 0.55, "own_second": 0.5, "gold": ["own", "own", "other"]},  # judge 1, gold 1
    ]
    judge = [1, 0.5, 1, 0, 1]
    gold = [1, 0, 0, 0.5, 1]
    wr_j, wr_g = 100 * sum(judge) / 5, 100 * sum(gold) / 5
    r = judge_bias(rows)
    assert r["items"] == 5
    assert r["judge_win_rate"] == pytest.approx(wr_j)      # 70
    assert r["gold_win_rate"] == pytest.approx(wr_g)       # 50
    assert r["dbg"] == pytest.approx(wr_j - wr_g)          # 20
    assert r["naive"] == pytest.approx(wr_j - (100 - wr_j))  # 40


def test_better_responses_without_bias_give_zero_dbg_but_a_positive_naive_score():
    # the paper's point: a judge whose responses really are better, judging exactly as the gold does
    rows = [{"own_first": "own", "own_second": "own", "gold": "own"}] * 8 + \
           [{"own_first": "other", "own_second": "other", "gold": "other"}] * 2
    r = judge_bias(rows)
    assert r["dbg"] == pytest.approx(0.0)
    assert r["naive"] == pytest.approx(60.0)               # 80 - 20


def test_biased_judge_with_equal_quality():
    # gold says the responses tie on half and split the rest; the judge always picks its own
    rows = [{"own_first": "own", "own_second": "own", "gold": g} for g in ["own", "other", "tie", "tie"]]
    r = judge_bias(rows)
    assert r["gold_win_rate"] == pytest.approx(50.0)
    assert r["dbg"] == pytest.approx(50.0)


def test_per_judge_groups():
    rows = [{"judge": "a", "own_first": "own", "own_second": "own", "gold": "other"},
            {"judge": "b", "own_first": "other", "own_second": "other", "gold": "other"},
            {"judge": "b", "own_first": "own", "own_second": "own", "gold": "own"}]
    r = judge_bias(rows)
    assert r["judges"]["a"]["dbg"] == pytest.approx(100.0)
    assert r["judges"]["b"]["dbg"] == pytest.approx(0.0)
    assert r["dbg"] == pytest.approx(100 * 2 / 3 - 100 * 1 / 3)
    assert dbg_score([1.0], [0.0])["naive"] == pytest.approx(100.0)


@pytest.mark.parametrize("row, field, msg", [
    ({"own_second": "own", "gold": "own"}, "own_first", "missing"),
    ({"own_first": "own", "own_second": 1.5, "gold": "own"}, "own_second", "number in \\[0, 1\\]"),
    ({"own_first": "maybe", "own_second": "own", "gold": "own"}, "own_first", "verdict must be"),
    ({"own_first": "own", "own_second": "own", "gold": []}, "gold", "non-empty list"),
    ({"own_first": True, "own_second": "own", "gold": "own"}, "own_first", "verdict must be"),
])
def test_bad_rows_name_file_row_and_field(row, field, msg):
    good = {"own_first": "own", "own_second": "own", "gold": "own"}
    with pytest.raises(DataError, match=msg) as e:
        judge_bias([good, row], file="v.jsonl")
    assert str(e.value).startswith(f"v.jsonl, row 2, field '{field}'")
    assert "\n" not in str(e.value)


def test_cli(tmp_path, capsys):
    from preftune.cli.main import main

    data = tmp_path / "v.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"own_first": "own", "own_second": "own", "gold": "own"},
        {"own_first": "own", "own_second": "own", "gold": ["other", "other", "own"]}]) + "\n")
    out = tmp_path / "bias.json"
    assert main(["rm", "judge-bias", "--data", str(data), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dbg"] == pytest.approx(50.0) and report["naive"] == pytest.approx(100.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"own_first": "own", "own_second": "own", "gold": "own"}\n\n{"own_first": "x", '
                   '"own_second": "own", "gold": "own"}\n')
    rc = main(["rm", "judge-bias", "--data", str(bad)])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{bad}, row 3, field 'own_first'" in err
