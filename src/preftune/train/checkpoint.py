"""Checkpoints: ``checkpoints/step-N/`` with weights (safetensors), the objective's own state
(``extra_modules.safetensors``: trainable parameters such as SparsePO's mask head and running state
such as BCO's reward shift), optimizer and scheduler state (``torch.save``, loaded with
``weights_only=True``), RNG states and the batch source's position, and a ``manifest.json`` of SHA-256
checksums written last.

A checkpoint is written into a temporary directory and renamed into place, so a crash
(even SIGKILL) while writing leaves the previous checkpoint intact and no half-written
``step-N``. On load every file's checksum is verified; a corrupted or truncated checkpoint
is refused with a message.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_path

MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "trainer_state.pt", "state.json")
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerPosition:
    """A step and an offline source's position (``step`` alone, an int, is also accepted)."""

    step: int
    epoch: int
    batch_in_epoch: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any], numpy_state: dict[str, Any] | None) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if numpy_state is not None:
        np.random.set_state((numpy_state["kind"], np.array(numpy_state["keys"], dtype=np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them, or only the adapters under LoRA)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}


OBJECTIVE_STATE = "extra_modules.safetensors"


def has_state(module: Any) -> bool:
    return module is not None and len(module.state_dict()) > 0


def state_tensors(module: Any) -> dict[str, torch.Tensor]:
    """Every entry of ``module``'s state dict (parameters and buffers), contiguous, on CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, position: TrainerPosition | int, model: Any, optimizer: Any, scheduler: Any,
                    extra: dict[str, Any] | None = None, keep: int = 2, objective_state: Any = None, *,
                    model_state: dict[str, torch.Tensor] | None = None,
                    objective_tensors: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> Path:
    """``objective_state``: the objective's own modules (:func:`preftune.objectives.base.objective_state`),
    saved to ``extra_modules.safetensors``; ``extra``: more entries for ``state.json`` (the batch source's
    position). ``model_state``/``objective_tensors``/``optimizer_state``: those states gathered already (full
    tensors of a sharded run, :mod:`preftune.train.distributed`), written instead of reading the modules."""
    from safetensors.torch import save_file

    step = position if isinstance(position, int) else position.step
    ckpt_root = Path(run_dir) / "checkpoints"
    target = ckpt_root / f"step-{step}"
    with atomic_path(target, is_dir=True) as tmp:
        save_file(model_state if model_state is not None else trainable_state(model), str(tmp / "model.safetensors"))
        if has_state(objective_state):
            save_file(objective_tensors if objective_tensors is not None else state_tensors(objective_state),
                      str(tmp / OBJECTIVE_STATE))
        torch.save({"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / "trainer_state.pt")
        state: dict[str, Any] = {"step": step}
        if not isinstance(position, int):
            state.update(epoch=position.epoch, batch_in_epoch=position.batch_in_epoch)
        state.update(numpy_rng=_numpy_state(), **(extra or {}))
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"step": step, "files": {f: _sha256(tmp / f) for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _prune(ckpt_root, keep)
    return target


def _prune(ckpt_root: Path, keep: int) -> None:
    steps = list_checkpoints(ckpt_root.parent)
    for step, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stray in ckpt_root.glob(".step-*"):  # temp dirs left by a killed writer
        shutil.rmtree(stray, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file listed in the manifest is present and intact."""
    man = path / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: it is incomplete")
    try:
        manifest = json.loads(man.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupted") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    # A manifest that lists nothing (or not the files a resume reads) would verify vacuously.
    if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupted (no file checksums)")
    unlisted = sorted(set(REQUIRED_FILES) - set(files))
    if unlisted:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupted (does not list {', '.join(unlisted)})")
    outside = [n for n in files if not _plain_name(n)]
    if outside:  # a crafted manifest must not make a resume read (or checksum) files elsewhere
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} lists a path outside the checkpoint ({outside[0]!r})")
    for name, digest in files.items():
        f = path / name
        if f.is_symlink():
            raise CheckpointError(f"checkpoint {path}: file {name} is a symbolic link (checkpoints hold plain files)")
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path}: file {name} is corrupted (checksum mismatch)")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def latest_checkpoint(run_dir: Path, *, fallback: bool = False) -> Path | None:
    """The newest checkpoint, verified. With ``fallback``, a corrupted newest one is skipped
    (and reported) in favour of the last good one; without it, corruption is an error."""
    found = list_checkpoints(run_dir)
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            if not fallback:
                raise CheckpointError(f"{e}; pass --resume-fallback to resume from the last good checkpoint") \
                    from None
            print(f"preftune: skipping bad checkpoint: {e}")
    if found:  # starting over would silently discard the run (and truncate its metrics)
        raise CheckpointError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'} ({len(found)} corrupted); "
                              "pass --overwrite to start the run over")
    return None


def read_state(path: Path) -> dict[str, Any]:
    """A verified checkpoint's ``state.json`` (step, source position, run identity)."""
    try:
        state = json.loads((Path(path) / "state.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: state.json is unreadable ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {path}: state.json has no step")
    return state


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, objective_state: Any = None, *,
                    engine: Any = None) -> dict[str, Any]:
    """Load a checkpoint into the modules; ``engine`` (:mod:`preftune.train.distributed`) lays the full tensors
    out as the modules hold them (sharded under FSDP2)."""
    from safetensors.torch import load_file

    verify_checkpoint(path)
    weights = load_file(str(path / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = {k for k in model.state_dict() if k in trainable} - set(weights)
    if missing:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {sorted(missing)[:3]}")
    if engine is not None:
        engine.load_model_state(model, weights)
    else:
        model.load_state_dict(weights, strict=False)
    if has_state(objective_state):
        if not (path / OBJECTIVE_STATE).exists():
            raise CheckpointError(f"checkpoint {path} has no {OBJECTIVE_STATE}, the state this objective keeps; "
                                  "was it written by another run?")
        try:
            tensors = load_file(str(path / OBJECTIVE_STATE))
            if engine is not None:
                engine.load_model_state(objective_state, tensors)
            else:
                objective_state.load_state_dict(tensors)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {path}: {OBJECTIVE_STATE} does not match this objective's state "
                                  f"({first})") from None
    st = torch.load(path / "trainer_state.pt", weights_only=True)
    if engine is not None:
        engine.load_optimizer_state(optimizer, st["optimizer"])
    else:
        optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    state = json.loads((path / "state.json").read_text())
    set_rng_state(st["rng"], state.get("numpy_rng"))
    return state
