"""--report-to wiring: every logged metric reaches TensorBoard / W&B at its step.

The real packages are optional extras and not installed for `make test`; these tests put
recording stand-ins for ``torch.utils.tensorboard`` and ``wandb`` in ``sys.modules`` and check
what preftune hands them (the API surface used: SummaryWriter(log_dir).add_scalar/close,
wandb.init(dir, config, project).log(step=)/finish). A missing package is a one-line ConfigError.
"""
from __future__ import annotations

import json
import sys
import types

import pytest

from preftune.errors import ConfigError
from preftune.train import TrainConfig, train


def _cfg(tiny_dir, data, out, **kw):
    return TrainConfig(model=str(tiny_dir), data=str(data), output=str(out), loss="dpo", batch_size=8, lr=5e-3,
                       max_steps=3, progress=False, seed=0, **kw)


@pytest.fixture
def data_file(tmp_path, pair_rows):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    return p


class _Writer:
    made: list["_Writer"] = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        _Writer.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class _Run:
    def __init__(self, **kw):
        self.init_kw, self.logged, self.finished = kw, [], False

    def log(self, d, step):
        self.logged.append((dict(d), step))

    def finish(self):
        self.finished = True


def test_tensorboard_gets_every_metric_at_its_step(tiny_dir, data_file, tmp_path, monkeypatch):
    _Writer.made.clear()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_Writer))
    res = train(_cfg(tiny_dir, data_file, tmp_path / "run", report_to=["tensorboard"]))
    (w,) = _Writer.made
    assert w.log_dir == str(tmp_path / "run" / "tensorboard") and w.closed
    for h in res.history:
        got = {tag: v for tag, v, step in w.scalars if step == h["step"]}
        assert got["loss"] == pytest.approx(h["loss"]) and got["rewards/margins"] == pytest.approx(h["rewards/margins"])
        assert "step" not in got
    assert sorted({s for _, _, s in w.scalars}) == [1, 2, 3]


def test_wandb_runs_offline_without_a_key_and_gets_the_config(tiny_dir, data_file, tmp_path, monkeypatch):
    runs: list[_Run] = []

    def init(**kw):
        runs.append(_Run(**kw))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    res = train(_cfg(tiny_dir, data_file, tmp_path / "run", report_to=["wandb"]))
    (run,) = runs
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert run.init_kw["dir"] == str(tmp_path / "run") and run.init_kw["config"]["loss"] == "dpo"
    assert [s for _, s in run.logged] == [1, 2, 3] and run.finished
    assert run.logged[-1][0]["loss"] == pytest.approx(res.history[-1]["loss"])


@pytest.mark.parametrize("name,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_reporter_package_is_a_config_error(tiny_dir, data_file, tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import` raise ImportError
    with pytest.raises(ConfigError, match=f"preftune\\[{name}\\]"):
        train(_cfg(tiny_dir, data_file, tmp_path / "run", report_to=[name]))
    assert not (tmp_path / "run" / "final").exists()
