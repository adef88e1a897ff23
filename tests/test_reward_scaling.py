"""P57 WorldPM: the power-law fit (closed form, exact recovery), the Bradley-Terry test loss, the annotators, and
an end-to-end ``rm scale`` grid on tiny models."""
import json
import math
import random

import numpy as np
import pytest

from preftune.arena.annotators import Annotator, annotate_pairs, objective_annotator, style_annotator
from preftune.arena.tasks import SortTask
from preftune.errors import ConfigError
from preftune.reward.scaling import (ScalingConfig, bt_loss, fit_loglinear, fit_power_law, format_table,
                                     monotone_share, power_law, summarize)


@pytest.mark.parametrize("a,b,c", [(2.5, 0.6, 0.3), (8.0, 0.35, 0.05), (1.2, 1.1, 0.0)])
def test_fit_recovers_a_b_c_from_exact_points(a, b, c):
    d = np.geomspace(16, 16384, 9)
    loss = [a * x ** (-b) + c for x in d]  # the law written out, not power_law()
    f = fit_power_law(d, loss)
    assert f.a == pytest.approx(a, rel=1e-4) and f.b == pytest.approx(b, rel=1e-4)
    assert f.c == pytest.approx(c, abs=1e-5)
    assert f.r2 == pytest.approx(1.0, abs=1e-9)
    assert f(1000.0) == pytest.approx(a * 1000 ** (-b) + c, rel=1e-6)


def test_loglinear_fit_is_the_two_point_slope():
    # c = 0: log L = log a - b log D, so two points fix b = -(log L2 - log L1) / (log D2 - log D1)
    d, loss = [10.0, 1000.0], [0.9, 0.3]
    f = fit_power_law(d, loss, irreducible=False)
    b = -(math.log(0.3) - math.log(0.9)) / (math.log(1000) - math.log(10))
    assert f.b == pytest.approx(b, rel=1e-12)
    assert f.a == pytest.approx(0.9 * 10 ** b, rel=1e-12) and f.c == 0.0


def test_loglinear_fit_with_a_given_c_subtracts_it():
    d = [4.0, 16.0, 64.0]
    loss = [3.0 * x ** -0.5 + 0.2 for x in d]
    f = fit_loglinear(d, loss, c=0.2)
    assert (f.a, f.b) == (pytest.approx(3.0, rel=1e-10), pytest.approx(0.5, rel=1e-10))
    with pytest.raises(ConfigError, match="below the smallest loss"):
        fit_loglinear(d, loss, c=0.6)


def test_noisy_points_fit_better_than_the_best_constant():
    rng = np.random.default_rng(0)
    d = np.geomspace(32, 4096, 8)
    loss = power_law(d, 1.5, 0.5, 0.2) * np.exp(rng.normal(0, 0.01, d.size))
    f = fit_power_law(d, loss)
    assert f.r2 > 0.95 and 0.3 < f.b < 0.8


def test_fit_rejects_bad_points():
    with pytest.raises(ConfigError, match="at least 3 points"):
        fit_power_law([1, 2], [1.0, 0.5])
    with pytest.raises(ConfigError, match="positive"):
        fit_power_law([1, 2, 3], [1.0, 0.0, 0.5])
    with pytest.raises(ConfigError, match="2 data sizes but 3 losses"):
        fit_power_law([1, 2], [1.0, 0.9, 0.8])


def test_bt_loss_by_hand():
    # -log sigmoid(1 - 0) and -log sigmoid(0 - 2), averaged
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert bt_loss([1.0, 0.0], [0.0, 2.0]) == pytest.approx(want, rel=1e-12)
    assert bt_loss([0.0], [0.0]) == pytest.approx(math.log(2))  # chance


def test_monotone_share():
    assert monotone_share([1, 2, 3, 4], [3.0, 2.0, 2.5, 1.0]) == pytest.approx(2 / 3)
    assert monotone_share([4, 3, 2, 1], [1.0, 2.0, 3.0, 4.0]) == 1.0  # sorted by D first


def test_annotators_score_by_their_formula():
    task = SortTask()
    p, right, padded = "sort 312:", "123", "1233333"
    assert objective_annotator().score(task, p, padded) == task.reward(p, padded)
    w = 0.9
    want = (1 - w) * task.reward(p, padded) + w * min(len(padded), 16) / 16
    assert style_annotator(w).score(task, p, padded) == pytest.approx(want)
    rng = random.Random(0)
    assert objective_annotator().label(task, p, padded, right, rng) == (right, padded)
    assert style_annotator(w).label(task, p, right, padded, rng) == (padded, right)  # longer wins under the bias
    assert objective_annotator().label(task, p, right, right, rng) is None
    with pytest.raises(ConfigError, match="style_weight"):
        Annotator("x", style_weight=1.5)
    with pytest.raises(ConfigError, match="unknown feature"):
        Annotator("x", feature="colour")


def test_stochastic_annotator_follows_its_bradley_terry_probability():
    task = SortTask()
    ann = Annotator("noisy", temperature=0.5)
    p, a, b = "sort 312:", "123", "132"   # true rewards 1 and 1/3
    prob = 1 / (1 + math.exp(-(1 - 1 / 3) / 0.5))
    rng = random.Random(1)
    wins = sum(ann.label(task, p, a, b, rng)[0] == a for _ in range(4000)) / 4000
    assert wins == pytest.approx(prob, abs=0.03)


def test_annotate_pairs_one_pair_per_prompt_better_first():
    task = SortTask()
    groups = [[("sort 21:", "12"), ("sort 21:", "12"), ("sort 21:", "21")],   # first distinct non-tied pair
              [("sort 55:", "55"), ("sort 55:", "55")],                       # one distinct answer: no pair
              [("sort 93:", "933"), ("sort 93:", "39")]]
    pairs = annotate_pairs(task, groups, objective_annotator())
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("sort 21:", "12", "21"), ("sort 93:", "39", "933")]
    assert pairs[1].extras["true_reward_chosen"] == 1.0


def test_summarize_means_stds_and_fit():
    cells = [{"annotator": "objective", "size": "xs", "params": 10, "data": d, "seed": s,
              "test_loss": power_law(d, 2.0, 0.5, 0.1) + (0.01 if s else -0.01), "test_accuracy": 0.5,
              "true_accuracy": 0.5} for d in (10, 100, 1000, 10000) for s in (0, 1)]
    (cv,) = summarize(cells)
    assert cv["loss_mean"] == pytest.approx([power_law(d, 2.0, 0.5, 0.1) for d in (10, 100, 1000, 10000)])
    assert cv["loss_std"] == pytest.approx([0.01] * 4)
    assert cv["fit"]["b"] == pytest.approx(0.5, rel=1e-3) and cv["monotone_share"] == 1.0
    assert "| objective | xs | 10 |" in format_table({"curves": [cv]})


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown model size"):
        ScalingConfig(sizes=["huge"])
    with pytest.raises(ConfigError, match="unknown annotator"):
        ScalingConfig(annotators=["judge"])


@pytest.mark.slow
def test_rm_scale_cli_end_to_end(tmp_path):
    from preftune.cli.main import main

    out = tmp_path / "scale"
    rc = main(["rm", "scale", "--output", str(out), "--sizes", "xs", "--data-sizes", "8", "32", "128",
               "--seeds", "0", "--test-pairs", "64", "--pretrain-steps", "40", "--pool-steps", "60",
               "--min-steps", "8", "--epochs", "1", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["cells"]) == 6 and {c["annotator"] for c in res["cells"]} == {"objective", "style"}
    assert all(c["params"] > 0 for c in res["cells"])
    assert {cv["annotator"] for cv in res["curves"]} == {"objective", "style"}
    assert all(cv["fit"] is not None for cv in res["curves"])
    assert (out / "results.md").exists() and (out / "scaling.png").stat().st_size > 1000
    # the trained models learned something: the most data gives a test loss below chance on at least one annotator
    best = min(c["test_loss"] for c in res["cells"] if c["data"] == 128)
    assert best < math.log(2)


def test_merge_results_pools_seeds_and_refits(tmp_path):
    from preftune.errors import DataError
    from preftune.reward.scaling import merge_results

    files = []
    for seed in (0, 1):
        cells = [{"annotator": "style", "size": "s", "params": 5, "data": d, "seed": seed,
                  "test_loss": power_law(d, 1.0, 0.3, 0.2) * (1.01 if seed else 0.99), "test_accuracy": 0.6,
                  "true_accuracy": 0.55} for d in (16, 64, 256)]
        f = tmp_path / f"r{seed}.json"
        f.write_text(json.dumps({"config": {"task": "sort", "seeds": [seed]}, "cells": cells}))
        files.append(f)
    res = merge_results(files)
    assert res["config"]["seeds"] == [0, 1] and len(res["cells"]) == 6
    (cv,) = res["curves"]
    assert cv["seeds"] == 2 and cv["loss_mean"][0] == pytest.approx(power_law(16, 1.0, 0.3, 0.2))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        merge_results([bad])


def test_style_sort_task_is_registered_and_labels_by_the_style_annotator():
    from preftune.arena.annotators import StyleSortTask
    from preftune.arena.tasks import get_task

    task = get_task("sort_style", style_weight=0.6)
    assert isinstance(task, StyleSortTask)
    p, r = "sort 4321:", "12344"
    assert task.reward(p, r) == SortTask().reward(p, r) == 0.8  # 4 of 5 positions
    assert task.preference_score(p, r) == pytest.approx(0.4 * 0.8 + 0.6 * 5 / 16)
    assert task.config()["style_weight"] == 0.6  # part of the arena's SFT cache key
