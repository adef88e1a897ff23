"""The training loop: one plain function, :func:`train`.

records -> examples -> tokens -> batches -> policy (and reference) log-probs -> stats ->
objective -> loss -> AdamW step. Evaluation, checkpoints, metrics and callbacks hang off the
loop at fixed points; nothing else is hidden in it.
"""
from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..data.types import SequenceBatch
from ..errors import ConfigError, PreftuneError
from ..io import atomic_path, write_text
from ..models.logprobs import sequence_logps
from ..objectives import build as build_objective
from ..objectives.base import Objective
from .callbacks import Callback, TrainState
from .checkpoint import (EXTRA_MODULES, TrainerPosition, has_params, latest_checkpoint, load_checkpoint,
                         save_checkpoint, trainable_state)
from .config import TrainConfig
from .needs import DATA_COLUMNS, NEEDS_POLICY_STATES, attach_density_ratios, check_supported, need_modules, supply
from .stats import batch_stats


class TrainingError(PreftuneError):
    """Training cannot go on (non-finite loss, out of memory, ...)."""


@dataclass
class RunResult:
    output_dir: Path
    final_dir: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    model: Any = None
    tokenizer: Any = None
    skipped_rows: dict[str, int] = field(default_factory=dict)
    nonfinite_skipped: int = 0
    interrupted: bool = False
    steps: int = 0


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def collator_for(kind: str, layout: str, pad_id: int) -> Callable[[Sequence[Any]], SequenceBatch]:
    fn = _collator(kind, layout, pad_id)
    fn.pad_id = pad_id  # type: ignore[attr-defined]
    return fn


def _collator(kind: str, layout: str, pad_id: int) -> Callable[[Sequence[Any]], SequenceBatch]:
    from ..data import collate

    if layout == "auto":
        layout = "packed" if kind == "pair" else "padded"
    if kind == "pair":
        if layout == "padded":
            return lambda ex: collate.collate_pairs(ex, pad_id)
        if layout == "prefix_shared":
            from ..data.prefix_shared import collate_pairs_prefix_shared
            return lambda ex: collate_pairs_prefix_shared(ex, pad_id)
        if layout == "packed":
            from ..data.packed import collate_pairs_packed
            return lambda ex: collate_pairs_packed(ex, pad_id)
    elif layout != "padded":
        raise ConfigError(f"layout '{layout}' is only available for paired data; use layout=padded")
    if kind == "unpaired":
        return lambda ex: collate.collate_unpaired(ex, pad_id)
    if kind == "list":
        return lambda ex: collate.collate_ranked(ex, pad_id)
    raise ConfigError(f"unknown data kind '{kind}'")


def item_length(it: Any) -> int:
    if hasattr(it, "chosen_ids"):
        return len(it.prompt_ids) * 2 + len(it.chosen_ids) + len(it.rejected_ids)
    if hasattr(it, "completion_ids") and isinstance(it.completion_ids[0] if it.completion_ids else [], list):
        return sum(len(it.prompt_ids) + len(c) for c in it.completion_ids)
    return len(it.prompt_ids) + len(it.completion_ids)


def epoch_batches(items: Sequence[Any], batch_size: int, *, seed: int, epoch: int,
                  group_by_length: bool) -> list[list[int]]:
    """Batches of indices for one epoch; deterministic in (seed, epoch)."""
    if group_by_length:
        from ..data.sampler import length_grouped_batches
        return length_grouped_batches([item_length(it) for it in items], batch_size, seed=seed, epoch=epoch)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(len(items), generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def _needs_token_logps(obj: Objective) -> bool:
    return "token_logps" in obj.needs


def compute_loss(model: Any, reference: Any, objective: Objective, batch: SequenceBatch, *,
                 chunk_size: int = 1024, items: Sequence[Any] | None = None,
                 collate: Callable[[Sequence[Any]], SequenceBatch] | None = None, pad_id: int = 0,
                 generator: torch.Generator | None = None, modules: Any = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """Forward policy (and reference), build stats, apply the objective. Returns mean loss, metrics, stats.

    ``items`` (the tokenized examples of ``batch``) and ``collate`` are needed only by objectives
    whose ``needs`` go beyond summed log-probs (see :mod:`preftune.train.needs`); ``modules`` are the
    trainable modules such objectives own (:func:`preftune.train.needs.need_modules`).
    """
    per_token = _needs_token_logps(objective)
    keep = bool(NEEDS_POLICY_STATES & set(objective.needs))
    pol = sequence_logps(model, batch, per_token=per_token, chunk_size=chunk_size, keep_states=keep)
    ref = reference.logps(batch, per_token=per_token) if reference is not None else None
    stats = batch_stats(batch, pol, ref)
    if set(objective.needs) - {"token_logps", "chosen_lengths", *DATA_COLUMNS}:
        if items is None or collate is None:
            raise ValueError(f"objective '{objective.name}' needs {objective.needs}: pass items and collate")
        supply(objective, stats, model=model, reference=reference, batch=batch, items=items, collate=collate,
               pad_id=pad_id, chunk_size=chunk_size, generator=generator or torch.Generator().manual_seed(0),
               modules=modules, policy_states=pol.label_states)
    out = objective(stats)
    return out.loss.mean(), out.metrics, stats


def _check_data_columns(objective: Objective, items: Sequence[Any], source: str) -> None:
    for col in DATA_COLUMNS:
        if col in objective.needs:
            missing = [it.row for it in items if col not in it.extras]
            if missing:
                raise ConfigError(f"objective '{objective.name}' needs the data column '{col}', which {source} "
                                  f"lacks (first rows without it: {missing[:5]})")


class _Interrupt:
    """SIGINT/SIGTERM: finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupt":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- setup


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    if out.exists() and (out / "metrics.jsonl").exists() and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output directory {out} already holds a run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    import shutil
    for stale in out.glob(".final.*.tmp"):  # left by a run killed while writing final/
        shutil.rmtree(stale, ignore_errors=True)
    return out


def _load_data(cfg: TrainConfig, tokenizer: Any, examples: Sequence[Any] | None, source: str | None, split: str):
    from ..data import load_examples, tokenize_examples

    skipped: dict[str, int] = {}
    if examples is None:
        res = load_examples(source, split=split, on_bad_row=cfg.on_bad_row)
        examples, kind = res.examples, res.kind
        for k, v in res.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        name = res.source
    else:
        kinds = {type(e).__name__ for e in examples}
        kind = {"PairExample": "pair", "UnpairedExample": "unpaired", "RankedExample": "list"}[kinds.pop()]
        name = "<memory>"
    tres = tokenize_examples(examples, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                             truncation=cfg.truncation, on_bad_row=cfg.on_bad_row)
    for k, v in tres.skipped.items():
        skipped[k] = skipped.get(k, 0) + v
    return tres.items, kind, skipped, tres.truncated, name


def _make_reference(cfg: TrainConfig, objective: Objective, model: Any, items: Sequence[Any],
                    collate: Callable, device: torch.device, model_given: bool):
    from ..models.loading import is_peft, load_model, unwrap
    from ..reference import AdapterDisabled, FrozenModel, NoReference, precompute

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
            m = copy.deepcopy(unwrap(model))
            if is_peft(model):
                raise ConfigError("with LoRA, use ref='adapter' or give --ref-model")
            return m
        return load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)

    if ref == "model":
        return FrozenModel(ref_model(), chunk_size=cfg.chunk_size, name=cfg.ref_model or cfg.model)
    if ref == "precomputed":
        if _needs_token_logps(objective):
            raise ConfigError(f"objective '{objective.name}' needs per-token reference log-probs, which are not "
                              "cached; use --ref model")
        m = ref_model()
        cache = cfg.ref_cache_dir or str(Path(cfg.output) / "ref_cache")
        settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                    "truncation": cfg.truncation, "layout": cfg.layout}
        src = precompute(m, items, collate, batch_size=cfg.eval_batch_size or cfg.batch_size, cache_dir=cache,
                         settings=settings, chunk_size=cfg.chunk_size, progress=cfg.progress)
        del m
        return src
    raise ConfigError(f"unknown ref '{ref}'")


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, *, model: Any = None, tokenizer: Any = None,
          train_examples: Sequence[Any] | None = None, eval_examples: Sequence[Any] | None = None,
          callbacks: Sequence[Callback] = ()) -> RunResult:
    """Train a policy with the configured objective and return what happened.

    ``model``/``tokenizer``/``train_examples``/``eval_examples`` may be given in memory
    (the arena does); otherwise they are loaded from ``config.model`` / ``config.data``.
    """
    cfg = config
    from ..models.loading import LoraSettings, apply_lora, is_peft, load_model, load_tokenizer

    out = _prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    objective = build_objective(cfg.loss, **cfg.loss_params)
    check_supported(objective)

    if tokenizer is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if train_examples is None and not cfg.data:
        raise ConfigError("no training data given: set --data")
    items, kind, skipped, truncated, data_name = _load_data(cfg, tokenizer, train_examples, cfg.data, cfg.split)
    if kind != objective.kind:
        raise ConfigError(f"objective '{objective.name}' trains on {objective.kind} data, but {data_name} holds "
                          f"{kind} data")
    if not items:
        raise ConfigError(f"{data_name}: no training examples left")
    _check_data_columns(objective, items, data_name)
    eval_items: list[Any] = []
    if eval_examples is not None or cfg.eval_data:
        eval_items, ekind, eskipped, _, _ = _load_data(cfg, tokenizer, eval_examples, cfg.eval_data,
                                                       cfg.eval_split or cfg.split)
        for k, v in eskipped.items():
            skipped[f"eval/{k}"] = v
    if skipped:
        msg = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        print(f"preftune: skipped bad rows ({sum(skipped.values())}): {msg}")
    if truncated:
        print(f"preftune: {truncated} training rows truncated (max_length={cfg.max_length}, "
              f"max_prompt_length={cfg.max_prompt_length}, truncation={cfg.truncation})")

    model_given = model is not None
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

    pad_id = tokenizer.pad_token_id
    collate = collator_for(kind, cfg.layout, pad_id)
    reference = _make_reference(cfg, objective, model, items, collate, device, model_given)
    check_supported(objective, reference)
    udm = attach_density_ratios(objective, reference, items, eval_items, pad_id, device)
    if udm:
        print(f"preftune: density ratios (BCO UDM) over {udm['prompts']} prompts: min {udm['min']:.3g}, "
              f"mean {udm['mean']:.3g}, max {udm['max']:.3g}")

    # schedule ---------------------------------------------------------------------------
    per_epoch = math.ceil(len(items) / cfg.batch_size)
    updates_per_epoch = max(1, per_epoch // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * updates_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    extra_modules = need_modules(objective, model).to(device)  # e.g. SparsePO's learned mask head
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_modules.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, warmup, total))

    # resume -----------------------------------------------------------------------------
    start_step, epoch, batch_in_epoch = 0, 0, 0
    if cfg.resume:
        ck = latest_checkpoint(out, fallback=cfg.resume_fallback)
        if ck is None:
            print(f"preftune: no checkpoint in {out}; starting from step 0")
        else:
            _check_same_run(out, cfg)
            state = load_checkpoint(ck, model, optimizer, scheduler, extra_modules)
            start_step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            print(f"preftune: resumed from {ck} (step {start_step})")
    _write_config(out, cfg, objective, reference, kind, len(items), len(eval_items), skipped, truncated, total)
    metrics_path = out / "metrics.jsonl"
    history = _truncate_metrics(metrics_path, start_step)
    eval_history: list[dict[str, float]] = []

    state = TrainState(config=cfg, model=model, tokenizer=tokenizer, reference=reference, objective=objective,
                       output_dir=out, step=start_step, max_steps=total,
                       probe=list((eval_items or items)[:16]), collate=collate)
    all_callbacks = list(callbacks)
    if cfg.monitor:
        from ..diagnostics.monitors import make_monitors
        all_callbacks += make_monitors(cfg.monitor, cfg.monitor_every)
    all_callbacks += _reporters(cfg, out)
    for cb in all_callbacks:
        cb.on_train_start(state)

    # data stream ------------------------------------------------------------------------
    def stream() -> Iterator[tuple[int, int, list[int]]]:
        e, b = epoch, batch_in_epoch
        while True:
            order = epoch_batches(items, cfg.batch_size, seed=cfg.seed, epoch=e, group_by_length=cfg.group_by_length)
            while b < len(order):
                yield e, b, order[b]
                b += 1
            e, b = e + 1, 0

    batches = stream()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start_step, desc=f"train {objective.name}", disable=not cfg.progress,
               dynamic_ncols=True, unit="step")
    nonfinite = 0
    step = start_step
    interrupted = False
    last_pos = (epoch, batch_in_epoch)
    with _Interrupt() as intr:
        while step < total:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            needs_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # e.g. SPO's degradations
            agg: dict[str, float] = {}
            seen: dict[str, int] = {}
            tokens = 0
            loss_sum = 0.0
            rows: list[int] = []
            for _ in range(cfg.grad_accum):
                e, b, idx = next(batches)
                last_pos = (e, b + 1)
                chunk = [items[i] for i in idx]
                batch = collate(chunk).to(device)
                rows += batch.rows
                try:
                    loss, metrics, _ = compute_loss(model, reference, objective, batch, chunk_size=cfg.chunk_size,
                                                    items=chunk, collate=collate, pad_id=pad_id,
                                                    generator=needs_rng, modules=extra_modules)
                    (loss / cfg.grad_accum).backward()
                except torch.OutOfMemoryError:
                    raise TrainingError(_oom_message(cfg)) from None
                except RuntimeError as err:
                    if _is_oom(err):
                        raise TrainingError(_oom_message(cfg)) from None
                    raise
                loss_sum += loss.item() / cfg.grad_accum
                for k, v in metrics.items():
                    agg[k] = agg.get(k, 0.0) + float(v)
                    seen[k] = seen.get(k, 0) + 1
                tokens += int(batch.attention_mask.sum()) if batch.attention_mask.dim() == 2 \
                    else int((batch.input_ids != pad_id).sum())
            agg = {k: v / seen[k] for k, v in agg.items()}
            grad_norm = _grad_norm(params, cfg.max_grad_norm)
            if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                what = f"non-finite {'loss' if not math.isfinite(loss_sum) else 'gradient'} at step {step + 1}"
                if cfg.on_nonfinite == "stop":
                    raise TrainingError(f"{what} (batch rows {sorted(rows)[:16]} of {data_name}); "
                                        "lower --lr, check those rows, or pass --on-nonfinite skip")
                nonfinite += 1
                print(f"preftune: skipped update: {what} (rows {sorted(rows)[:16]})")
                optimizer.zero_grad(set_to_none=True)
            else:
                try:
                    optimizer.step()  # the first step allocates AdamW's state: a common place to run out
                except RuntimeError as err:  # torch.OutOfMemoryError included
                    if _is_oom(err):
                        raise TrainingError(_oom_message(cfg)) from None
                    raise
            scheduler.step()
            step += 1
            dt = time.perf_counter() - t0
            rec = {"step": step, "epoch": round(last_pos[0] + last_pos[1] / max(1, per_epoch), 4), "loss": loss_sum,
                   **agg, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "tokens_per_second": tokens / dt if dt > 0 else 0.0}
            if nonfinite:
                rec["nonfinite_skipped"] = nonfinite
            state.step, state.epoch = step, rec["epoch"]
            for cb in all_callbacks:
                extra = cb.on_step_end(state, rec)
                if extra:
                    rec.update(extra)
            if cfg.eval_every and eval_items and (step % cfg.eval_every == 0 or step == total):
                ev = evaluate(model, reference, objective, eval_items, collate, cfg, device, extra_modules)
                ev["step"] = step
                eval_history.append(ev)
                rec.update({f"eval/{k}": v for k, v in ev.items() if k != "step"})
                for cb in all_callbacks:
                    cb.on_evaluate(state, ev)
            if step % cfg.log_every == 0 or step == total:
                history.append(rec)
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", acc=f"{agg.get('rewards/accuracies', float('nan')):.2f}",
                            tok_s=f"{rec['tokens_per_second']:.0f}")
            position = TrainerPosition(step, last_pos[0], last_pos[1])
            if intr.requested:
                save_checkpoint(out, position, model, optimizer, scheduler, keep=cfg.keep_checkpoints, extra_modules=extra_modules)
                print(f"\npreftune: {intr.requested} received; checkpoint saved at step {step}. "
                      f"Resume with: preftune train --config {out / 'config.yaml'} --resume")
                interrupted = True
                break
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_checkpoint(out, position, model, optimizer, scheduler, keep=cfg.keep_checkpoints, extra_modules=extra_modules)
    bar.close()

    final_dir = None
    if not interrupted:
        if cfg.save_every:
            save_checkpoint(out, TrainerPosition(step, *last_pos), model, optimizer, scheduler,
                            keep=cfg.keep_checkpoints, extra_modules=extra_modules)
        final_dir = save_final(model, tokenizer, out / "final", extra_modules) if cfg.save_final else None
        for cb in all_callbacks:
            extra = cb.on_train_end(state)
            if extra:
                history.append({"step": step, **extra})
    return RunResult(out, final_dir, history, eval_history, model, tokenizer, skipped, nonfinite, interrupted,
                     step)


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is not None:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in grads])))


def _is_oom(err: BaseException) -> bool:
    msg = str(err).lower()  # CUDA/MPS: "out of memory"; CPU: "DefaultCPUAllocator: can't allocate memory"
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def _oom_message(cfg: TrainConfig) -> str:
    return (f"out of memory at batch_size={cfg.batch_size}, max_length={cfg.max_length}. To reduce memory: "
            "lower --batch-size and raise --grad-accum, lower --max-length, --gradient-checkpointing, "
            "--lora-r 16 with --ref adapter, --ref precomputed, --dtype bf16, "
            + ("--layout packed, " if cfg.layout == "padded" else "") + "or a smaller --chunk-size")


@torch.no_grad()
def evaluate(model: Any, reference: Any, objective: Objective, items: Sequence[Any], collate: Callable,
             cfg: TrainConfig, device: torch.device, modules: Any = None) -> dict[str, float]:
    """Mean loss and metrics of the objective over ``items`` (no gradient)."""
    was = model.training
    model.eval()
    bs = cfg.eval_batch_size or cfg.batch_size
    tot: dict[str, float] = {}
    weight: dict[str, int] = {}  # a metric absent from a batch (e.g. no desirable example) is not averaged in
    for i in range(0, len(items), bs):
        chunk = list(items[i:i + bs])
        batch = collate(chunk).to(device)
        loss, metrics, _ = compute_loss(model, reference, objective, batch, chunk_size=cfg.chunk_size, items=chunk,
                                        collate=collate, pad_id=getattr(collate, "pad_id", 0),
                                        generator=torch.Generator().manual_seed(cfg.seed), modules=modules)
        w = len(chunk)
        for k, v in {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}.items():
            tot[k] = tot.get(k, 0.0) + v * w
            weight[k] = weight.get(k, 0) + w
    model.train(was)
    return {k: v / weight[k] for k, v in tot.items()}


def save_final(model: Any, tokenizer: Any, target: Path, extra_modules: Any = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer, atomically. A LoRA policy is merged into
    its base so that plain ``transformers`` loads ``final/``; the adapter is kept in ``final/adapter``.
    Trainable modules beside the policy (``extra_modules``) go to ``extra_modules.safetensors``."""
    from ..models.loading import is_peft

    with atomic_path(target, is_dir=True) as tmp:
        if is_peft(model):
            model.save_pretrained(tmp / "adapter")
            import copy
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if has_params(extra_modules):
            from safetensors.torch import save_file
            save_file(trainable_state(extra_modules), str(tmp / EXTRA_MODULES))
    return target


# Settings that make a different run (data, its order, objective, schedule, numerics). Layout,
# chunk size, device, logging and checkpointing may change across a resume.
_RUN_KEYS = ("model", "data", "split", "loss", "loss_params", "ref", "ref_model", "max_steps", "epochs",
             "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_ratio", "warmup_steps", "weight_decay",
             "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm", "seed", "dtype", "lora_r", "lora_alpha",
             "lora_dropout", "lora_target", "max_length", "max_prompt_length", "truncation", "on_bad_row",
             "group_by_length")


def _check_same_run(out: Path, cfg: TrainConfig) -> None:
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

    diff = [f"{k} {saved[k]!r} -> {now.get(k)!r}" for k in _RUN_KEYS if k in saved and not same(k)]
    if diff:
        raise ConfigError(f"cannot resume {out} with other settings ({'; '.join(diff)}); resume it as it was "
                          f"(preftune train --config {out / 'config.yaml'} --resume) or start a new run in "
                          "another --output")


def _truncate_metrics(path: Path, start_step: int) -> list[dict[str, float]]:
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


def _write_config(out: Path, cfg: TrainConfig, objective: Objective, reference: Any, kind: str, n_train: int,
                  n_eval: int, skipped: dict[str, int], truncated: int, total: int) -> None:
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    from ..io import write_json
    write_json(out / "run_info.json", {
        "objective": objective.name, "objective_config": objective.config(), "reference": reference.describe(),
        "data_kind": kind, "train_examples": n_train, "eval_examples": n_eval, "skipped_rows": skipped,
        "truncated_rows": truncated, "total_steps": total})


def _reporters(cfg: TrainConfig, out: Path) -> list[Callback]:
    cbs: list[Callback] = []
    if cfg.report_to:
        from .reporting import make_reporters
        cbs += make_reporters(cfg.report_to, out, cfg.to_dict())
    return cbs
