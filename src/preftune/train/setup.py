"""Building what a run needs from its config: data, model and tokenizer, the reference source and the
callbacks. The loop (:mod:`.loop`) receives them ready."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..objectives.base import Objective
from .config import TrainConfig


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                              "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return dev


@dataclass
class LoadedData:
    items: list[Any]
    kind: Any                   # preftune.kinds.DataKind
    skipped: dict[str, int]
    truncated: int
    name: str


def load_data(cfg: TrainConfig, tokenizer: Any, examples: Sequence[Any] | None, source: Any, split: str | None,
              *, kind: str | None = None, evaluation: bool = False) -> LoadedData:
    """Typed examples (given, or read from ``source``) tokenized by the config's rules. ``kind``: the kind the
    objective takes (pairs convert to unpaired examples or lists, as TRL's KTOTrainer splits pairs);
    ``evaluation``: held-out data, whose split defaults to the source's test split, never silently train."""
    from ..data import load_examples, tokenize_examples
    from ..kinds import get_kind, kind_of

    skipped: dict[str, int] = {}
    if examples is None:
        res = load_examples(source, split=_split_for(source, split, cfg.split, evaluation), on_bad_row=cfg.on_bad_row,
                            kind=kind)
        examples, found = res.examples, get_kind(res.kind)
        for k, v in res.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        name = res.source
    else:
        found, name = kind_of(examples), "<memory>"
    if kind is not None and found.name != kind:
        raise ConfigError(f"{'evaluation' if evaluation else 'training'} data {name} holds {found.name} examples; "
                          f"the objective takes {kind} examples")
    tres = tokenize_examples(examples, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                             truncation=cfg.truncation, on_bad_row=cfg.on_bad_row, progress=cfg.progress)
    for k, v in tres.skipped.items():
        skipped[k] = skipped.get(k, 0) + v
    return LoadedData(list(tres.items), found, skipped, tres.truncated, name)


def load_tokenizer_for(cfg: TrainConfig, tokenizer: Any = None) -> Any:
    from ..models.loading import load_tokenizer

    if tokenizer is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer of {cfg.model or 'the model'} has neither a pad token nor an eos token; "
                              "set one (tokenizer.pad_token = ...; save_pretrained) before training")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: TrainConfig, model: Any, device: torch.device) -> Any:
    """The policy: given or loaded, on ``device``, with LoRA applied when asked, in train mode."""
    from ..models.loading import LoraSettings, apply_lora, disable_dropout, is_peft, load_model

    if model is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           trust_remote_code=cfg.trust_remote_code, device=device)
    else:
        model.to(device)
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.lora_r > 0 and not is_peft(model):
        model = apply_lora(model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target))
    model.train()
    return model


def check_lengths(cfg: TrainConfig, model: Any, source: Any, eval_items: Sequence[Any]) -> None:
    """Sequences must fit the model's positions: say what to change instead of an IndexError mid-run."""
    from ..models.loading import position_limit

    limit = position_limit(model)
    if limit is None or (cfg.max_length is not None and cfg.max_length <= limit):
        return
    items = list(getattr(source, "items", [])) + list(eval_items)
    longest = max((n for it in items for n in sequence_lengths(it)), default=0)
    if longest > limit:  # positions past the limit: an IndexError (or worse) in the middle of the run
        raise ConfigError(f"a sequence of {longest} tokens exceeds the model's position limit {limit} "
                          f"(max_position_embeddings) with max_length {cfg.max_length}; "
                          f"set --max-length {limit} or less")


def sequence_lengths(item: Any) -> list[int]:
    """Prompt + response token counts of each response of a tokenized example."""
    responses = [getattr(item, k) for k in ("chosen_ids", "rejected_ids") if hasattr(item, k)]
    comp = getattr(item, "completion_ids", None)
    if comp is not None:
        responses += comp if comp and isinstance(comp[0], list) else [comp]
    return [len(item.prompt_ids) + len(r) for r in responses]


def build_reference(cfg: TrainConfig, objective: Objective, model: Any, source: Any, device: torch.device,
                    model_given: bool, tokenizer: Any = None) -> Any:
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
            m = load_model(cfg.ref_model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)
            check_reference_compatible(model, tokenizer, m, cfg.ref_model, cfg.trust_remote_code)
            return m
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


def _split_for(source: Any, split: str | None, train_split: str, evaluation: bool) -> Any:
    """The split to read: the named one; for evaluation data with none named, the source's held-out split."""
    if split:
        return split
    if not evaluation:
        return train_split
    from ..data.records import heldout_split

    return heldout_split(source, fallback=train_split)


def check_reference_compatible(policy: Any, tokenizer: Any, reference: Any, ref_path: str,
                               trust_remote_code: bool = False) -> None:
    """A reference must score the same token ids as the policy: same vocabulary size, and (when the reference
    directory has a tokenizer) the same vocabulary. Otherwise training runs against a wrong reference."""
    from ..models.loading import load_tokenizer, unwrap

    def vocab_size(m: Any) -> int:
        return int(unwrap(m).get_output_embeddings().weight.shape[0])

    pv, rv = vocab_size(policy), vocab_size(reference)
    if pv != rv:
        raise ConfigError(f"--ref-model {ref_path} has a vocabulary of {rv} tokens, the policy {pv}: its log-probs "
                          "would be of other tokens; use a reference with the policy's tokenizer")
    if tokenizer is None or not (Path(ref_path) / "tokenizer_config.json").exists():
        return
    try:
        ref_tok = load_tokenizer(ref_path, trust_remote_code=trust_remote_code)
    except ConfigError:
        return
    a, b = tokenizer.get_vocab(), ref_tok.get_vocab()
    if a != b:
        diff = sorted((set(a.items()) ^ set(b.items())), key=lambda kv: kv[1])[:1]
        tok = diff[0][0] if diff else "?"
        raise ConfigError(f"--ref-model {ref_path} has another tokenizer than the policy (token {tok!r} differs): "
                          "its log-probs would be of other token ids; use a reference with the policy's tokenizer")


@contextlib.contextmanager
def quiet_transformers(quiet: bool) -> Iterator[None]:
    """With progress off, transformers' own loading bars are off too (restored afterwards)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
