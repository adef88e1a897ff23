"""TRL / transformers ``TrainingArguments`` names, read as preftune's options.

A TRL recipe keeps its names where they mean the same, in YAML, on the command line and as keywords:

- :data:`TRL_NAMES`: another name for an option of the same meaning and unit
  (``learning_rate: 1e-3`` is ``lr: 1e-3``); the value follows the option's rules
  (:mod:`preftune.train.coerce`).
- :data:`TRL_VALUE_NAMES`: a TRL setting that gives a preftune option a value of its own
  (``bf16: true`` is ``dtype: bf16``, ``save_strategy: "no"`` is ``save_every: 0``);
  ``bf16: false`` and ``save_strategy: steps`` set nothing.
- :data:`VALUE_ALIASES`: TRL's spelling of a value, under either name
  (``lr_scheduler_type: constant_with_warmup`` is ``lr_schedule: constant``).

The caller (:mod:`preftune.train.config`) checks that a name and its alias do not set different values.
"""
from __future__ import annotations

from typing import Any, Callable

from .coerce import FieldError, coerce_value, join_strings

# TRL / transformers name -> preftune option of the same meaning (and unit).
TRL_NAMES: dict[str, str] = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_schedule",
    "adam_epsilon": "adam_eps",
    "logging_steps": "log_every",
    "save_steps": "save_every",
    "eval_steps": "eval_every",
    "save_total_limit": "keep_checkpoints",
    "output_dir": "output",
    "overwrite_output_dir": "overwrite",
    "resume_from_checkpoint": "resume",
    "model_name_or_path": "model",
    "torch_dtype": "dtype",
    "dataset_name": "data",
    "dataset_train_split": "split",
    "truncation_mode": "truncation",
    "lora_target_modules": "lora_target",
    "loss_type": "loss",
}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()  # what a TRL setting gives when it sets nothing (bf16: false, save_strategy: steps)


def _flag(on: Any) -> Callable[[str, Any], Any]:
    """A TRL boolean that, when true, sets its option to ``on`` (and when false sets nothing)."""
    return lambda key, v: on if coerce_value(key, v, bool) else UNSET


def _not(key: str, v: Any) -> bool:
    return not coerce_value(key, v, bool)


def _strategy(target: str, off: Any) -> Callable[[str, Any], Any]:
    """TRL's ``*_strategy``: "steps" (preftune's only way) sets nothing, "no" turns ``target`` off."""
    def conv(key: str, v: Any) -> Any:
        s = v.strip().lower() if isinstance(v, str) else v
        if s == "steps":
            return UNSET
        if s == "no" or s is False:
            return off
        raise FieldError(key, f"{v!r} is not supported; preftune counts steps: use 'steps' or 'no' "
                              f"(and set {target})")
    return conv


# TRL / transformers name -> (preftune option, converter of the value: (name, value) -> option's value).
TRL_VALUE_NAMES: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "bf16": ("dtype", _flag("bf16")),
    "fp16": ("dtype", _flag("fp16")),
    "disable_tqdm": ("progress", _not),
    "precompute_ref_log_probs": ("ref", _flag("precomputed")),
    "save_strategy": ("save_every", _strategy("save_every", 0)),
    "eval_strategy": ("eval_every", _strategy("eval_every", None)),
    "evaluation_strategy": ("eval_every", _strategy("eval_every", None)),
}

# preftune option -> {TRL's spelling of a value: preftune's}.
VALUE_ALIASES: dict[str, dict[str, str]] = {
    "lr_schedule": {"constant_with_warmup": "constant"},
}


def from_trl(key: str, value: Any) -> tuple[str, Any] | None:
    """``(option, value)`` for a TRL / transformers name, the value still to be brought to the option's
    type (:data:`UNSET` where the setting sets nothing); None for any other name. A value a TRL setting
    does not allow is a :class:`~preftune.train.coerce.FieldError` naming ``key``."""
    if key in TRL_NAMES:
        target = TRL_NAMES[key]
        if target == "loss":
            value = join_strings(value)  # TRL's list of loss types (each weighted 1 without loss_weights)
        return target, value
    if key in TRL_VALUE_NAMES:
        target, conv = TRL_VALUE_NAMES[key]
        return target, conv(key, value)
    return None


def preftune_value(option: str, value: Any) -> Any:
    """``value`` of ``option`` with TRL's spelling (:data:`VALUE_ALIASES`) read as preftune's."""
    aliases = VALUE_ALIASES.get(option)
    return aliases.get(value, value) if aliases and isinstance(value, str) else value
