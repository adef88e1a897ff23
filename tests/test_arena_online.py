"""Online contestants in the arena, beside offline objectives, at an equal budget of reward calls."""
import json

import pytest

from preftune.arena.models import SFTConfig
from preftune.arena.online import online_steps
from preftune.arena.run import ArenaConfig, reproduce_command, run_arena
from preftune.errors import ConfigError
from conftest import EvenTask


def test_online_steps_spend_the_offline_budget():
    assert online_steps("grpo", 4096, 32, 4) == (128, 32)
    assert online_steps("online_dpo", 4096, 32, 2) == (64, 64)
    assert online_steps("ppo", 10, 32, 1) == (1, 32)  # at least one step
    with pytest.raises(ConfigError, match="runs in rounds"):
        online_steps("iterative_dpo", 100, 8, 4)


def test_arena_config_checks_online_names():
    with pytest.raises(ConfigError, match="online 'dpo'"):
        ArenaConfig(online=["dpo"])
    assert "--online grpo,ppo" in reproduce_command(ArenaConfig(online=["grpo", "ppo"]))


@pytest.mark.slow
def test_online_contestants_run_beside_offline_ones(tmp_path):
    out = tmp_path / "arena"
    sft = SFTConfig(demos=400, steps=150, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    res = run_arena(EvenTask(), objectives=["dpo"], seeds=[0], out_dir=out, cache_dir=str(tmp_path / "cache"),
                    sft=sft, train_prompts=16, samples_per_prompt=4, steps=2, batch_size=8, eval_prompts=16,
                    eval_samples=2, progress=False, online=["grpo", "ppo", "online_dpo"])
    assert set(res) == {"sft (reference)", "dpo", "grpo (online)", "ppo (online)", "online_dpo (online)"}
    # the same budget: 16 prompts x 4 samples = 64 reward calls
    assert res["dpo"]["reward_calls"] == 64
    assert res["grpo (online)"]["reward_calls"] == 64      # 8 steps of 8 completions
    assert res["ppo (online)"]["reward_calls"] == 64       # 8 steps of 8 completions
    assert res["online_dpo (online)"]["reward_calls"] == 64  # 4 steps of 8 pairs
    assert len(res["grpo (online)"]["history"][0]) == 8
    meta = json.loads((out / "results.json").read_text())
    assert "--online grpo,ppo,online_dpo" in meta["command"]
