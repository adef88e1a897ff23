"""The training loop: :func:`train` (set up, then step until done), :func:`train_step` (one optimizer
step), :func:`compute_loss` (one micro-batch) and :func:`evaluate`.

batch source -> forward -> stats (+ registered suppliers) -> objective -> loss -> AdamW step. The loop
knows no objective, data kind or statistic by name: the source gives micro-batches, the forward turns
them into stats, suppliers add what the objective needs, the objective owns its state. Evaluation,
checkpoints, metrics and callbacks hang off the loop at fixed points; nothing else is hidden in it.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..callbacks import Callback, TrainState
from ..data.types import SequenceBatch
from ..errors import CheckpointError, ConfigError, PreftuneError
from ..io import atomic_path
from ..objectives import build as build_objective
from ..objectives.base import Objective, objective_state
from ..suppliers.base import MicroBatch, Supplier, suppliers_for
from .checkpoint import (OBJECTIVE_STATE, has_state, latest_checkpoint, list_checkpoints, load_checkpoint, read_state,
                         save_checkpoint, state_tensors, verify_checkpoint)
from .config import TrainConfig
from .distributed import Engine, ShardedSource, make_engine, rank_device
from .forward import Forward, PolicyLogps
from .optim import build_optimizer
from .rundir import (LOCK, append_metrics, check_same_run, clear_run, prepare_run_dir, remove_stale_temps, run_identity,
                     run_lock, run_settings, truncate_metrics, write_config)
from .setup import (build_reference, check_lengths, load_data, load_policy, load_tokenizer_for, pick_device,
                    quiet_transformers, run_callbacks)
from .sources import DATA_COLUMNS, BatchSource, OfflineSource


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- one micro-batch


def compute_loss(model: Any, reference: Any, objective: Objective, batch: SequenceBatch, *,
                 chunk_size: int = 1024, items: Sequence[Any] | None = None,
                 collate: Callable[[Sequence[Any]], SequenceBatch] | None = None,
                 generator: torch.Generator | None = None, forward: Forward | None = None,
                 suppliers: Sequence[Supplier] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """Forward, supply what the objective needs, apply it. Returns mean loss, metrics and the stats.

    ``items`` (the tokenized examples of ``batch``) and ``collate`` are needed only by suppliers that
    re-collate examples (KTO's KL pairs, SPO's degraded copies); ``suppliers`` default to those the
    objective's needs call for (:func:`preftune.suppliers.suppliers_for`)."""
    forward = forward or PolicyLogps()
    if suppliers is None:
        suppliers = suppliers_for(objective, provided=forward.provides + DATA_COLUMNS)
    step = MicroBatch(model, reference, objective, batch, items, collate, chunk_size, generator)
    stats = forward(step, keep_states=any(s.needs_policy_states for s in suppliers))
    for s in suppliers:
        s.supply(stats, step)
    out = objective(stats)
    return out.loss.mean(), {**step.metrics, **out.metrics}, stats


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything the loop steps: built by :func:`train` from a config (or by a caller that brings its own
    source and forward)."""

    cfg: TrainConfig
    model: Any
    tokenizer: Any
    objective: Objective
    reference: Any
    source: BatchSource
    forward: Forward
    suppliers: list[Supplier]
    state: torch.nn.Module          # the objective's own modules
    params: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: Any
    device: torch.device
    eval_items: list[Any]
    data_name: str = ""
    identity: dict[str, Any] = field(default_factory=dict)   # run_id and the settings it hashes
    engine: Engine = field(default_factory=Engine)          # one process, or DDP/FSDP2 over several


def train(config: TrainConfig, *, model: Any = None, tokenizer: Any = None,
          train_examples: Sequence[Any] | None = None, eval_examples: Sequence[Any] | None = None,
          callbacks: Sequence[Callback] = (), forward: Forward | None = None,
          source: BatchSource | None = None) -> RunResult:
    """Train a policy with the configured objective and return what happened.

    ``model``/``tokenizer``/``train_examples``/``eval_examples`` may be given in memory (the arena does);
    otherwise they are loaded from ``config.model`` / ``config.data``. ``source``: where batches come from
    instead (any :class:`~preftune.train.sources.BatchSource`; ``config.data`` is then not read);
    ``forward``: what turns batches into stats (default: :class:`~preftune.train.forward.PolicyLogps`).
    """
    cfg = config
    import torch.distributed as dist

    owns_group = not (dist.is_available() and dist.is_initialized())
    engine = make_engine(cfg, rank_device(pick_device(cfg.device)))
    ok = False
    try:
        if engine.world == 1:
            result = _train_in(cfg, engine, model, tokenizer, train_examples, eval_examples, callbacks, forward,
                               source)
            ok = True
            return result
        # rank 0 checks and owns the run directory; the others learn whether that failed rather than wait forever
        err, prepared = None, None
        if engine.is_main:
            try:
                prepared = prepare_run_dir(cfg)
            except PreftuneError as e:
                err = str(e)
        err = engine.broadcast_object(err)
        if err is not None:
            raise ConfigError(err)
        result = _train_in(cfg, engine, model, tokenizer, train_examples, eval_examples, callbacks, forward, source,
                           prepared)
        ok = True
        return result
    finally:
        if owns_group:
            engine.close(ok)


def _train_in(cfg: TrainConfig, engine: Engine, model: Any, tokenizer: Any, train_examples: Any, eval_examples: Any,
              callbacks: Sequence[Callback], forward: Forward | None, source: BatchSource | None,
              prepared: tuple[Path, bool] | None = None) -> RunResult:
    if not engine.is_main:  # the lock and the directory are rank 0's
        with quiet_transformers(True):
            return _train(cfg, Path(cfg.output), model=model, tokenizer=tokenizer, train_examples=train_examples,
                          eval_examples=eval_examples, callbacks=callbacks, forward=forward, source=source,
                          engine=engine)
    out, created = prepared or prepare_run_dir(cfg)
    try:
        with run_lock(out), quiet_transformers(not cfg.progress):
            return _train(cfg, out, model=model, tokenizer=tokenizer, train_examples=train_examples,
                          eval_examples=eval_examples, callbacks=callbacks, forward=forward, source=source,
                          engine=engine)
    except BaseException:
        if created and set(os.listdir(out)) <= {LOCK}:  # failed before writing anything: leave no empty run dir
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, out: Path, *, model: Any, tokenizer: Any, train_examples: Sequence[Any] | None,
           eval_examples: Sequence[Any] | None, callbacks: Sequence[Callback], forward: Forward | None,
           source: BatchSource | None, engine: Engine | None = None) -> RunResult:
    engine = engine or Engine()
    if engine.is_main and cfg.overwrite and not cfg.resume:
        gone = clear_run(out)
        if gone:
            print(f"preftune: --overwrite: removed the previous run's {', '.join(gone)} from {out}")
    if engine.is_main:
        remove_stale_temps(out)
    engine.barrier()  # rank 0 has cleared the directory before anyone reads it
    if cfg.eval_every and eval_examples is None and not _given(cfg.eval_data):
        raise ConfigError(f"eval_every={cfg.eval_every} does nothing without eval_data; set --eval-data (held-out "
                          "data) or drop --eval-every")
    seed_everything(cfg.seed)
    device = rank_device(pick_device(cfg.device))
    if engine.world > 1 and engine.name == "fsdp2" and cfg.monitor:
        raise ConfigError("--monitor runs the model on rank 0 alone, which a sharded (fsdp2) model cannot do; "
                          "drop --monitor or use --distributed ddp")
    objective = build_objective(cfg.loss, **cfg.loss_params)
    forward = forward or PolicyLogps()
    provided = forward.provides + (source.provides if source is not None else OfflineSource.provides)
    suppliers_for(objective, provided=provided)  # refuse unknown needs before any work

    tokenizer = load_tokenizer_for(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id
    skipped: dict[str, int] = {}
    truncated = 0
    if source is None:
        if train_examples is None and not cfg.data:
            raise ConfigError("no training data given: set --data")
        data = load_data(cfg, tokenizer, train_examples, cfg.data, cfg.split, kind=objective.kind)
        if not data.items and data.kind.name == objective.kind:
            raise ConfigError(f"{data.name}: no training examples left")
        source = OfflineSource(data.items, data.kind, data.kind.collator(cfg.layout, pad_id, device),
                               batch_size=cfg.batch_size, seed=cfg.seed, group_by_length=cfg.group_by_length,
                               name=data.name)
        skipped, truncated = dict(data.skipped), data.truncated
    if source.kind.name != objective.kind:
        raise ConfigError(f"objective '{objective.name}' trains on {objective.kind} data, but {source.name} holds "
                          f"{source.kind.name} data")
    if hasattr(source, "check_columns"):
        source.check_columns(objective)
    layouts, layout = getattr(forward, "layouts", None), getattr(source.collate, "layout", None)
    if layouts and layout is not None and layout not in layouts:
        raise ConfigError(f"layout '{layout}' is not available to this model's forward ({type(forward).__name__} "
                          f"reads {', '.join(layouts)}); set --layout {layouts[0]}")
    eval_items: list[Any] = []
    if eval_examples is not None or cfg.eval_data:
        ev = load_data(cfg, tokenizer, eval_examples, cfg.eval_data, cfg.eval_split, kind=objective.kind,
                       evaluation=True)
        eval_items = ev.items
        for k, v in ev.skipped.items():
            skipped[f"eval/{k}"] = v
    if skipped and engine.is_main:
        msg = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        print(f"preftune: skipped bad rows ({sum(skipped.values())}): {msg}")
    if truncated and engine.is_main:
        print(f"preftune: {truncated} training rows truncated (max_length={cfg.max_length}, "
              f"max_prompt_length={cfg.max_prompt_length}, truncation={cfg.truncation})")

    model_given = model is not None
    model = load_policy(cfg, model, device)
    check_lengths(cfg, model, source, eval_items)
    if engine.world > 1 and cfg.ref == "precomputed" and not engine.is_main:
        engine.barrier()  # rank 0 computes and caches the reference log-probs; the others then read the cache
    reference = build_reference(cfg, objective, model, source, device, model_given, tokenizer)
    if engine.world > 1 and cfg.ref == "precomputed" and engine.is_main:
        engine.barrier()
    suppliers = suppliers_for(objective, provided=provided, reference=reference)
    for sup in suppliers:
        sup.prepare(objective, reference, getattr(source, "items", []), eval_items, pad_id, device)

    per_epoch = getattr(source, "batches_per_epoch", None)
    if not cfg.max_steps and per_epoch is None:
        raise ConfigError("this batch source makes its batches while training and has no epochs: set max_steps")
    # an optimizer step takes grad_accum micro-batches on each of the processes
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * max(1, per_epoch // (cfg.grad_accum * engine.world))))
    if engine.world > 1:  # each process its share of every step's micro-batches
        if hasattr(source, "shard"):
            source.shard(engine.rank, engine.world)
        elif hasattr(source, "skip"):
            source = ShardedSource(source, engine.rank, engine.world)  # type: ignore[assignment]
        else:
            raise ConfigError(f"{source.name} cannot be split over processes (it has no skip() or shard())")
    objective.bind(model)  # e.g. SparsePO's learned mask head, sized by the policy
    state = objective_state(objective).to(device)
    if engine.world > 1 and any(True for _ in state.buffers()) and engine.is_main:
        print(f"preftune: warning: objective '{objective.name}' keeps running statistics "
              f"({', '.join(n for n, _ in state.named_buffers())}); each process updates its own from its own "
              "micro-batches, so the run is not the one-process run (docs/distributed.md)")
    engine.wrap(model, state, reference)
    if hasattr(source, "bind"):  # a rollout source samples from the live policy
        import inspect

        kw = dict(model=model, tokenizer=tokenizer, reference=reference, device=device, config=cfg,
                  objective=objective)
        params = inspect.signature(source.bind).parameters
        if "engine" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kw["engine"] = engine  # how to run the policy outside training (a sharded model's root)
        source.bind(**kw)
    params = [p for p in model.parameters() if p.requires_grad] + list(state.parameters())
    optimizer, scheduler = build_optimizer(params, cfg, total)
    optimizer, scheduler = engine.prepare_optimizer(optimizer, scheduler)  # DeepSpeed wraps the optimizer
    settings = {**run_settings(cfg, engine.world), **_source_settings(source)}
    run = Run(cfg, model, tokenizer, objective, reference, source, forward, suppliers, state, params, optimizer,
              scheduler, device, eval_items, source.name, {"run_id": run_identity(settings), "run_settings": settings},
              engine)

    start_step = _resume(run, out) if cfg.resume else 0
    log_every = _saved_log_every(out, cfg.log_every)
    if engine.is_main:
        write_config(out, cfg, extra=getattr(source, "config_entries", dict)(), info={
            "objective": objective.name, "objective_config": objective.config(), "reference": reference.describe(),
            **source.describe(), "eval_examples": len(eval_items), "skipped_rows": skipped,
            "truncated_rows": truncated, "total_steps": total, "run_id": run.identity["run_id"],
            **engine.describe()})
    return _loop(run, out, start_step, total, callbacks, skipped, log_every)


def _resume(run: Run, out: Path) -> int:
    """Load the checkpoint ``--resume`` names (the newest verified one, or the path given) after checking it
    belongs to this run; returns its step. A run with metrics but no checkpoint is not silently restarted."""
    cfg = run.cfg
    if isinstance(cfg.resume, str):
        ck: Path | None = Path(cfg.resume)
        if not ck.is_dir():
            raise CheckpointError(f"--resume {cfg.resume}: no such checkpoint directory")
        verify_checkpoint(ck)
    else:
        ck = latest_checkpoint(out, fallback=cfg.resume_fallback)
    if ck is None:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size and not cfg.restart:
            raise ConfigError(f"{out} has metrics but no checkpoint to resume from; pass --restart to start the run "
                              "over (its metrics are discarded), or --overwrite to replace the run")
        print(f"preftune: no checkpoint in {out}; starting from step 0")
        return 0
    check_same_run(out, cfg, read_state(ck), ck, extra=_source_settings(run.source), command=_command(run.source),
                   world=run.engine.world)
    saved = load_checkpoint(ck, run.model, run.optimizer, run.scheduler, run.state,
                            engine=run.engine if run.engine.world > 1 else None)
    step = saved["step"]
    run.source.load_state_dict(saved.get("source") or saved)
    run.engine.barrier()  # every process has read the checkpoint before rank 0 prunes
    later = [p for s, p in list_checkpoints(out) if s > step]
    if run.engine.is_main:
        for p in later:  # resuming an earlier checkpoint abandons what came after it: never resume those later
            shutil.rmtree(p, ignore_errors=True)
        if later:
            print(f"preftune: removed {len(later)} later checkpoint(s) of the abandoned continuation")
        print(f"preftune: resumed from {ck} (step {step})" + (
            f" on {run.engine.world} processes" if run.engine.world > 1 else ""))
    return step


def _source_settings(source: Any) -> dict[str, Any]:
    """Settings of the batch source that make a different run (a rollout source's sampling and reward)."""
    fn = getattr(source, "run_settings", None)
    return dict(fn()) if fn is not None else {}


def _command(source: Any) -> str:
    """The command that resumes this run (a rollout source's ``preftune online``)."""
    return getattr(source, "command", "train")


def _given(data: Any) -> bool:
    return data is not None and not (isinstance(data, str) and not data)


def _saved_log_every(out: Path, default: int) -> int:
    import yaml

    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        v = saved.get("log_every") if isinstance(saved, dict) else None
        return v if isinstance(v, int) and v > 0 else default
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return default


def _loop(run: Run, out: Path, start_step: int, total: int, callbacks: Sequence[Callback],
          skipped: dict[str, int], log_every: int = 1) -> RunResult:
    cfg = run.cfg
    engine = run.engine
    metrics_path = out / "metrics.jsonl"
    history = truncate_metrics(metrics_path, start_step, log_every) if engine.is_main else []
    eval_history: list[dict[str, float]] = []
    state = TrainState(config=cfg, model=run.model, tokenizer=run.tokenizer, reference=run.reference,
                       objective=run.objective, output_dir=out, step=start_step, max_steps=total,
                       probe=list((run.eval_items or getattr(run.source, "items", []))[:16]),
                       collate=run.source.collate)
    # the caller's callbacks run on every process (state.is_main tells them apart); monitors and reporters on rank 0
    all_callbacks = run_callbacks(cfg, out, callbacks) if engine.is_main else list(callbacks)
    state.is_main = engine.is_main
    for cb in all_callbacks:
        cb.on_train_start(state)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start_step, desc=f"train {run.objective.name}",
               disable=not (cfg.progress and engine.is_main),
               dynamic_ncols=True, unit="step")
    nonfinite = 0
    step = start_step
    interrupted = False
    with _Interrupt() as intr:
        while step < total:
            rec, ok = train_step(run, step)
            if not ok:
                nonfinite += 1
            step += 1
            if nonfinite:
                rec["nonfinite_skipped"] = nonfinite
            state.step, state.epoch = step, rec["epoch"]
            for cb in all_callbacks:
                extra = cb.on_step_end(state, rec)
                if extra:
                    rec.update(extra)
            # with eval data but no --eval-every, evaluate once, at the end
            if run.eval_items and (step == total or (cfg.eval_every and step % cfg.eval_every == 0)):
                ev = evaluate(run.model, run.reference, run.objective, run.eval_items, run.source.collate, cfg,
                              run.device, forward=run.forward, suppliers=run.suppliers, engine=engine)
                ev["step"] = step
                eval_history.append(ev)
                rec.update({f"eval/{k}": v for k, v in ev.items() if k != "step"})
                for cb in all_callbacks:
                    cb.on_evaluate(state, ev)
            if (step % cfg.log_every == 0 or step == total) and engine.is_main:
                history.append(rec)
                _io(lambda: append_metrics(metrics_path, rec), f"appending to {metrics_path}")
            bar.update(1)
            shown = {"reward": f"{rec['reward']:.3f}"} if "reward" in rec else \
                {"acc": f"{rec.get('rewards/accuracies', float('nan')):.2f}"}  # online runs show their reward
            bar.set_postfix(loss=f"{rec['loss']:.4f}", **shown, tok_s=f"{rec['tokens_per_second']:.0f}")
            if engine.world > 1:  # a signal reaches the processes at different steps: all stop at the same one
                stop = engine.reduce_sum(1.0 if intr.requested else 0.0) > 0
                intr.requested = intr.requested or ("SIGTERM" if stop else None)
            if intr.requested:
                _checkpoint(run, out, step)
                print(f"\npreftune: {intr.requested} received; checkpoint saved at step {step}. "
                      f"Resume with: preftune {_command(run.source)} --config {out / 'config.yaml'} --resume")
                interrupted = True
                break
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                _checkpoint(run, out, step)
    bar.close()

    final_dir = None
    if not interrupted:
        _checkpoint(run, out, step)  # before final/: a crash while writing final/ resumes from here
        final_dir = None
        if cfg.save_final:
            full = engine.full_final_state(run.model)  # a sharded model gathered (a collective: every process)
            tensors = engine.full_state_tensors(run.state) if has_state(run.state) else None
            if engine.is_main:
                final_dir = _io(lambda: save_final(run.model, run.tokenizer, out / "final", run.state,
                                                   state_dict=full, objective_tensors=tensors),
                                f"writing {out / 'final'}")
        for cb in all_callbacks:
            extra = cb.on_train_end(state)
            if extra:
                history.append({"step": step, **extra})
    engine.barrier()  # no process leaves before rank 0 has written final/
    return RunResult(out, final_dir, history, eval_history, run.model, run.tokenizer, skipped, nonfinite,
                     interrupted, step)


def train_step(run: Run, step: int) -> tuple[dict[str, float], bool]:
    """One optimizer step (``grad_accum`` micro-batches). Returns the step's record and whether the update
    was applied (False: a non-finite loss or gradient was skipped, as ``on_nonfinite='skip'`` asks)."""
    cfg = run.cfg
    t0 = time.perf_counter()
    run.engine.zero_grad(run.optimizer)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # e.g. SPO's degradations
    agg: dict[str, float] = {}
    seen: dict[str, int] = {}
    tokens = 0
    loss_sum = 0.0
    rows: list[int] = []
    pad_id = getattr(run.source.collate, "pad_id", 0)
    engine = run.engine
    for i in range(cfg.grad_accum):
        mb = run.source.next()
        batch = mb.batch.to(run.device)
        rows += batch.rows
        try:
            # under DDP/FSDP2 the computation is the root module's forward; gradients sync on the last micro-batch
            with engine.sync(last=i == cfg.grad_accum - 1):
                loss, metrics, _ = engine.call(lambda: compute_loss(
                    run.model, run.reference, run.objective, batch, chunk_size=cfg.chunk_size, items=mb.items,
                    collate=run.source.collate, generator=gen, forward=run.forward, suppliers=run.suppliers))
                engine.backward(loss / cfg.grad_accum)
        except torch.OutOfMemoryError:
            raise TrainingError(_oom_message(cfg)) from None
        except RuntimeError as err:
            if _is_oom(err):
                raise TrainingError(_oom_message(cfg)) from None
            raise
        loss_sum += loss.item() / cfg.grad_accum
        for k, v in {**mb.metrics, **metrics}.items():
            agg[k] = agg.get(k, 0.0) + float(v)
            seen[k] = seen.get(k, 0) + 1
        tokens += int(batch.attention_mask.sum()) if batch.attention_mask.dim() == 2 \
            else int((batch.input_ids != pad_id).sum())
    agg = {k: v / seen[k] for k, v in agg.items()}
    if engine.world > 1:  # the step's metrics over every process (each process's mean, averaged)
        agg = engine.reduce_mean({**agg, "__loss": loss_sum})
        loss_sum = agg.pop("__loss")
        tokens = int(engine.reduce_sum(tokens))
    gnorm = engine.grad_norm(run.params, cfg.max_grad_norm)
    applied = True
    if not (math.isfinite(loss_sum) and math.isfinite(gnorm)):
        what = f"non-finite {'loss' if not math.isfinite(loss_sum) else 'gradient'} at step {step + 1}"
        if cfg.on_nonfinite == "stop":
            raise TrainingError(f"{what} (batch rows {sorted(rows)[:16]} of {run.data_name}); "
                                "lower --lr, check those rows, or pass --on-nonfinite skip")
        print(f"preftune: skipped update: {what} (rows {sorted(rows)[:16]})")
        engine.zero_grad(run.optimizer)
        applied = False
    else:
        try:
            engine.optimizer_step(run.optimizer)  # the first step allocates AdamW's state: a common place to run out
        except RuntimeError as err:  # torch.OutOfMemoryError included
            if _is_oom(err):
                raise TrainingError(_oom_message(cfg)) from None
            raise
    run.scheduler.step()
    dt = time.perf_counter() - t0
    lr = run.scheduler.get_last_lr()[0]
    rec = {"step": step + 1, "epoch": run.source.progress(), "loss": loss_sum, **agg,
           "lr": lr, "learning_rate": lr, "grad_norm": gnorm,
           "tokens_per_second": tokens / dt if dt > 0 else 0.0}
    return rec, applied


def _checkpoint(run: Run, out: Path, step: int) -> None:
    engine = run.engine
    if engine.world == 1:
        _io(lambda: save_checkpoint(out, step, run.model, run.optimizer, run.scheduler,
                                    extra={"source": run.source.state_dict(), **run.identity},
                                    keep=run.cfg.keep_checkpoints, objective_state=run.state),
            f"writing checkpoint step-{step} in {out / 'checkpoints'}")
        return
    # full tensors, in the one-process format (gathering is a collective), written by rank 0: the checkpoint
    # resumes on any number of processes
    weights = engine.full_model_state(run.model)
    tensors = engine.full_state_tensors(run.state) if has_state(run.state) else None
    optim = engine.full_optimizer_state(run.optimizer)
    source_state = run.source.state_dict()
    if engine.is_main:
        _io(lambda: save_checkpoint(out, step, run.model, run.optimizer, run.scheduler,
                                    extra={"source": source_state, **run.identity, "processes": engine.world},
                                    keep=run.cfg.keep_checkpoints, objective_state=run.state, model_state=weights,
                                    objective_tensors=tensors, optimizer_state=optim),
            f"writing checkpoint step-{step} in {out / 'checkpoints'}")
    engine.barrier()


def _io(write: Callable[[], Any], what: str) -> Any:
    """A write of the run directory; a full disk or a lost permission is one line, not a traceback. Every
    write is atomic, so what was there before (the previous checkpoint, final/) is intact."""
    try:
        return write()
    except OSError as e:
        raise TrainingError(f"{what} failed: {e.strerror or e}; the previous checkpoints are intact "
                            "(free space or fix the permission, then --resume)") from None


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
             cfg: TrainConfig, device: torch.device, *, forward: Forward | None = None,
             suppliers: Sequence[Supplier] | None = None, engine: Engine | None = None) -> dict[str, float]:
    """Mean loss and metrics of the objective over ``items`` (no gradient; objectives' running state is not
    updated). Over several processes each evaluates every ``world``-th batch and the sums are added up."""
    engine = engine or Engine()
    was = model.training
    model.eval()
    bs = cfg.eval_batch_size or cfg.batch_size
    tot: dict[str, float] = {}
    weight: dict[str, int] = {}  # a metric absent from a batch (e.g. no desirable example) is not averaged in
    starts = list(range(0, len(items), bs))
    rounds = math.ceil(len(starts) / engine.world)
    for j in range(rounds):
        b = j * engine.world + engine.rank
        # a process without a batch of its own in the last round repeats the first (weight 0): a sharded
        # model's forward is a collective, every process must run it
        i, w_on = (starts[b], 1) if b < len(starts) else (starts[0], 0)
        chunk = list(items[i:i + bs])
        batch = collate(chunk).to(device)
        loss, metrics, _ = engine.call(lambda: compute_loss(
            model, reference, objective, batch, chunk_size=cfg.chunk_size, items=chunk, collate=collate,
            generator=torch.Generator().manual_seed(cfg.seed), forward=forward, suppliers=suppliers))
        if not w_on:  # the stand-in batch: run for the collectives only
            continue
        w = len(chunk)
        for k, v in {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}.items():
            tot[k] = tot.get(k, 0.0) + v * w
            weight[k] = weight.get(k, 0) + w
    model.train(was)
    if engine.world > 1:  # the same keys everywhere (a process may have had no batch of its own), then summed
        keys = sorted(set().union(*engine.gather_objects(sorted(tot))))
        sums = engine.reduce_mean({**{f"t/{k}": tot.get(k, 0.0) for k in keys},
                                   **{f"w/{k}": float(weight.get(k, 0)) for k in keys}})
        tot = {k: sums[f"t/{k}"] * engine.world for k in keys}
        weight = {k: sums[f"w/{k}"] * engine.world for k in keys}
    return {k: v / weight[k] for k, v in tot.items() if weight[k]}


def save_final(model: Any, tokenizer: Any, target: Path, objective_state: Any = None, *,
               state_dict: dict[str, torch.Tensor] | None = None,
               objective_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer, atomically. A LoRA policy is merged into
    its base so that plain ``transformers`` loads ``final/``; the adapter is kept in ``final/adapter``.
    The objective's own state (e.g. SparsePO's mask head) goes to ``extra_modules.safetensors``.
    ``state_dict``/``objective_tensors``: those gathered already (a sharded model's full tensors)."""
    from ..models.loading import is_peft, unwrap

    with atomic_path(target, is_dir=True) as tmp:
        if state_dict is not None:
            if is_peft(model):
                raise ConfigError("writing final/ of a sharded LoRA policy is not supported; use --distributed ddp")
            unwrap(model).save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        elif is_peft(model):
            model.save_pretrained(tmp / "adapter")
            import copy
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if has_state(objective_state):
            from safetensors.torch import save_file
            save_file(objective_tensors if objective_tensors is not None else state_tensors(objective_state),
                      str(tmp / OBJECTIVE_STATE))
    return target
