"""The arena labels pairs with a trained reward model (issue 14): the reward model trains on annotator-labelled
pairs of other prompts, labels the policies' pairs, and the report gives its accuracy against the true reward."""
from __future__ import annotations

import json
import math

import pytest

from preftune.arena import ArenaConfig, SFTConfig, run_arena
from preftune.arena.labelling import pair_accuracy, rescore
from preftune.arena.run import reproduce_command
from preftune.data.types import PairExample
from preftune.errors import ConfigError
from conftest import EvenTask


class LenScorer:
    """A fake reward model: the response's length."""

    def score(self, prompts, responses):
        import torch
        return torch.tensor([float(len(r)) for r in responses])


def test_rescore_and_pair_accuracy():
    scored = [[("p", "a", 1.0), ("p", "abc", 0.0)], [], [("q", "xy", 0.5)]]
    assert rescore(scored, LenScorer()) == [[("p", "a", 1.0), ("p", "abc", 3.0)], [], [("q", "xy", 2.0)]]
    pairs = [PairExample("p", "abc", "a"), PairExample("p", "a", "abc"), PairExample("p", "ab", "xy")]
    assert pair_accuracy(LenScorer(), pairs) == pytest.approx(1 / 3)   # a tie counts as wrong
    assert math.isnan(pair_accuracy(LenScorer(), []))


def test_config_and_cli_options():
    from preftune.cli.arena import config_from_args
    from preftune.cli.main import build_parser

    assert ArenaConfig().labeller == "true_reward"
    with pytest.raises(ConfigError, match="labeller='human'"):
        ArenaConfig(labeller="human")
    with pytest.raises(ConfigError, match="rm_steps must be > 0"):
        ArenaConfig(rm_steps=0)
    with pytest.raises(ConfigError, match="rm_k must be >= 0"):
        ArenaConfig(rm_k=-1)
    args = build_parser().parse_args(
        ["arena", "--labeller", "reward_model", "--rm-train-prompts", "64", "--rm-steps", "9", "--rm-batch-size",
         "4", "--rm-lr", "0.002", "--rm-members", "3", "--rm-k", "0.5"])
    cfg = config_from_args(args)
    assert (cfg.labeller, cfg.rm_train_prompts, cfg.rm_steps, cfg.rm_batch_size, cfg.rm_lr, cfg.rm_members,
            cfg.rm_k) == ("reward_model", 64, 9, 4, 0.002, 3, 0.5)
    cmd = reproduce_command(cfg)
    assert "--labeller reward_model" in cmd and "--rm-steps 9" in cmd and "--rm-members 3" in cmd
    assert "--labeller" not in reproduce_command(ArenaConfig())


# test_arena.py's tiny model, fitted a little longer (60 steps): it answers 'e' or 'o' often enough that the
# sampled answers to about half the prompts differ in true reward, so both the reward model and the policies get pairs
SFT = SFTConfig(demos=200, steps=60, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("arena-cache"))


@pytest.mark.slow
def test_arena_labels_with_a_reward_model_and_reports_its_accuracy(tmp_path, cache):
    out = tmp_path / "arena"
    res = run_arena(EvenTask(), objectives=["dpo"], seeds=[0], out_dir=out, cache_dir=cache,
                    sft=SFT, train_prompts=48, steps=3, batch_size=8, eval_prompts=16, eval_samples=2,
                    progress=False, labeller="reward_model", rm_train_prompts=64, rm_steps=40, rm_batch_size=16,
                    rm_lr=3e-3)
    assert set(res) == {"sft (reference)", "dpo"}
    assert "rm_reward" in res["dpo"] and "rm_reward" in res["sft (reference)"]   # the proxy beside the truth
    saved = json.loads((out / "results.json").read_text())
    lab = saved["labeller"]
    assert lab["kind"] == "reward_model" and lab["settings"]["rm_steps"] == 40
    s = lab["per_seed"][0]
    assert s["heldout_pairs"] > 0 and s["train_pairs"] > 0 and s["policy_pairs"] > 0
    assert 0.0 <= s["accuracy"] <= 1.0 and lab["accuracy"] == s["accuracy"]
    # the policies' pairs are the reward model's: its scores, and the true rewards beside them
    rows = [json.loads(x) for x in (out / "data" / "seed0" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all(r["score_chosen"] > r["score_rejected"] for r in rows)
    assert {"true_reward_chosen", "true_reward_rejected"} <= set(rows[0])
    truth = [r["true_reward_chosen"] > r["true_reward_rejected"] for r in rows
             if r["true_reward_chosen"] != r["true_reward_rejected"]]
    assert s["label_agreement"] == pytest.approx(sum(truth) / len(truth))
    # the scores in the pairs are not the true reward (0 or 1 on this task)
    assert any(r["score_chosen"] not in (0.0, 1.0) for r in rows)
    assert (out / "reward_model" / "seed0" / "member-0" / "metrics.jsonl").exists()
    assert (out / "reward_model" / "seed0" / "pairs.jsonl").exists()
    md = (out / "leaderboard.md").read_text()
    assert "## Labeller: reward model" in md and f"held-out **{s['accuracy']:.3f}**" in md
    assert "> **Note.** Labeller: a reward model" in md and "--labeller reward_model" in md
    html = (out / "report.html").read_text()
    assert "<h2>Labeller: reward model</h2>" in html and "Labeller: a reward model" in html
    assert saved["timings"]["reward_model"] > 0


@pytest.mark.slow
def test_arena_reward_model_ensemble_labeller(tmp_path, cache):
    out = tmp_path / "arena"
    run_arena(EvenTask(), objectives=["dpo"], seeds=[0], out_dir=out, cache_dir=cache, sft=SFT,
              train_prompts=32, steps=2, batch_size=8, eval_prompts=12, eval_samples=1, progress=False,
              labeller="reward_model", rm_train_prompts=48, rm_steps=5, rm_batch_size=16, rm_members=2, rm_k=0.5)
    lab = json.loads((out / "results.json").read_text())["labeller"]
    assert lab["settings"]["rm_members"] == 2 and len(lab["per_seed"][0]["member_accuracy"]) == 2
    assert lab["score"].startswith("mean - rm_k * std")
    assert (out / "reward_model" / "seed0" / "member-1" / "run_info.json").exists()
    assert "an ensemble of 2 reward models" in (out / "leaderboard.md").read_text()


def test_default_labeller_reports_true_reward(tmp_path):
    from preftune.arena.run import labeller_summary

    assert labeller_summary(ArenaConfig(), [])["kind"] == "true_reward"
