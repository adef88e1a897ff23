"""Load a causal LM and its tokenizer from a local path or hub name, with dtype, gradient
checkpointing and LoRA. ``trust_remote_code`` stays off unless the caller turns it on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}' is not supported; use one of fp32, bf16, fp16")
    return DTYPES[name]


@dataclass
class LoraSettings:
    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign tokenizer files surface as many types
        raise ConfigError(f"cannot load a tokenizer from '{name_or_path}': {_first_line(e)}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, *, dtype: str = "fp32", gradient_checkpointing: bool = False,
               lora: LoraSettings | None = None, trust_remote_code: bool = False,
               attn_implementation: str | None = "sdpa", device: str | torch.device = "cpu") -> Any:
    """``AutoModelForCausalLM.from_pretrained`` (safetensors only), then optional LoRA."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code,
                              "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except Exception as e:  # noqa: BLE001 - a bad directory surfaces as many types; each becomes one line
        if _is_oom(e):
            raise
        raise ConfigError(f"cannot load model '{name_or_path}': {_first_line(e)}") from None
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora)
    return model


def load_sequence_classifier(name_or_path: str, *, num_labels: int = 1, dtype: str = "fp32",
                             trust_remote_code: bool = False, device: str | torch.device = "cpu") -> Any:
    """``AutoModelForSequenceClassification.from_pretrained`` (safetensors only): a reward model. A causal LM
    checkpoint gets a new, randomly initialised head (transformers' "newly initialized" warning is silenced:
    that is the point)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=num_labels, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - a bad directory surfaces as many types; each becomes one line
        if _is_oom(e):
            raise
        raise ConfigError(f"cannot load a reward model from '{name_or_path}': {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(level)
    return model.to(device)


def apply_lora(model: Any, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if isinstance(targets, str) and targets != "all-linear" and "," in targets:
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    # a reward model (sequence classification) keeps its score head trainable: peft's SEQ_CLS saves it whole
    task = "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    try:
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                         task_type=task)
        return get_peft_model(model, cfg)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"--lora-target {lora.target_modules!r}: {_first_line(e)}; this model's linear layers "
                          f"are {', '.join(names)} (or use all-linear)") from None


def disable_dropout(model: Any) -> int:
    """Set every dropout probability of ``model`` to 0, as TRL does by default (``disable_dropout=True``):
    ``nn.Dropout`` modules and the attention-dropout rates attention layers read at run time. Returns how
    many were non-zero."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p, n = 0.0, n + 1
        for attr in ("attention_dropout", "attn_dropout_p", "dropout_p"):
            v = getattr(m, attr, None)
            if isinstance(v, float) and v > 0:
                setattr(m, attr, 0.0)
                n += 1
    return n


def position_limit(model: Any) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings`` / ``n_positions``)."""
    cfg = getattr(unwrap(model), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def is_peft(model: Any) -> bool:
    import sys

    if "peft" not in sys.modules:  # no peft model can exist before peft is imported (and importing it costs ~17 MB)
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap(model: Any) -> Any:
    """The underlying transformers model (through a peft wrapper; LoRA layers stay injected)."""
    return model.get_base_model() if is_peft(model) else model
