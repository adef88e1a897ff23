"""The training configuration: data (a dataclass), validated once at the edge.

Sources, later ones winning: the defaults below, a YAML recipe (``--config``, read with
``yaml.safe_load``), then command-line ``--key value`` options. Objective hyperparameters
(``--beta 0.1``) go to ``loss_params`` and are validated by the objective itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

REF_SOURCES = ("auto", "model", "adapter", "precomputed", "none")
LAYOUTS = ("auto", "padded", "prefix_shared", "packed")
SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    # what to train -------------------------------------------------------------------
    model: str = ""
    data: str = ""
    output: str = "runs/preftune"
    eval_data: str | None = None
    split: str = "train"
    eval_split: str | None = None
    loss: str = "dpo"
    loss_params: dict[str, Any] = field(default_factory=dict)
    # reference -------------------------------------------------------------------------
    ref: str = "auto"               # auto: adapter under LoRA, none for reference-free, else model
    ref_model: str | None = None    # another checkpoint as reference (defaults to --model)
    ref_cache_dir: str | None = None
    # optimisation ----------------------------------------------------------------------
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-6
    lr_schedule: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    seed: int = 0
    # model -----------------------------------------------------------------------------
    dtype: str = "fp32"
    gradient_checkpointing: bool = False
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"
    trust_remote_code: bool = False
    device: str = "auto"
    # data ------------------------------------------------------------------------------
    max_length: int | None = 1024
    max_prompt_length: int | None = 512
    truncation: str = "keep_end"    # prompt truncation: keep its end (closest to the answer)
    on_bad_row: str = "error"
    layout: str = "auto"            # packed for paired data (fastest, docs/benchmarks.md), else padded
    group_by_length: bool = True
    chunk_size: int = 1024
    # evaluation, logging, checkpoints ---------------------------------------------------
    eval_every: int | None = None
    eval_batch_size: int | None = None
    log_every: int = 1
    save_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    resume_fallback: bool = False   # on a corrupted newest checkpoint, resume from the last good one
    overwrite: bool = False         # replace an existing run in --output
    save_final: bool = True
    report_to: list[str] = field(default_factory=list)
    monitor: list[str] = field(default_factory=list)
    monitor_every: int = 10
    on_nonfinite: str = "stop"
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # --------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.ref in REF_SOURCES, f"ref='{self.ref}' is not allowed; use one of {', '.join(REF_SOURCES)}")
        need(self.layout in LAYOUTS, f"layout='{self.layout}' is not allowed; use one of {', '.join(LAYOUTS)}")
        need(self.lr_schedule in SCHEDULES,
             f"lr_schedule='{self.lr_schedule}' is not allowed; use one of {', '.join(SCHEDULES)}")
        need(self.on_bad_row in ("error", "skip"), f"on_bad_row='{self.on_bad_row}'; use error or skip")
        need(self.on_nonfinite in ("stop", "skip"), f"on_nonfinite='{self.on_nonfinite}'; use stop or skip")
        need(self.truncation in ("keep_end", "keep_start"),
             f"truncation='{self.truncation}'; use keep_end or keep_start")
        need(self.max_steps is None or self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}")
        need(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        need(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        need(self.grad_accum > 0, f"grad_accum must be > 0, got {self.grad_accum}")
        need(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 or null")
        need(self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}")
        need(self.chunk_size > 0, f"chunk_size must be > 0, got {self.chunk_size}")
        need(self.log_every > 0, f"log_every must be > 0, got {self.log_every}")
        need(self.monitor_every > 0, f"monitor_every must be > 0, got {self.monitor_every}")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.max_length is None or self.max_length > 1, "max_length must be > 1 or null")
        need(self.max_prompt_length is None or self.max_prompt_length > 0, "max_prompt_length must be > 0 or null")
        need(self.dtype in ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"),
             f"dtype='{self.dtype}'; use fp32, bf16 or fp16")
        need(self.ref != "adapter" or self.lora_r > 0, "ref='adapter' needs LoRA (set lora_r > 0)")
        for r in self.report_to:
            need(r in ("tensorboard", "wandb"), f"report_to '{r}' is not supported; use tensorboard or wandb")

    # --------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a flat dict; unknown keys become objective hyperparameters (validated later)."""
        known = cls.field_names()
        kwargs = {k.replace("-", "_"): v for k, v in d.items()}
        params = dict(kwargs.pop("loss_params", None) or {})
        for k in list(kwargs):
            if k not in known:
                params[k] = kwargs.pop(k)
        for k in ("report_to", "monitor"):
            if isinstance(kwargs.get(k), str):
                kwargs[k] = [x for x in kwargs[k].split(",") if x]
        try:
            return cls(**kwargs, loss_params=params)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config '{path}': {e.strerror}") from None
        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
        params = d.pop("loss_params", None) or {}
        d.update(params)
        d.update(overrides or {})
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
