"""Objectives own their state (issue 11): BCO's running reward shift and LCPO's noise-rate estimate are
modules with a state dict, saved in every checkpoint and restored on resume, so a resumed run repeats
the uninterrupted one bitwise (before, both were plain attributes and were lost on resume)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from preftune.objectives import build, get
from preftune.objectives.base import objective_state
from preftune.train import TrainConfig, train


def _cfg(tiny_dir, data, out, **kw):
    base = dict(model=str(tiny_dir), data=str(data), output=str(out), batch_size=8, lr=5e-3, max_steps=6,
                save_every=3, progress=False, group_by_length=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _resumed_equals_full(tiny_dir, data, tmp_path, **kw):
    full = train(_cfg(tiny_dir, data, tmp_path / "full", **kw))
    run = tmp_path / "cut"
    train(_cfg(tiny_dir, data, run, **kw))
    shutil.rmtree(run / "checkpoints" / "step-6")   # "crash" after the step-3 checkpoint
    shutil.rmtree(run / "final")
    resumed = train(_cfg(tiny_dir, data, run, resume=True, **kw))
    return full, resumed, run


@pytest.fixture
def unpaired_file(tmp_path, pair_rows):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in pair_rows[:16]]
    rows += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in pair_rows[16:]]
    return _write(tmp_path / "unpaired.jsonl", rows)


@pytest.fixture
def pair_file(tmp_path, pair_rows):
    return _write(tmp_path / "pairs.jsonl", pair_rows)


def test_bco_running_shift_survives_resume_bitwise(tiny_dir, unpaired_file, tmp_path):
    full, resumed, run = _resumed_equals_full(tiny_dir, unpaired_file, tmp_path, loss="bco",
                                              loss_params={"beta": 0.5, "shift": "running"})
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h["delta"] for h in resumed.history] == [h["delta"] for h in full.history]
    from safetensors.torch import load_file

    saved = load_file(str(run / "checkpoints" / "step-3" / "extra_modules.safetensors"))
    assert set(saved) == {"running.total", "running.count"}
    assert int(saved["running.count"]) == 3 * 8  # three steps of eight rewards, evaluation excluded
    assert saved["running.total"].dtype == torch.float64


def test_lcpo_noise_estimate_survives_resume_bitwise(tiny_dir, pair_file, tmp_path):
    kw = dict(loss="lcpo", loss_params={"beta": 0.5, "momentum": 0.5, "noise_init": 0.2})
    full, resumed, run = _resumed_equals_full(tiny_dir, pair_file, tmp_path, **kw)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    rates = [h["lcpo/noise_rate"] for h in full.history]
    assert rates[0] != rates[-1]  # the estimate moved, so losing it would show
    assert [h["lcpo/noise_rate"] for h in resumed.history] == rates


def test_objective_state_collects_parts_and_shares_them():
    bco = get("bco", beta=0.5)
    st = objective_state(bco)
    assert set(st.state_dict()) == {"running.total", "running.count"}
    bco.running.add(3.0, 2)
    assert float(st.state_dict()["running.total"]) == 3.0  # shared, not copied
    assert bco.delta == 1.5
    # a composition nests each term's state; a stateless objective has none
    combo = build("dpo:1,lcpo:0.5")
    assert set(objective_state(combo).state_dict()) == {"term1.estimate.rate"}
    assert len(objective_state(get("dpo")).state_dict()) == 0


def test_state_restores_into_a_fresh_objective():
    a, b = get("lcpo", noise_init=0.1), get("lcpo", noise_init=0.1)
    a.estimate.rate.fill_(0.3)
    objective_state(b).load_state_dict(objective_state(a).state_dict())
    assert b.noise_rate == 0.3
