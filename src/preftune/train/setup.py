"""Building what a run needs from its config: data, model and tokenizer, the reference source and the
callbacks. The loop (:mod:`.loop`) receives them ready."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..objectives.base import Objective
from .config import TrainConfig


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class LoadedData:
    items: list[Any]
    kind: Any                   # preftune.kinds.DataKind
    skipped: dict[str, int]
    truncated: int
    name: str


def load_data(cfg: TrainConfig, tokenizer: Any, examples: Sequence[Any] | None, source: str | None,
              split: str) -> LoadedData:
    """Typed examples (given, or read from ``source``) tokenized by the config's rules."""
    from ..data import load_examples, tokenize_examples
    from ..kinds import get_kind, kind_of

    skipped: dict[str, int] = {}
    if examples is None:
        res = load_examples(source, split=split, on_bad_row=cfg.on_bad_row)
        examples, kind = res.examples, get_kind(res.kind)
        for k, v in res.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        name = res.source
    else:
        kind = kind_of(examples)
        name = "<memory>"
    tres = tokenize_examples(examples, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                             truncation=cfg.truncation, on_bad_row=cfg.on_bad_row)
    for k, v in tres.skipped.items():
        skipped[k] = skipped.get(k, 0) + v
    return LoadedData(list(tres.items), kind, skipped, tres.truncated, name)


def load_tokenizer_for(cfg: TrainConfig, tokenizer: Any = None) -> Any:
    from ..models.loading import load_tokenizer

    if tokenizer is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: TrainConfig, model: Any, device: torch.device) -> Any:
    """The policy: given or loaded, on ``device``, with LoRA applied when asked, in train mode."""
    from ..models.loading import LoraSettings, apply_lora, is_peft, load_model

    if model is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           trust_remote_code=cfg.trust_remote_code, device=device)
    else:
        model.to(device)
    if cfg.lora_r > 0 and not is_peft(model):
        model = apply_lora(model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target))
    model.train()
    return model


def build_reference(cfg: TrainConfig, objective: Objective, model: Any, source: Any, device: torch.device,
                    model_given: bool) -> Any:
    """The reference source the config asks for (``ref=auto``: adapter under LoRA, none for reference-free
    objectives, else a frozen copy). ``precomputed`` asks the batch source for its cache."""
    from ..models.loading import is_peft, load_model, unwrap
    from ..reference import AdapterDisabled, FrozenModel, NoReference

    ref = cfg.ref
    if ref == "auto":
        if not objective.needs_reference:
            ref = "none"
        elif is_peft(model) and cfg.ref_model is None:
            ref = "adapter"
        else:
            ref = "model"
    if ref == "none":
        if objective.needs_reference:
            raise ConfigError(f"objective '{objective.name}' needs a reference; ref='none' gives none")
        return NoReference()
    if ref == "adapter":
        return AdapterDisabled(model, chunk_size=cfg.chunk_size)

    def ref_model() -> Any:
        if cfg.ref_model:
            return load_model(cfg.ref_model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)
        if model_given or not cfg.model:
            import copy
            if is_peft(model):
                raise ConfigError("with LoRA, use ref='adapter' or give --ref-model")
            return copy.deepcopy(unwrap(model))
        return load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)

    if ref == "model":
        return FrozenModel(ref_model(), chunk_size=cfg.chunk_size, name=cfg.ref_model or cfg.model)
    if ref == "precomputed":
        if "token_logps" in objective.needs:
            raise ConfigError(f"objective '{objective.name}' needs per-token reference log-probs, which are not "
                              "cached; use --ref model")
        if not hasattr(source, "precomputed_reference"):
            raise ConfigError("--ref precomputed needs a fixed dataset; this batch source makes its batches while "
                              "training: use --ref model")
        m = ref_model()
        cache = cfg.ref_cache_dir or str(Path(cfg.output) / "ref_cache")
        settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                    "truncation": cfg.truncation, "layout": cfg.layout}
        src = source.precomputed_reference(m, batch_size=cfg.eval_batch_size or cfg.batch_size, cache_dir=cache,
                                           settings=settings, chunk_size=cfg.chunk_size, progress=cfg.progress)
        del m
        return src
    raise ConfigError(f"unknown ref '{ref}'")


def run_callbacks(cfg: TrainConfig, out: Path, given: Sequence[Any]) -> list[Any]:
    """The caller's callbacks, then the configured monitors and reporters."""
    cbs = list(given)
    if cfg.monitor:
        from ..diagnostics.monitors import make_monitors
        cbs += make_monitors(cfg.monitor, cfg.monitor_every)
    if cfg.report_to:
        from .reporting import make_reporters
        cbs += make_reporters(cfg.report_to, out, cfg.to_dict())
    return cbs
