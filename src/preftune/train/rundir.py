"""The run directory's bookkeeping: preparing it, the resolved config and run info, the metrics log,
and refusing to resume a run with other settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import write_json, write_text
from .config import TrainConfig


def prepare_run_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    if out.exists() and (out / "metrics.jsonl").exists() and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output directory {out} already holds a run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".final.*.tmp"):  # left by a run killed while writing final/
        shutil.rmtree(stale, ignore_errors=True)
    return out


# Settings that make a different run (data, its order, objective, schedule, numerics). Layout,
# chunk size, device, logging and checkpointing may change across a resume.
RUN_KEYS = ("model", "data", "split", "loss", "loss_params", "ref", "ref_model", "max_steps", "epochs",
            "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_ratio", "warmup_steps", "weight_decay",
            "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm", "seed", "dtype", "lora_r", "lora_alpha",
            "lora_dropout", "lora_target", "max_length", "max_prompt_length", "truncation", "on_bad_row",
            "group_by_length")


def check_same_run(out: Path, cfg: TrainConfig) -> None:
    """Refuse to resume with other settings: that would silently train a different run under this one's name."""
    import yaml

    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(saved, dict):
        return
    now = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))

    def same(k: str) -> bool:
        a, b = saved[k], now.get(k)
        return a == b or (k in ("model", "data", "ref_model") and isinstance(a, str) and isinstance(b, str)
                          and Path(a).resolve() == Path(b).resolve())

    diff = [f"{k} {saved[k]!r} -> {now.get(k)!r}" for k in RUN_KEYS if k in saved and not same(k)]
    if diff:
        raise ConfigError(f"cannot resume {out} with other settings ({'; '.join(diff)}); resume it as it was "
                          f"(preftune train --config {out / 'config.yaml'} --resume) or start a new run in "
                          "another --output")


def truncate_metrics(path: Path, start_step: int) -> list[dict[str, float]]:
    """Keep the records up to ``start_step`` (a resumed run rewrites what came after)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", 0) <= start_step:
            kept.append(rec)
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_metrics(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def write_config(out: Path, cfg: TrainConfig, info: dict[str, Any]) -> None:
    """``config.yaml`` (the resolved config) and ``run_info.json`` (what the run found: data, reference, ...)."""
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(out / "run_info.json", info)
