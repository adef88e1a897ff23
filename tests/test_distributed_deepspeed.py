"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (gloo) reproduce the one-process run with the same global batch;
their checkpoints are full tensors in the one-process format and resume on another number of processes and under
another engine.

Each run is a real launch (``torchrun --standalone``, 2 processes, one thread each) compared with a one-process
launch with twice the gradient accumulation. ``--max-grad-norm 0.2`` is below every step's norm (0.24-0.33), so
DeepSpeed's clipping acts on every step and must equal ``clip_grad_norm_``'s. Tolerance 1e-6 (relative above 1):
measured, the losses are identical and the gradient norms agree to 3.7e-7 relative -- ZeRO sums the squares per
partition, then over processes, torch over the whole gradient, so the last bits of the norm differ.

The stage is ``TrainConfig.deepspeed_stage`` when the config has that field (``--deepspeed-stage``); until then a
small launcher sets the attribute the engine reads (``getattr(cfg, "deepspeed_stage", 2)``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import arithmetic_rows

TOL = 1e-6

LAUNCHER = '''import sys

import preftune.cli.train as cli

stage = int(sys.argv.pop(1))
build = cli.config_from_args


def with_stage(args):
    cfg = build(args)
    cfg.deepspeed_stage = stage
    return cfg


cli.config_from_args = with_stage
from preftune.cli.main import main  # noqa: E402

sys.exit(main())
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def launch(engine: str | int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``engine``: 1 (one process, no launcher) or ``deepspeed2``/``deepspeed3`` (torchrun, 2 processes)."""
    if engine == 1:
        cmd = [sys.executable, "-m", "preftune", *args]
    else:
        stage = str(engine)[-1]
        from preftune.train.config import TrainConfig

        if "deepspeed_stage" in TrainConfig.__dataclass_fields__:
            entry, args = ["-m", "preftune"], (*args, "--deepspeed-stage", stage)
        else:
            entry = [str(cwd / "stage.py"), stage]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", *entry, *args,
               "--distributed", "deepspeed"]
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{engine}: {' '.join(args[:2])} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(a: list[dict], b: list[dict], keys=("loss", "grad_norm")) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            assert abs(ra[k] - rb[k]) <= TOL * max(1.0, abs(ra[k])), (ra["step"], k, ra[k], rb[k])


def train_args(out: str, accum: int, *extra: str) -> list[str]:
    return ["train", "--model", "model", "--data", "pairs.jsonl", "--max-steps", "4", "--batch-size", "4",
            "--lr", "1e-3", "--max-grad-norm", "0.2", "--no-progress", "--save-every", "2", "--eval-data",
            "eval.jsonl", "--eval-every", "2", "--grad-accum", str(accum), "--output", out, *extra]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dir):
    pytest.importorskip("deepspeed")
    d = tmp_path_factory.mktemp("ds")
    rows = [r for r in arithmetic_rows(80, seed=2) if r["chosen"] != r["rejected"]][:64]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(10, seed=9)
                                          if r["chosen"] != r["rejected"]))
    (d / "model").symlink_to(tiny_dir)
    (d / "stage.py").write_text(LAUNCHER)
    launch(1, *train_args("one", 2), cwd=d)
    return d


@pytest.fixture(scope="module")
def runs(work):
    """The 2-process runs, once per stage (their checkpoints are resumed below)."""
    for engine in ("deepspeed2", "deepspeed3"):
        launch(engine, *train_args(engine, 1), cwd=work)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_processes_reproduces_one_with_the_same_global_batch(runs, stage):
    out = runs / f"deepspeed{stage}"
    info = json.loads((out / "run_info.json").read_text())
    assert (info["engine"], info["processes"], info["backend"], info["zero_stage"]) == ("deepspeed", 2, "gloo", stage)
    one, two = metrics(runs / "one"), metrics(out)
    assert all(r["grad_norm"] > 0.2 for r in one)  # clipping acts on every step
    assert_same_steps(one, two)
    assert_same_steps([r for r in one if "eval/loss" in r], [r for r in two if "eval/loss" in r], keys=("eval/loss",))
    # final/ is a normal Hugging Face directory with the full weights (stage 3: gathered), equal to the 1-process run's
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    a, b = load_file(str(runs / "one/final/model.safetensors")), load_file(str(out / "final/model.safetensors"))
    assert set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)
    # AdamW's m / sqrt(v) amplifies the last-bit differences of a tiny gradient component (|g| ~ eps): the weights
    # agree to 1e-5 after 4 steps of at most lr = 1e-3 each (measured: stage 2 1.2e-8, stage 3 8.3e-7 to 1.1e-6)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() > 0
    # the checkpoint's AdamW state is full and per parameter, like a one-process run's
    import torch

    sa = torch.load(runs / "one/checkpoints/step-4/trainer_state.pt", weights_only=True)["optimizer"]
    sb = torch.load(out / "checkpoints/step-4/trainer_state.pt", weights_only=True)["optimizer"]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i, s in sa["state"].items():
        assert float(s["step"]) == float(sb["state"][i]["step"]) == 4.0
        for k in ("exp_avg", "exp_avg_sq"):
            assert s[k].shape == sb["state"][i][k].shape
            assert float((s[k] - sb["state"][i][k]).abs().max()) <= 1e-5 * max(1e-3, float(s[k].abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("engines", [("deepspeed2", 1), ("one", "deepspeed3"), ("deepspeed3", "deepspeed2")],
                         ids=["zero2-to-1", "1-to-zero3", "zero3-to-zero2"])
def test_a_checkpoint_resumes_on_another_number_of_processes_or_engine(runs, engines):
    first, then = engines
    out = f"resume-{first}-{then}"
    # the first run as if it had stopped after step 2: its later checkpoint and final/ are gone
    shutil.copytree(runs / first, runs / out, symlinks=True)
    shutil.rmtree(runs / out / "checkpoints" / "step-4")
    shutil.rmtree(runs / out / "final")
    p = launch(then, *train_args(out, 2 if then == 1 else 1, "--resume"), cwd=runs)
    assert "resumed from" in p.stdout and "(step 2)" in p.stdout
    assert_same_steps(metrics(runs / "one"), metrics(runs / out))


def test_the_deepspeed_config_leaves_accumulation_and_clipping_to_the_loop():
    from types import SimpleNamespace

    from preftune.train.deepspeed_engine import ds_config

    cfg = SimpleNamespace(batch_size=4, max_grad_norm=0.5, dtype="fp32")
    c = ds_config(cfg, 2, 3)
    # the loop divides by grad_accum itself: DeepSpeed must not divide again
    assert c["gradient_accumulation_steps"] == 1 and c["train_batch_size"] == 8
    assert c["gradient_clipping"] == 0.5 and c["zero_optimization"]["stage"] == 3 and not c["bf16"]["enabled"]
    assert ds_config(SimpleNamespace(batch_size=2, max_grad_norm=None, dtype="bf16"), 4, 2)["gradient_clipping"] == 0.0
    assert ds_config(SimpleNamespace(batch_size=2, max_grad_norm=None, dtype="bfloat16"), 4, 2)["bf16"]["enabled"]


def test_without_deepspeed_the_error_names_the_extra(monkeypatch):
    import torch

    from preftune.errors import ConfigError
    from preftune.train.deepspeed_engine import import_deepspeed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # an import of it now fails, as when not installed
    with pytest.raises(ConfigError, match=r"pip install 'preftune\[deepspeed\]'") as e:
        import_deepspeed(torch.device("cpu"))
    assert "\n" not in str(e.value)
