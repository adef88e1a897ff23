"""Issue 7, in-process half: non-finite steps, out of memory, SIGTERM, determinism, checkpoint
corruption, atomic writes and the safety audit. The subprocess half (SIGKILL at named
points, SIGINT through the CLI, CLI errors) is tests/test_faults.py; see docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from preftune.errors import CheckpointError, ConfigError
from preftune.io import atomic_path, write_json, write_text
from preftune.train import TrainConfig, train
from preftune.train import checkpoint as ck
from preftune.train import loop
from preftune.callbacks import Callback

from conftest import arithmetic_rows

SRC = Path(__file__).resolve().parents[1] / "src" / "preftune"


def _cfg(tiny_dir, data, out, **kw):
    base = dict(model=str(tiny_dir), data=str(data), output=str(out), loss="dpo", loss_params={"beta": 0.5},
                batch_size=8, lr=5e-3, max_steps=5, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("rel") / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(32, seed=2)))
    return p


@pytest.fixture(scope="module")
def reference(tiny_dir, data_file, tmp_path_factory):
    """One uninterrupted 5-step run: the losses every resumed run must reproduce bitwise."""
    return train(_cfg(tiny_dir, data_file, tmp_path_factory.mktemp("ref") / "run"))


def _losses(res):
    return [r["loss"] for r in res.history]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _AtStep(Callback):
    """Run ``fn(state)`` at the end of the given step."""

    def __init__(self, step, fn):
        self.step, self.fn = step, fn

    def on_step_end(self, state, metrics):
        if state.step == self.step:
            self.fn(state)


def _poison_loss_at(monkeypatch, call: int) -> list[list[int]]:
    """Make the loss of the ``call``-th micro-batch NaN; return the rows of every micro-batch."""
    orig = loop.compute_loss
    seen: list[list[int]] = []

    def poisoned(model, reference, objective, batch, **kw):
        loss, metrics, stats = orig(model, reference, objective, batch, **kw)
        seen.append(list(batch.rows))
        if len(seen) == call:
            loss = loss * float("nan")
        return loss, metrics, stats

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    return seen


# ----------------------------------------------------------------------------- bad rows


def test_skipped_bad_rows_are_counted_reported_and_recorded(tiny_dir, tmp_path, capsys):
    rows = arithmetic_rows(12, seed=4)
    del rows[3]["rejected"]
    rows[7]["chosen"] = 7
    data = tmp_path / "some_bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train(_cfg(tiny_dir, data, tmp_path / "skiprows", max_steps=1, on_bad_row="skip"))
    assert res.skipped_rows == {"missing_field": 1, "wrong_type": 1}
    assert "preftune: skipped bad rows (2): missing_field: 1, wrong_type: 1" in capsys.readouterr().out
    info = json.loads((tmp_path / "skiprows" / "run_info.json").read_text())
    assert info["skipped_rows"] == res.skipped_rows and info["train_examples"] == 10


# ----------------------------------------------------------------------------- non-finite


def test_nonfinite_loss_stops_naming_step_and_rows(tiny_dir, data_file, tmp_path, monkeypatch):
    seen = _poison_loss_at(monkeypatch, 3)
    run = tmp_path / "nan"
    with pytest.raises(loop.TrainingError) as info:
        train(_cfg(tiny_dir, data_file, run, save_every=2))
    msg = str(info.value)
    rows = sorted(seen[2])
    assert len(rows) == 8
    assert msg.startswith(f"non-finite loss at step 3 (batch rows {rows} of {data_file}); ")
    assert "--on-nonfinite skip" in msg and "\n" not in msg
    # The run is not lost: the step-2 checkpoint is intact and nothing after it was written.
    ck.verify_checkpoint(run / "checkpoints" / "step-2")
    assert [p.name for _, p in ck.list_checkpoints(run)] == ["step-2"]
    assert not (run / "final").exists()


def test_nonfinite_gradient_stops_naming_step(tiny_dir, data_file, tmp_path):
    def poison_next_backward(state):
        p = next(q for q in state.model.parameters() if q.requires_grad)
        handle = []

        def hook(g):
            handle[0].remove()  # poison one backward only
            return torch.full_like(g, float("inf"))

        handle.append(p.register_hook(hook))

    with pytest.raises(loop.TrainingError, match=r"^non-finite gradient at step 3 \(batch rows \[\d+(, \d+){7}\]"):
        train(_cfg(tiny_dir, data_file, tmp_path / "inf"), callbacks=[_AtStep(2, poison_next_backward)])


def test_nonfinite_skip_counts_logs_and_leaves_weights_untouched(tiny_dir, data_file, tmp_path, monkeypatch,
                                                                  capsys):
    seen = _poison_loss_at(monkeypatch, 3)
    snaps: dict[int, list[torch.Tensor]] = {}

    class Snap(Callback):
        def on_step_end(self, state, metrics):
            snaps[state.step] = [p.detach().clone() for p in state.model.parameters()]

    res = train(_cfg(tiny_dir, data_file, tmp_path / "skip", on_nonfinite="skip"), callbacks=[Snap()])
    assert res.steps == 5 and res.nonfinite_skipped == 1
    out = capsys.readouterr().out
    assert f"preftune: skipped update: non-finite loss at step 3 (rows {sorted(seen[2])})" in out
    losses = _losses(res)
    assert [i for i, v in enumerate(losses, 1) if v != v] == [3]  # only step 3 is NaN
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[3]))  # step 3 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snaps[3], snaps[4]))  # training went on
    recs = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite_skipped", 0) for r in recs] == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- out of memory

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
           "to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("where,err", [
    ("forward", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
    ("forward", RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)")),
    ("forward", RuntimeError(CPU_OOM)),
    ("optimizer", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
], ids=["cuda", "mps", "cpu", "optimizer-step"])
def test_out_of_memory_names_the_settings_that_reduce_memory(tiny_dir, data_file, tmp_path, monkeypatch,
                                                             where, err):
    def boom(*a, **kw):
        raise err

    if where == "forward":
        monkeypatch.setattr(loop, "compute_loss", boom)
    else:
        monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    with pytest.raises(loop.TrainingError) as info:
        train(_cfg(tiny_dir, data_file, tmp_path / "oom", max_length=64))
    msg = str(info.value)
    assert msg.startswith("out of memory at batch_size=8, max_length=64. To reduce memory: ")
    for setting in ("--batch-size", "--grad-accum", "--max-length", "--gradient-checkpointing", "--lora-r",
                    "--ref precomputed", "--dtype bf16", "--chunk-size"):
        assert setting in msg
    assert "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


def test_other_runtime_errors_are_not_reported_as_oom(tiny_dir, data_file, tmp_path, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(loop, "compute_loss", boom)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        train(_cfg(tiny_dir, data_file, tmp_path / "rt"))


# ----------------------------------------------------------------------------- SIGTERM, determinism


def test_sigterm_finishes_step_checkpoints_and_resume_is_the_same_run(tiny_dir, data_file, tmp_path, reference,
                                                                     capsys):
    run = tmp_path / "term"
    old = signal.getsignal(signal.SIGTERM)
    res = train(_cfg(tiny_dir, data_file, run),
                callbacks=[_AtStep(3, lambda s: os.kill(os.getpid(), signal.SIGTERM))])
    assert signal.getsignal(signal.SIGTERM) == old  # handler restored
    assert res.interrupted and res.steps == 3 and res.final_dir is None
    out = capsys.readouterr().out
    assert f"SIGTERM received; checkpoint saved at step 3. Resume with: preftune train --config " \
           f"{run / 'config.yaml'} --resume" in out
    ck.verify_checkpoint(run / "checkpoints" / "step-3")
    resumed = train(_cfg(tiny_dir, data_file, run, resume=True))
    assert "resumed from" in capsys.readouterr().out
    assert _losses(resumed) == _losses(reference)  # bitwise
    _assert_same_weights(_final_weights(run), _final_weights(reference.output_dir))


def test_second_signal_stops_at_once_and_restores_handlers(tiny_dir, data_file, tmp_path):
    old = signal.getsignal(signal.SIGTERM)

    def twice(state):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_dir, data_file, tmp_path / "twice"), callbacks=[_AtStep(2, twice)])
    assert signal.getsignal(signal.SIGTERM) == old


def test_same_seed_and_data_give_bitwise_identical_runs(tiny_dir, data_file, tmp_path, reference):
    again = train(_cfg(tiny_dir, data_file, tmp_path / "again"))
    assert _losses(again) == _losses(reference)
    assert [r["grad_norm"] for r in again.history] == [r["grad_norm"] for r in reference.history]
    _assert_same_weights(_final_weights(again.output_dir), _final_weights(reference.output_dir))
    other = train(_cfg(tiny_dir, data_file, tmp_path / "seed1", seed=1, max_steps=2))
    assert _losses(other)[1] != _losses(reference)[1]  # the comparison can fail: the seed matters


def test_resume_after_a_crash_that_cut_a_metrics_line(tiny_dir, data_file, tmp_path, reference):
    run = tmp_path / "cut"
    train(_cfg(tiny_dir, data_file, run, save_every=2, keep_checkpoints=3))
    for gone in ("checkpoints/step-4", "checkpoints/step-5", "final"):  # as if killed during step 3
        shutil.rmtree(run / gone)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # cut mid-append
    resumed = train(_cfg(tiny_dir, data_file, run, resume=True))
    assert _losses(resumed) == _losses(reference)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]


def test_resume_with_other_settings_is_refused(tiny_dir, data_file, tmp_path):
    run = tmp_path / "other"
    train(_cfg(tiny_dir, data_file, run, max_steps=2, save_every=1, save_final=False))
    for key, value in (("seed", 1), ("batch_size", 4), ("max_steps", 9), ("loss_params", {"beta": 0.1})):
        with pytest.raises(ConfigError, match=rf"^cannot resume {re.escape(str(run))} with other settings "
                                              rf"\({key} .* -> .*\); resume it as it was \(preftune train --config "):
            train(_cfg(tiny_dir, data_file, run, resume=True, **{"max_steps": 2, key: value}))
    # What may change across a resume: checkpointing, logging, progress.
    res = train(_cfg(tiny_dir, data_file, run, resume=True, max_steps=2, save_every=None, log_every=2))
    assert res.steps == 2


# ----------------------------------------------------------------------------- checkpoint corruption


@pytest.fixture
def two_checkpoints(tmp_path):
    """A run directory with intact checkpoints step-1 and step-2 of a small model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    weights = {}
    for step in (1, 2):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        ck.save_checkpoint(tmp_path, ck.TrainerPosition(step, 0, step), model, opt, sched, keep=5)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return tmp_path, model, opt, sched, weights


def _damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    else:
        man = json.loads(path.read_text())
        if how == "garble":
            path.write_text(path.read_text()[:-7] + "}{")
        elif how == "list":
            path.write_text(json.dumps([man]))
        elif how == "no-files":
            path.write_text(json.dumps({"step": man["step"]}))
        elif how == "empty-files":
            path.write_text(json.dumps({"step": man["step"], "files": {}}))
        elif how == "unlists-weights":
            del man["files"]["model.safetensors"]
            path.write_text(json.dumps(man))
        else:
            raise AssertionError(how)


FILE_DAMAGE = [(f, how) for f in ("model.safetensors", "trainer_state.pt", "state.json")
               for how in ("delete", "empty", "truncate", "flip", "append")]
MANIFEST_DAMAGE = [("manifest.json", how) for how in ("delete", "empty", "truncate", "garble", "list", "no-files",
                                                      "empty-files", "unlists-weights")]
DAMAGE = FILE_DAMAGE + MANIFEST_DAMAGE


@pytest.mark.parametrize("name,how", DAMAGE, ids=[f"{n}-{h}" for n, h in DAMAGE])
def test_damaged_checkpoint_is_refused_and_fallback_only_when_asked(two_checkpoints, name, how, capsys):
    run, model, opt, sched, weights = two_checkpoints
    bad = run / "checkpoints" / "step-2"
    _damage(bad / name, how)
    with pytest.raises(CheckpointError) as info:
        ck.verify_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg
    assert ("manifest.json" in msg) if name == "manifest.json" else (f"file {name} is" in msg)
    with pytest.raises(CheckpointError, match="pass --resume-fallback"):
        ck.latest_checkpoint(run)
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(bad, model, opt, sched)
    good = ck.latest_checkpoint(run, fallback=True)
    assert good == run / "checkpoints" / "step-1"
    assert "skipping bad checkpoint" in capsys.readouterr().out
    state = ck.load_checkpoint(good, model, opt, sched)
    assert state["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[1][k])


def test_intact_checkpoints_verify_and_the_newest_is_chosen(two_checkpoints):
    run, *_ = two_checkpoints
    for _, p in ck.list_checkpoints(run):
        ck.verify_checkpoint(p)
    assert ck.latest_checkpoint(run) == run / "checkpoints" / "step-2"


def test_all_checkpoints_bad_is_an_error_even_with_fallback(two_checkpoints):
    run, *_ = two_checkpoints
    for step in (1, 2):
        _damage(run / "checkpoints" / f"step-{step}" / "model.safetensors", "flip")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*checkpoints \(2 corrupted\); "
                                              r"pass --overwrite"):
        ck.latest_checkpoint(run, fallback=True)


def test_leftover_temp_checkpoint_is_ignored_and_pruned(two_checkpoints):
    run, model, opt, sched, _ = two_checkpoints
    stray = run / "checkpoints" / ".step-3.abc.tmp"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"half")
    assert ck.latest_checkpoint(run) == run / "checkpoints" / "step-2"
    ck.save_checkpoint(run, ck.TrainerPosition(3, 0, 3), model, opt, sched, keep=2)
    assert not stray.exists()
    assert [p.name for _, p in ck.list_checkpoints(run)] == ["step-2", "step-3"]


# ----------------------------------------------------------------------------- atomic writes


class Crash(Exception):
    pass


@pytest.mark.parametrize("exists", [False, True], ids=["new", "replace"])
def test_atomic_file_write_never_leaves_a_half_file(tmp_path, exists):
    target = tmp_path / "metrics.json"
    if exists:
        write_json(target, {"old": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(Crash):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise Crash
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp file left either
    if exists:
        assert json.loads(target.read_text()) == {"old": 1}
    write_text(target, "whole\n")
    assert target.read_text() == "whole\n"


@pytest.mark.parametrize("exists", [False, True], ids=["new", "replace"])
def test_atomic_dir_write_never_leaves_a_half_dir(tmp_path, exists):
    target = tmp_path / "final"
    if exists:
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "model.safetensors").write_text("old")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(Crash):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "model.safetensors").write_text("new, half")
            raise Crash
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if exists:
        assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
        assert (target / "model.safetensors").read_text() == "old"


def test_crash_while_saving_final_keeps_the_previous_final(tiny_dir, data_file, tmp_path, monkeypatch):
    res = train(_cfg(tiny_dir, data_file, tmp_path / "fin", max_steps=1))
    before = {p.name: p.read_bytes() for p in res.final_dir.iterdir()}

    def crash(*a, **kw):
        raise Crash

    monkeypatch.setattr(type(res.tokenizer), "save_pretrained", crash)  # after the weights are written
    with pytest.raises(Crash):
        loop.save_final(res.model, res.tokenizer, res.final_dir)
    assert {p.name: p.read_bytes() for p in res.final_dir.iterdir()} == before
    assert [p.name for p in res.final_dir.parent.iterdir() if p.name.startswith(".final")] == []


# ----------------------------------------------------------------------------- safety audit


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))]


def _hits(pattern: str, allow=lambda line: False) -> list[str]:
    rx = re.compile(pattern)
    out = []
    for path, text in _sources():
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if rx.search(code) and not allow(code):
                out.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    return out


def test_audit_finds_the_source():
    assert len(_sources()) > 20 and any(p.name == "checkpoint.py" for p, _ in _sources())
    assert _hits(r"torch\.load\(")  # the audit below sees the one torch.load there is


def test_no_unsafe_deserialisation_or_code_execution():
    assert _hits(r"torch\.load\(", allow=lambda c: "weights_only=True" in c) == []
    assert _hits(r"\b(pickle|cPickle|dill|marshal|shelve|joblib)\b") == []
    assert _hits(r"(?<![.\w])(eval|exec|compile)\(") == []  # model.eval() is fine; builtins are not
    assert _hits(r"yaml\.(load|full_load|unsafe_load|load_all)\(") == []
    assert _hits(r"allow_pickle\s*=\s*True|read_pickle|torch\.jit\.load") == []
    assert _hits(r"trust_remote_code\s*=\s*True") == []
    # one process start in the package: --generation-process runs preftune's own generation module with this
    # interpreter (sys.executable -m preftune.online.actor), no shell, no user code
    spawn = _hits(r"os\.system\(|subprocess|shell\s*=\s*True")
    assert [h for h in spawn if not h.startswith("online/async_source.py:")] == []
    starts = [h for h in spawn if "Popen(" in h]
    assert len(starts) == 1 and '[sys.executable, "-m", "preftune.online.actor"' in starts[0]
    assert _hits(r"shell\s*=\s*True|os\.system\(") == []


def test_weights_are_saved_and_loaded_only_as_safetensors():
    assert _hits(r"save_pretrained\(", allow=lambda c: "safe_serialization=True" in c
                 or re.search(r"\btok(enizer)?\.save_pretrained", c) or '"adapter"' in c
                 or re.search(r"\b(generation_)?config\.save_pretrained", c)) == []  # configs are JSON
    # torch.save holds the optimizer/scheduler/RNG state of a checkpoint only (read back with weights_only=True).
    assert [h.split(":")[0] for h in _hits(r"torch\.save\(")] == ["train/checkpoint.py"]
    assert '"use_safetensors": True' in (SRC / "models" / "loading.py").read_text()
    # Every model load goes through load_model (safetensors only) except the demo, which reloads
    # the tiny model and final/ it has just written itself.
    loads = _hits(r"AutoModel\w*\.from_pretrained\(")
    assert {h.split(":")[0] for h in loads} <= {"models/loading.py", "demo.py"}, loads


def test_trust_remote_code_is_off_by_default():
    import inspect

    from preftune.models.loading import load_model, load_tokenizer

    assert TrainConfig().trust_remote_code is False
    for fn in (load_model, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    # Every other from_pretrained call leaves transformers' default (False) alone.
    assert _hits(r"trust_remote_code\s*=\s*(True|1)\b") == []
