"""The training configuration: data (a dataclass), validated once at the edge.

Sources, later ones winning: the defaults below, a YAML recipe (``--config``, read with
``yaml.safe_load``), then command-line ``--key value`` options. Objective hyperparameters
(``--beta 0.1``) go to ``loss_params`` and are validated by the objective itself.

Every value is brought to its field's type in one place (:func:`coerce_field`, driven by the
dataclass annotations; the rules are in :mod:`preftune.train.coerce`) before validation, so YAML
recipes, the command line and Python callers get the same rules: ``"false"`` is false, ``"1e-3"`` is
a number (PyYAML reads ``1e-3`` as a string), ``"null"`` is None for an optional field, ``"a,b"`` is
a list for a list field; a value that is not unambiguous is a :class:`~preftune.errors.ConfigError`
naming the key, the value and the type expected.

Objective hyperparameters may be given as keyword arguments in Python, as in a recipe:
``TrainConfig(model=..., data=..., loss="dpo", beta=0.1)`` puts ``beta`` in ``loss_params``. A
name that is neither an option nor a hyperparameter of the chosen objective is an error.

TRL / transformers ``TrainingArguments`` names are accepted where they mean the same
(:data:`TRL_NAMES`, :data:`TRL_VALUE_NAMES`, in :mod:`preftune.train.trl_names`):
``learning_rate: 1e-3`` is ``lr``, ``bf16: true`` is ``dtype: bf16``. Giving a name and its alias
with different values is an error.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .coerce import FieldError, coerce_hparam, coerce_source, coerce_value, describe_source, join_strings
from .trl_names import TRL_NAMES, TRL_VALUE_NAMES, UNSET, from_trl, preftune_value

REF_SOURCES = ("auto", "model", "adapter", "precomputed", "none")
LAYOUTS = ("auto", "padded", "prefix_shared", "packed")
SCHEDULES = ("linear", "cosine", "constant")
REPORTERS = ("tensorboard", "wandb")

# A data source: a file / directory path or hub name (str), or in Python a ``datasets.Dataset`` /
# ``DatasetDict`` or a list of dicts (read by :func:`preftune.data.load_examples`).
DataSource = Any
_SOURCE = {"data_source": True}

COMMAND_LINE = "command line"


@dataclass
class TrainConfig:
    # what to train -------------------------------------------------------------------
    model: str = ""
    data: DataSource = field(default="", metadata=_SOURCE)
    output: str = "runs/preftune"
    eval_data: DataSource | None = field(default=None, metadata=_SOURCE)
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
    disable_dropout: bool = True    # every dropout probability of policy and reference set to 0 (as TRL)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = field(default="all-linear", metadata={"join_list": True})
    trust_remote_code: bool = False
    device: str = "auto"
    distributed: str = "auto"       # under torchrun/accelerate launch: ddp (auto), fsdp2 or deepspeed
    dist_timeout: int = 1800        # seconds a collective waits for the other processes before failing
    deepspeed_stage: int = 2        # --distributed deepspeed: ZeRO stage, 2 (sharded optimizer state + gradients) or 3 (+ parameters)
    reward_head: str = "score"      # reward models: score (sequence-classification head) or value (LM + value head)
    # data ------------------------------------------------------------------------------
    max_length: int | None = 1024
    max_prompt_length: int | None = 512
    truncation: str = "keep_end"    # prompt truncation: keep its end (closest to the answer)
    on_bad_row: str = "error"
    layout: str = "auto"            # pairs, lists: packed on CPU, prefix_shared on CUDA (docs/benchmarks.md); else padded
    group_by_length: bool = True
    chunk_size: int = 1024
    # evaluation, logging, checkpoints ---------------------------------------------------
    eval_every: int | None = None   # None (or 0) with eval_data: evaluate at the end only
    eval_batch_size: int | None = None
    log_every: int = 1
    save_every: int | None = 500    # None or 0: no periodic checkpoints (TRL's save_steps default is 500)
    keep_checkpoints: int = 2
    resume: bool | str = False      # True: the latest checkpoint in output; a str: that checkpoint directory
    resume_fallback: bool = False   # on a corrupted newest checkpoint, resume from the last good one
    restart: bool = False           # start over a run whose metrics exist but that has no checkpoint
    overwrite: bool = False         # replace an existing run in --output
    save_final: bool = True
    report_to: list[str] = field(default_factory=list)
    monitor: list[str] = field(default_factory=list)
    monitor_every: int = 10
    on_nonfinite: str = "stop"
    progress: bool = True

    def __post_init__(self) -> None:
        self.normalize()
        self.validate()

    # --------------------------------------------------------------------------------
    def normalize(self) -> None:
        """Bring every field to its declared type (see :func:`coerce_field`), and the objective's
        hyperparameters to the types of their defaults."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_field(f, getattr(self, f.name)))
        self.loss_params = _check_loss(self.loss, self.loss_params)

    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise FieldError(key, msg, named=True)

        need(self.distributed in ("auto", "ddp", "fsdp2", "deepspeed"), "distributed",
             f"distributed='{self.distributed}' is not allowed; use one of auto, ddp, fsdp2, deepspeed")
        need(self.deepspeed_stage in (2, 3), "deepspeed_stage",
             f"deepspeed_stage={self.deepspeed_stage} is not allowed; use 2 or 3")
        need(self.dist_timeout > 0, "dist_timeout", f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        need(self.ref in REF_SOURCES, "ref", f"ref='{self.ref}' is not allowed; use one of {', '.join(REF_SOURCES)}")
        need(self.layout in LAYOUTS, "layout",
             f"layout='{self.layout}' is not allowed; use one of {', '.join(LAYOUTS)}")
        need(self.lr_schedule in SCHEDULES, "lr_schedule",
             f"lr_schedule='{self.lr_schedule}' is not allowed; use one of {', '.join(SCHEDULES)}")
        need(self.on_bad_row in ("error", "skip"), "on_bad_row", f"on_bad_row='{self.on_bad_row}'; use error or skip")
        need(self.on_nonfinite in ("stop", "skip"), "on_nonfinite",
             f"on_nonfinite='{self.on_nonfinite}'; use stop or skip")
        need(self.truncation in ("keep_end", "keep_start"), "truncation",
             f"truncation='{self.truncation}'; use keep_end or keep_start")
        need(self.max_steps is None or self.max_steps > 0, "max_steps",
             f"max_steps must be > 0, got {self.max_steps}")
        need(self.epochs > 0, "epochs", f"epochs must be > 0, got {self.epochs}")
        need(self.batch_size > 0, "batch_size", f"batch_size must be > 0, got {self.batch_size}")
        need(self.grad_accum > 0, "grad_accum", f"grad_accum must be > 0, got {self.grad_accum}")
        need(self.lr >= 0, "lr", f"lr must be >= 0, got {self.lr}")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps",
             f"warmup_steps must be >= 0 or null, got {self.warmup_steps}")
        need(self.weight_decay >= 0, "weight_decay", f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.adam_beta1 < 1, "adam_beta1", f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        need(0 <= self.adam_beta2 < 1, "adam_beta2", f"adam_beta2 must be in [0, 1), got {self.adam_beta2}")
        need(self.adam_eps > 0, "adam_eps", f"adam_eps must be > 0, got {self.adam_eps}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "max_grad_norm must be > 0 or null")
        need(self.lora_r >= 0, "lora_r", f"lora_r must be >= 0, got {self.lora_r}")
        need(0 <= self.lora_dropout < 1, "lora_dropout", f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        need(self.chunk_size > 0, "chunk_size", f"chunk_size must be > 0, got {self.chunk_size}")
        need(self.log_every > 0, "log_every", f"log_every must be > 0, got {self.log_every}")
        need(self.monitor_every > 0, "monitor_every", f"monitor_every must be > 0, got {self.monitor_every}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.save_every is None or self.save_every >= 0, "save_every",
             f"save_every must be >= 0 or null (0 or null: no periodic checkpoints), got {self.save_every}")
        need(self.eval_every is None or self.eval_every >= 0, "eval_every",
             f"eval_every must be >= 0 or null (0 or null: evaluate at the end), got {self.eval_every}")
        need(self.eval_batch_size is None or self.eval_batch_size > 0, "eval_batch_size",
             f"eval_batch_size must be > 0 or null, got {self.eval_batch_size}")
        need(self.max_length is None or self.max_length > 1, "max_length", "max_length must be > 1 or null")
        need(self.max_prompt_length is None or self.max_prompt_length > 0, "max_prompt_length",
             "max_prompt_length must be > 0 or null")
        need(self.dtype in ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"), "dtype",
             f"dtype='{self.dtype}'; use fp32, bf16 or fp16")
        need(self.reward_head in ("score", "value"), "reward_head",
             f"reward_head='{self.reward_head}'; use score or value")
        need(self.ref != "adapter" or self.lora_r > 0, "ref", "ref='adapter' needs LoRA (set lora_r > 0)")
        need(not isinstance(self.resume, str) or bool(self.resume.strip()), "resume",
             "resume must be true, false or a checkpoint directory, got ''")
        for r in self.report_to:
            need(r in REPORTERS, "report_to", f"report_to '{r}' is not supported; use tensorboard or wandb")

    # --------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def create(cls, **kwargs: Any) -> "TrainConfig":
        """``TrainConfig(**kwargs)``, spelled as a factory: options, TRL aliases and objective
        hyperparameters (``beta=0.1``) may be mixed."""
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a flat dict (a recipe); keys that are no option are objective hyperparameters,
        checked against the chosen objective. Errors name ``source`` and the key."""
        fields_, params = _split(d, source)
        return _build(cls, fields_, params, {}, source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "TrainConfig":
        """Read a YAML recipe; ``overrides`` (the command line) win over it."""
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
        bad = [k for k in d if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{path}: option names must be strings, got {bad[0]!r}")
        rf, rp = _split(d, str(path))
        of, op = _split(overrides or {}, COMMAND_LINE)
        origins = {k: COMMAND_LINE for k in [*of, *op]}
        return _build(cls, {**rf, **of}, {**rp, **op}, origins, str(path))

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (what ``config.yaml`` holds). A data source given as an object
        (a ``datasets.Dataset``, a list of dicts) is written as a placeholder such as
        ``"<datasets.Dataset: 1000 rows>"``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = describe_source(v) if f.metadata.get("data_source") else copy.deepcopy(v)
        return out

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (options, TRL aliases or objective hyperparameters) applied:
        ``cfg.replace(beta=0.2)`` changes one hyperparameter, ``loss_params={...}`` replaces them all."""
        changes = dict(changes)
        explicit = changes.pop("loss_params", None)
        fields_, params = _split(changes, "replace")
        if explicit is not None or params:
            fields_["loss_params"] = {**dict(explicit if explicit is not None else self.loss_params), **params}
        return dataclasses.replace(self, **fields_)


# ----------------------------------------------------------------------------- keyword arguments

_dataclass_init = TrainConfig.__init__


def _init(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
    fields_, params = _split(kwargs, None)
    if params:
        fields_["loss_params"] = params
    _dataclass_init(self, *args, **fields_)


_init.__doc__ = ("Options as keywords; TRL names (``learning_rate``) are accepted, and any other keyword is an "
                 "objective hyperparameter (``beta=0.1``), which goes to ``loss_params``.")
_init.__wrapped__ = _dataclass_init  # type: ignore[attr-defined]  # inspect.signature shows the fields
TrainConfig.__init__ = _init  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- a field's value

_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig, globalns=globals())


def coerce_field(f: dataclasses.Field, value: Any, *, key: str | None = None) -> Any:
    """``value`` as the type of field ``f``, or a :class:`FieldError` naming ``key`` (default: the
    field's name), the value and the type expected. TRL's spelling of a value is read as preftune's."""
    key = key or f.name
    if f.metadata.get("data_source"):
        return coerce_source(key, value, optional=f.default is None)
    if f.metadata.get("join_list"):
        value = join_strings(value)
    return preftune_value(f.name, coerce_value(key, value, _TYPES[f.name]))


# ----------------------------------------------------------------------------- reading a source

def _split(d: Mapping[str, Any], where: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One source's keys -> (options, objective hyperparameters). TRL names become preftune's; a key
    given twice (``lr`` and ``learning_rate``) with different values is an error."""
    known = TrainConfig.field_names()
    fields_: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    params: dict[str, Any] = {}

    def add_param(k: str, v: Any) -> None:
        if k in params and params[k] != v:
            raise ConfigError(f"{_prefix(where)}{k} is given twice, with different values "
                              f"({params[k]!r} and {v!r}); give one")
        params[k] = v

    try:
        for raw_key, value in d.items():
            if not isinstance(raw_key, str):
                raise ConfigError(f"{_prefix(where)}option names must be strings, got {raw_key!r}")
            key = target = raw_key.replace("-", "_")
            if key not in known:
                trl = from_trl(key, value)
                if trl is None:  # an objective hyperparameter
                    add_param(key, value)
                    continue
                target, value = trl
                if value is UNSET:
                    continue
                value = coerce_field(_FIELDS[target], value, key=key)  # an error names the TRL name
            if target == "loss_params":
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise FieldError("loss_params", f"expected a mapping of hyperparameter: value, got {value!r}")
                for k, v in value.items():
                    add_param(k, v)
                continue
            if target in fields_:
                first = given_as[target]
                a = coerce_field(_FIELDS[target], fields_[target], key=first)
                b = coerce_field(_FIELDS[target], value, key=key)
                if not _same(a, b):
                    raise FieldError(target, f"{_name(first, where)} and {_name(key, where)} both set {target}, "
                                             f"to different values ({a!r} and {b!r}); give one", named=True)
                continue
            fields_[target] = value
            given_as[target] = key
    except FieldError as e:  # put the recipe's path or the command-line flag in front
        raise ConfigError(_located(e, where)) from None
    return fields_, params


def _build(cls: type[TrainConfig], fields_: dict[str, Any], params: dict[str, Any], origins: dict[str, str],
           source: str) -> TrainConfig:
    try:
        return cls(**fields_, loss_params=params)
    except FieldError as e:
        raise ConfigError(_located(e, origins.get(e.key, source))) from None
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def _located(e: FieldError, where: str | None) -> str:
    if where is None or where == "replace":
        return str(e)
    if where == COMMAND_LINE:
        return e.detail if e.named else f"--{e.key.replace('_', '-')}: {e.detail}"
    return f"{where}: {e}"


def _prefix(where: str | None) -> str:
    return "" if where in (None, COMMAND_LINE, "replace") else f"{where}: "


def _name(key: str, where: str | None) -> str:
    return f"--{key.replace('_', '-')}" if where == COMMAND_LINE else key


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12)
    return a == b


# ----------------------------------------------------------------------------- the objective

def _check_loss(spec: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check the loss spec (names, weights) and that every hyperparameter is one the spec's objectives
    accept; return the hyperparameters with string values brought to the types of their defaults
    (``beta: "1e-1"`` from YAML is 0.1)."""
    from ..objectives.compose import accepted_hyperparameters

    try:
        accepted = accepted_hyperparameters(spec, params)
    except ConfigError as e:
        raise FieldError("loss", str(e), named=True) from None
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        msg = f"loss '{spec}' has no hyperparameter {', '.join(unknown)}; valid: {valid}"
        options = sorted(TrainConfig.field_names() | set(TRL_NAMES) | set(TRL_VALUE_NAMES))
        for k in unknown:
            if not _known_anywhere(k):
                close = difflib.get_close_matches(k, options + sorted(accepted), n=1)
                msg += f"; '{k}' is not a training option either" + (f" (did you mean {close[0]}?)" if close else "")
                break
        raise FieldError(unknown[0], msg, named=True)
    return {k: coerce_hparam(v, accepted[k]["default"]) for k, v in params.items()}


def _known_anywhere(name: str) -> bool:
    from ..objectives import available, objective_class

    return any(name in objective_class(n).hyperparameters() for n in available())
