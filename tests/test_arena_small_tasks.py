"""Arena on a task with fewer distinct prompts than the train and eval prompts requested (issue 13)."""
import json
import random

import pytest

from preftune.arena.models import SFTConfig
from preftune.arena.run import evaluation_note, heldout_prompts, run_arena
from conftest import SevenTask


def test_heldout_prompts_fall_back_to_training_prompts():
    task = SevenTask()
    train = task.sample_prompts(48, random.Random("t"))
    assert len(set(train)) == 7
    ev, src = heldout_prompts(task, train, 16, seed=0)
    assert src == "train" and len(ev) == 16 and set(ev) <= set(train)
    assert evaluation_note([{"seed": 0, "eval_prompt_source": src}]).startswith("Evaluation on training prompts")


def test_heldout_prompts_unchanged_when_unseen_prompts_exist():
    class Big(SevenTask):
        def sample_prompts(self, n, rng):
            return [f"n {rng.randint(0, 10_000)}:" for _ in range(n)]

    task = Big()
    train = task.sample_prompts(20, random.Random("t"))
    ev, src = heldout_prompts(task, train, 8, seed=1)
    assert src == "heldout" and len(ev) == 8 and not set(ev) & set(train)
    assert evaluation_note([{"seed": 1, "eval_prompt_source": src}]) == ""


@pytest.mark.slow
def test_seven_prompt_task_runs_and_says_so(tmp_path):
    out = tmp_path / "arena"
    sft = SFTConfig(demos=200, steps=30, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    res = run_arena(SevenTask(), objectives=["dpo"], seeds=[0], out_dir=out, cache_dir=str(tmp_path / "cache"),
                    sft=sft, train_prompts=48, steps=2, batch_size=8, eval_prompts=16, eval_samples=2,
                    progress=False)
    assert set(res) == {"sft (reference)", "dpo"}
    assert 0.0 <= res["dpo"]["win_rate_vs_sft"] <= 1.0
    meta = json.loads((out / "results.json").read_text())
    assert meta["evaluation_note"].startswith("Evaluation on training prompts")
    assert meta["data"][0]["eval_prompt_source"] == "train" and meta["data"][0]["eval_prompts"] == 16
    assert "Evaluation on training prompts" in (out / "leaderboard.md").read_text()
    assert "Evaluation on training prompts" in (out / "report.html").read_text()
