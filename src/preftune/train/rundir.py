"""The run directory's bookkeeping: preparing and locking it, the resolved config and run info, the
metrics log, the run's identity, and refusing to resume a run with other settings."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError, ConfigError
from ..io import write_json, write_text
from .config import TrainConfig

LOCK = ".preftune.lock"
# What a run writes; --overwrite removes exactly these (a user's other files stay).
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "config.yaml", "run_info.json", "ref_cache")


def has_run(out: Path) -> bool:
    return any((out / name).exists() for name in ("metrics.jsonl", "checkpoints", "final"))


def prepare_run_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """Check ``cfg.output`` can hold this run and create it. Returns the directory and whether it was created
    now (a run that fails before writing anything removes it again)."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a directory; choose another --output")
    if has_run(out) and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output directory {out} already holds a run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --output")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --output {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to --output {out}: permission denied")
    return out, created


def clear_run(out: Path) -> list[str]:
    """``--overwrite``: remove what the previous run in ``out`` wrote (checkpoints included, so that no later
    ``--resume`` can continue the old run under the new one's name). Returns what was removed."""
    gone = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(name)
        elif p.exists():
            p.unlink()
            gone.append(name)
    return gone


def remove_stale_temps(out: Path) -> None:
    for stale in out.glob(".final.*.tmp"):  # left by a run killed while writing final/
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on the run directory for the whole run: a second ``preftune train`` on the same
    ``--output`` stops with a one-line error instead of interleaving its files with this one's. The lock
    (``flock``) dies with the process, so a killed run never leaves it held."""
    import fcntl

    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write to --output {out}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            raise ConfigError(f"run directory {out} is in use by another preftune process (pid {holder}); "
                              "wait for it to finish, or choose another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# Settings that make a different run (data, its order, objective, schedule, numerics). Layout,
# chunk size, device, logging and checkpointing may change across a resume.
RUN_KEYS = ("model", "data", "split", "loss", "loss_params", "ref", "ref_model", "max_steps", "epochs",
            "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_ratio", "warmup_steps", "weight_decay",
            "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm", "seed", "dtype", "lora_r", "lora_alpha",
            "lora_dropout", "lora_target", "max_length", "max_prompt_length", "truncation", "on_bad_row",
            "group_by_length", "disable_dropout")
_PATH_KEYS = ("model", "data", "ref_model")


def run_settings(cfg: TrainConfig, world: int = 1) -> dict[str, Any]:
    """The settings that identify a run, as plain JSON values (paths made absolute). ``grad_accum`` counts the
    micro-batches of an optimizer step over all ``world`` processes: a run resumes on another number of processes
    when that product, and so the global batch, is unchanged."""
    import yaml

    d = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    out = {k: d.get(k) for k in RUN_KEYS if k in d}
    if isinstance(out.get("grad_accum"), int):
        out["grad_accum"] *= world
    for k in _PATH_KEYS:
        v = out.get(k)
        if isinstance(v, str) and v and Path(v).exists():
            out[k] = str(Path(v).resolve())
    return out


def run_identity(settings: dict[str, Any]) -> str:
    """A hash of the run's settings, recorded in every checkpoint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    def same(k: str) -> bool:
        a, b = saved.get(k), now.get(k)
        return a == b or (k in _PATH_KEYS and isinstance(a, str) and isinstance(b, str) and a and b
                          and Path(a).resolve() == Path(b).resolve())

    extra = sorted(k for k in {*saved, *now} if k not in RUN_KEYS)  # a batch source's own settings
    keys = [k for k in (*RUN_KEYS, *extra) if (k in saved or k in now) and not same(k)]
    return [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys]


def check_same_run(out: Path, cfg: TrainConfig, checkpoint_state: dict[str, Any] | None = None,
                   checkpoint: Path | None = None, *, extra: dict[str, Any] | None = None,
                   command: str = "train", world: int = 1) -> None:
    """Refuse to resume with other settings: that would silently train a different run under this one's name.
    The checkpoint's recorded identity decides (a checkpoint of another run is refused even when
    ``config.yaml`` was replaced); ``config.yaml`` is compared as well, for the message."""
    import yaml

    now = {**run_settings(cfg, world), **(extra or {})}
    hint = (f"resume it as it was (preftune {command} --config {out / 'config.yaml'} --resume) or start a new run in "
            "another --output")
    if checkpoint_state is not None:
        saved_id = checkpoint_state.get("run_id")
        if saved_id is None:
            raise CheckpointError(f"checkpoint {checkpoint} records no run identity (written by an older preftune); "
                                  "it cannot be checked to belong to this run: pass --overwrite to start over")
        if saved_id != run_identity(now):
            diff = _diff(checkpoint_state.get("run_settings") or {}, now)
            raise ConfigError(f"cannot resume {out} with other settings ({'; '.join(diff) or 'run identity differs'}); "
                              + hint)
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if isinstance(saved, dict):
        saved = {k: saved[k] for k in RUN_KEYS if k in saved}
        if isinstance(saved.get("grad_accum"), int):  # config.yaml holds the per-process value
            saved["grad_accum"] *= _saved_processes(out)
        diff = _diff(saved, {k: v for k, v in now.items() if k in saved})
        if diff:
            raise ConfigError(f"cannot resume {out} with other settings ({'; '.join(diff)}); " + hint)


def _saved_processes(out: Path) -> int:
    """How many processes the run in ``out`` was started with (``run_info.json``; 1 before that was recorded)."""
    try:
        n = json.loads((out / "run_info.json").read_text(encoding="utf-8")).get("processes", 1)
        return n if isinstance(n, int) and n > 0 else 1
    except (OSError, ValueError, AttributeError):
        return 1


def truncate_metrics(path: Path, start_step: int, log_every: int = 1) -> list[dict[str, float]]:
    """Keep the records up to ``start_step`` (a resumed run rewrites what came after). A record missing in
    the middle (a line lost or cut other than by a crash during the last append) is reported."""
    if not path.exists():
        return []
    kept = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines):  # only the last line may be cut by a crash mid-append
                print(f"preftune: warning: {path} line {i} is not a JSON record (kept out)")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            print(f"preftune: warning: {path} line {i} has no step (kept out)")
            continue
        if rec["step"] <= start_step:
            kept.append(rec)
    steps = [r["step"] for r in kept if not set(r) <= {"step"} and "loss" in r]
    expected = [s for s in range(1, start_step + 1) if s % log_every == 0 or s == start_step]
    missing = sorted(set(expected) - set(steps) - ({start_step} if start_step % log_every else set()))
    if missing:
        print(f"preftune: warning: {path} has no record for step {missing[0]}"
              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
              + "; the metrics of those steps are lost, training resumes as normal")
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def write_config(out: Path, cfg: TrainConfig, info: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """``config.yaml`` (the resolved config, plus ``extra`` entries such as an online run's options, so that it is a
    recipe that reruns the run) and ``run_info.json`` (what the run found: data, reference, ...)."""
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump({**cfg.to_dict(), **(extra or {})}, sort_keys=False))
    write_json(out / "run_info.json", info)
