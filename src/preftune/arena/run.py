"""``run_arena``: SFT model -> samples -> labelled preference data -> every objective -> held-out
evaluation -> report. One plain function; each stage lives in its own module.

Per seed: build (or load from the cache) the SFT model; sample ``samples_per_prompt``
answers for each training prompt and label them (:mod:`.labelling`); then, for each
objective, train a fresh copy of the SFT model with :func:`preftune.train.train` (the SFT
model is the frozen reference) and evaluate it on held-out prompts (:mod:`.evaluate`) -- or, when the
task has no prompt outside the training prompts, on fresh samples of training prompts, which
``results.json`` (``evaluation_note``, ``data[*].eval_prompt_source``) and the reports say in a note.
All policies are sampled with the same seed, so differences between them are not sampling luck.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, PreftuneError
from .evaluate import evaluate_policy, pair_logps
from .labelling import label, make_pairs
from .models import SFTConfig, load_sft, sample, sft_model_dir
from .tasks import Task, get_task

# Preferred default line-up; the first four that are registered are used.
DEFAULT_OBJECTIVES = ("dpo", "ipo", "rpo", "simpo", "ln_dpo", "rdpo", "dpo+sft:0.2", "sft")
DPO_FAMILY_BETA = 0.1
METRICS = ("true_reward", "win_rate_vs_sft", "kl", "length", "ranking_accuracy", "reward_accuracy")


@dataclass
class ArenaConfig:
    """Everything that defines an arena run (``preftune arena --help`` documents each field)."""

    task: str = "sort"
    objectives: list[str] = field(default_factory=list)   # empty: the default line-up
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str = "runs/arena"
    cache_dir: str | None = None
    # preference data
    train_prompts: int = 1024
    samples_per_prompt: int = 4
    temperature: float = 1.0
    pairs: str = "best_worst"
    keep_ties: bool = False
    noise: float = 0.0
    # preference training (the same for every objective)
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    beta: float | None = 0.5     # for the DPO family (registry default beta 0.1); None keeps registry defaults
    params: dict[str, Any] = field(default_factory=dict)        # hyperparameters: "beta" or "dpo.beta"
    sweep: dict[str, list[Any]] = field(default_factory=dict)    # hyperparameter -> values
    save_models: bool = False
    # evaluation
    eval_prompts: int = 512
    eval_samples: int = 2
    # SFT model
    sft: SFTConfig = field(default_factory=SFTConfig)
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(0.0 <= self.noise <= 1.0, f"noise must be in [0, 1], got {self.noise}")
        need(self.pairs in ("best_worst", "all"), f"pairs='{self.pairs}'; use best_worst or all")
        need(self.samples_per_prompt >= 2, f"samples_per_prompt must be >= 2, got {self.samples_per_prompt}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        for name in ("steps", "batch_size", "train_prompts", "eval_prompts", "eval_samples"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(bool(self.seeds), "at least one seed is needed")
        need(len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Entry:
    """One contestant: a display label, a loss spec for the trainer, its hyperparameters."""

    label: str
    spec: str
    params: dict[str, Any]
    kind: str


# ----------------------------------------------------------------------------- contestants


def _spec_names(entry: str) -> list[str]:
    from ..objectives import parse_spec

    return [n for n, _ in parse_spec(entry.replace("+", ","))]


def default_objectives() -> list[str]:
    from ..objectives import available

    names = set(available())
    picked = [o for o in DEFAULT_OBJECTIVES if all(n in names for n in _spec_names(o))]
    return picked[:4]


def resolve_objectives(objectives: Sequence[str] | str | None, params: dict[str, Any],
                       sweep: dict[str, list[Any]], noise: float = 0.0, beta: float | None = None) -> list[Entry]:
    """Expand names (``"all"``, ``"dpo,ipo"``, ``"dpo+sft:0.2"``) and sweeps into contestants.

    ``params`` keys are ``"beta"`` (every objective that declares ``beta``) or ``"dpo.beta"``
    (that objective only). A sweep makes one contestant per value, labelled ``dpo[beta=0.5]``.
    With label noise, objectives that take a flip rate (``label_smoothing``: rDPO, cDPO) get
    the true one unless ``params`` sets it. ``beta`` replaces the registry default of
    objectives whose default ``beta`` is the DPO family's 0.1 (the inverse temperature of the
    implicit reward), unless ``params`` sets it.
    """
    from ..objectives import available, objective_class

    if objectives is None or objectives == [] or objectives == "":
        objectives = default_objectives()
    if isinstance(objectives, str):
        objectives = [o for o in objectives.split(",") if o.strip()]
    names: list[str] = []
    for o in objectives:
        o = o.strip()
        if o == "all":
            names += [n for n in available() if n not in names]
        elif o not in names:
            names.append(o)
    entries: list[Entry] = []
    for name in names:
        terms = _spec_names(name)
        classes = [objective_class(t) for t in terms]
        accepted = {k for c in classes for k in c.hyperparameters()}
        own: dict[str, Any] = {}
        for k, v in params.items():
            obj, dot, hname = k.rpartition(".")
            if dot and obj in terms and hname in accepted:
                own[hname] = v
            elif not dot and k in accepted:
                own.setdefault(k, v)
        if beta is not None and "beta" not in own and any(
                c.hyperparameters().get("beta", {}).get("default") == DPO_FAMILY_BETA for c in classes):
            own["beta"] = beta   # answers of ~5 tokens: beta 0.1 barely regularises (see docs/arena.md)
        if noise and "label_smoothing" in accepted and "label_smoothing" not in own and 0 < noise < 0.5:
            own["label_smoothing"] = noise   # rDPO / cDPO are told the true flip rate (their assumption)
        variants: list[dict[str, Any]] = [{}]
        for hname, values in sweep.items():
            if hname in accepted:
                variants = [{**v, hname: x} for v in variants for x in values]
        for var in variants:
            lbl = name + ("[" + ",".join(f"{k}={v}" for k, v in var.items()) + "]" if var else "")
            entries.append(Entry(lbl, name.replace("+", ","), {**own, **var}, classes[0].kind))
    return entries


# ----------------------------------------------------------------------------- the run


def run_arena(task: Task | str = "sort", objectives: Sequence[str] | str | None = None,
              seeds: int | Sequence[int] | None = None, out_dir: str | Path | None = None, *,
              config: ArenaConfig | None = None, command: str | None = None, **overrides: Any) -> dict[str, dict]:
    """Run the arena and write its report; return ``{label: metrics}``.

    ``metrics`` holds the mean over seeds of each metric (``true_reward``,
    ``win_rate_vs_sft``, ``kl``, ``length``, ``ranking_accuracy``, ``reward_accuracy`` and the
    task's own), ``<metric>_std`` (standard deviation over seeds), ``per_seed`` (one dict per
    seed), ``verdict`` and ``history`` (the trainer's per-step records, one list per seed).
    The SFT model is the row ``"sft (reference)"``. ``overrides`` are :class:`ArenaConfig`
    fields (``noise=0.2``, ``steps=200``, ...). ``seeds`` is a count (``3`` = seeds 0, 1, 2) or a
    list; ``seeds``, ``objectives`` and ``out_dir`` left as None come from ``config``.
    """
    import torch

    from ..train import TrainConfig, train
    from .report import aggregate, write_report

    task_obj = get_task(task) if isinstance(task, str) else task
    if not isinstance(task_obj, Task):
        raise ConfigError(f"task must be a Task or a task name, got {type(task_obj).__name__}")
    base = config or ArenaConfig()
    if seeds is None:
        seed_list = list(base.seeds)
    else:
        seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if objectives is None:
        obj_list = list(base.objectives)
    else:
        obj_list = [o for o in objectives.split(",") if o.strip()] if isinstance(objectives, str) else list(objectives)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ArenaConfig)})
    if unknown:
        raise ConfigError(f"run_arena: unknown option(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(f.name for f in dataclasses.fields(ArenaConfig))}")
    cfg = dataclasses.replace(base, task=task_obj.name, seeds=seed_list, objectives=obj_list,
                              output=str(out_dir) if out_dir is not None else base.output, **overrides)
    entries = resolve_objectives(cfg.objectives, cfg.params, cfg.sweep, cfg.noise, cfg.beta)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _quiet_transformers()

    from tqdm.auto import tqdm

    units = len(seed_list) * (3 + len(entries))
    bar = tqdm(total=units, desc=f"arena {task_obj.name}", disable=not cfg.progress, dynamic_ncols=True,
               unit="stage")

    def stage(msg: str) -> None:
        bar.set_postfix_str(msg[:70], refresh=True)

    t_start = time.perf_counter()
    per_seed: dict[str, list[dict[str, float]]] = {}
    histories: dict[str, list[list[dict]]] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {"sft_build": 0.0, "sampling": 0.0, "training": 0.0, "evaluation": 0.0}
    examples: dict[str, list[tuple[str, str, float]]] = {}
    data_stats: list[dict[str, Any]] = []
    sft_cached: list[bool] = []
    for seed in seed_list:
        # 1. SFT model ------------------------------------------------------------------
        t0 = time.perf_counter()
        stage(f"seed {seed}: SFT model")
        path, cached = sft_model_dir(task_obj, seed, cfg.sft, cfg.cache_dir, progress=stage)
        sft_cached.append(cached)
        sft_model, tok = load_sft(path)
        timings["sft_build"] += time.perf_counter() - t0
        bar.update(1)

        # 2. preference data ------------------------------------------------------------
        t0 = time.perf_counter()
        stage(f"seed {seed}: sampling {cfg.train_prompts}x{cfg.samples_per_prompt} answers")
        train_prompts = task_obj.sample_prompts(cfg.train_prompts, random.Random(f"train-prompts-{seed}"))
        eval_prompts, eval_source = heldout_prompts(task_obj, train_prompts, cfg.eval_prompts, seed)
        gen = sample(sft_model, tok, train_prompts, cfg.samples_per_prompt, seed=seed,
                     max_new_tokens=task_obj.max_new_tokens, temperature=cfg.temperature)
        scored = [[(s.prompt, s.response, task_obj.preference_score(s.prompt, s.response)) for s in row]
                  for row in gen]
        data = label(scored, noise=cfg.noise, seed=seed, mode=cfg.pairs, keep_ties=cfg.keep_ties)
        _write_jsonl(out / "data" / f"seed{seed}" / "pairs.jsonl",
                     [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras,
                       "flipped": i in set(data.flipped)} for i, p in enumerate(data.pairs)])
        ch_len = [len(p.chosen) for p in data.pairs]
        rj_len = [len(p.rejected) for p in data.pairs]
        data_stats.append({"seed": seed, "eval_prompts": len(eval_prompts), "eval_prompt_source": eval_source,
                           "pairs": len(data.pairs), "ranked_lists": len(data.ranked),
                           "flipped": len(data.flipped), "ties_dropped": data.ties_dropped,
                           "chosen_length": _mean(ch_len), "rejected_length": _mean(rj_len),
                           "chosen_longer": _mean([float(a > b) for a, b in zip(ch_len, rj_len)])})
        if not data.pairs:
            raise PreftuneError(f"task '{task_obj.name}': every sampled pair tied; no preference data "
                                "(raise --samples-per-prompt or --temperature, or pass --keep-ties)")
        timings["sampling"] += time.perf_counter() - t0
        bar.update(1)

        # 3. the SFT model's own held-out numbers (the baseline every policy plays) ---------
        t0 = time.perf_counter()
        stage(f"seed {seed}: evaluating the SFT model")
        base_samples = sample(sft_model, tok, eval_prompts, cfg.eval_samples, seed=10_000 + seed,
                              max_new_tokens=task_obj.max_new_tokens, temperature=cfg.temperature)
        sft_rewards = [[task_obj.reward(s.prompt, s.response) for s in row] for row in base_samples]
        heldout, _ = make_pairs([[(s.prompt, s.response, task_obj.reward(s.prompt, s.response)) for s in row]
                                 for row in base_samples])
        ref_pair_lp = pair_logps(sft_model, tok, heldout) if heldout else None

        def eval_policy(policy: Any, lbl: str) -> dict[str, float]:
            smp = sample(policy, tok, eval_prompts, cfg.eval_samples, seed=20_000 + seed,
                         max_new_tokens=task_obj.max_new_tokens, temperature=cfg.temperature)
            if seed == seed_list[0]:
                examples[lbl] = [(s.prompt, s.response, task_obj.reward(s.prompt, s.response))
                                 for row in smp[:6] for s in row[:1]]
            return evaluate_policy(task_obj, policy, sft_model, tok, smp, sft_rewards, heldout, ref_pair_lp)

        sft_label = "sft (reference)"
        base_metrics = eval_policy(sft_model, sft_label)
        base_metrics["reward_accuracy"] = float("nan")   # log pi/pi_ref is 0 for the reference itself
        per_seed.setdefault(sft_label, []).append(base_metrics)
        timings["evaluation"] += time.perf_counter() - t0
        bar.update(1)

        # 4. every objective ------------------------------------------------------------
        for e in entries:
            if e.label in skipped:
                bar.update(1)
                continue
            stage(f"seed {seed}: training {e.label}")
            t0 = time.perf_counter()
            policy, _ = load_sft(path)
            run_dir = out / "runs" / _safe(e.label) / f"seed{seed}"
            tcfg = TrainConfig(model=str(path), data="", output=str(run_dir), loss=e.spec, loss_params=dict(e.params),
                               max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                               warmup_ratio=cfg.warmup_ratio, seed=seed, progress=False, max_length=64,
                               max_prompt_length=32, device="cpu", overwrite=True, save_final=cfg.save_models,
                               group_by_length=False)   # batches mixed in length: curves comparable step to step
            try:
                result = train(tcfg, model=policy, tokenizer=tok, train_examples=data.for_kind(e.kind))
            except (PreftuneError, ValueError, TypeError, KeyError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                skipped[e.label] = f"{type(err).__name__}: {msg}"
                if cfg.progress:
                    tqdm.write(f"arena: skipped {e.label}: {skipped[e.label]}")
                bar.update(1)
                continue
            timings["training"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            stage(f"seed {seed}: evaluating {e.label}")
            per_seed.setdefault(e.label, []).append(eval_policy(result.model, e.label))
            histories.setdefault(e.label, []).append(result.history)
            timings["evaluation"] += time.perf_counter() - t0
            bar.update(1)
        del sft_model
    bar.close()
    timings["total"] = time.perf_counter() - t_start

    results = aggregate(per_seed, histories)
    for lbl in list(skipped):
        results.pop(lbl, None)
    meta = {"config": cfg.to_dict(), "task": {"name": task_obj.name, "description": task_obj.description,
                                              "doc": (type(task_obj).__doc__ or "").strip(),
                                              "config": task_obj.config()},
            "objectives": {e.label: {"spec": e.spec, "params": e.params, "kind": e.kind} for e in entries},
            "skipped": skipped, "timings": timings, "data": data_stats, "sft_cached": sft_cached,
            "command": command or reproduce_command(cfg), "examples": examples}
    note = evaluation_note(data_stats)
    if note:
        meta["evaluation_note"] = note
    write_report(out, results, meta)
    if note:
        _add_note_to_reports(out, note)
    return results


# ----------------------------------------------------------------------------- helpers


def heldout_prompts(task: Task, train_prompts: Sequence[str], n: int, seed: int) -> tuple[list[str], str]:
    """Up to ``n`` evaluation prompts the training data does not contain, and where they come from.

    Normally ``'heldout'``: prompts drawn from the task that are not among ``train_prompts`` (fewer than
    ``n`` when the task has few unseen prompts). When the task's prompt space is so small that every
    prompt drawn was already trained on (e.g. seven possible prompts), no unseen prompt exists: the
    policies are then evaluated on ``n`` fresh draws of the task's prompts -- all of them *training*
    prompts, answered by fresh samples -- and the source is ``'train'`` (the report says so)."""
    rng = random.Random(f"eval-prompts-{seed}")
    drawn = task.sample_prompts(n * 2, rng)
    seen = set(train_prompts)
    unseen = [p for p in drawn if p not in seen][:n]
    if unseen:
        return unseen, "heldout"
    fresh = [p for p in drawn if p in seen][:n] or list(train_prompts)[:n]
    if not fresh:
        raise PreftuneError(f"task '{task.name}': no prompt to evaluate on (the task drew no prompts)")
    return fresh, "train"


def evaluation_note(data_stats: Sequence[dict[str, Any]]) -> str:
    """The report's note when some seed evaluated on training prompts (no unseen prompt existed)."""
    on_train = [d["seed"] for d in data_stats if d.get("eval_prompt_source") == "train"]
    if not on_train:
        return ""
    return (f"Evaluation on training prompts (seed{'s' if len(on_train) > 1 else ''} "
            f"{', '.join(map(str, on_train))}): the task has no prompt outside the training prompts, so the "
            "held-out metrics were measured on fresh samples for training prompts, not on unseen prompts; "
            "they show fit to the training prompts, not generalisation.")


def _add_note_to_reports(out: Path, note: str) -> None:
    """Put the evaluation note at the top of leaderboard.md and report.html (after the title)."""
    import html as _html

    from ..io import write_text

    md_path, html_path = out / "leaderboard.md", out / "report.html"
    if md_path.exists():
        lines = md_path.read_text().split("\n")
        lines[1:1] = ["", f"> **Note.** {note}"]
        write_text(md_path, "\n".join(lines))
    if html_path.exists():
        h = html_path.read_text()
        i = h.find("</h1>")
        tag = f'<p class="note"><strong>Note.</strong> {_html.escape(note)}</p>'
        h = h[:i + 5] + tag + h[i + 5:] if i >= 0 else h.replace("<body>", "<body>" + tag, 1)
        write_text(html_path, h)


def reproduce_command(cfg: ArenaConfig) -> str:
    """The ``preftune arena`` command line that reruns ``cfg`` (built-in tasks)."""
    d = ArenaConfig()
    parts = ["preftune", "arena", "--task", cfg.task]
    if cfg.objectives:
        parts += ["--objectives", ",".join(cfg.objectives)]
    if cfg.seeds != list(range(len(cfg.seeds))):
        parts += ["--seed-list", ",".join(map(str, cfg.seeds))]
    elif len(cfg.seeds) != 1:
        parts += ["--seeds", str(len(cfg.seeds))]
    parts += ["--output", cfg.output]
    for f in ("cache_dir", "train_prompts", "samples_per_prompt", "temperature", "pairs", "noise", "steps",
              "batch_size", "lr", "warmup_ratio", "beta", "eval_prompts", "eval_samples", "threads"):
        v = getattr(cfg, f)
        if v != getattr(d, f):
            parts += [f"--{f.replace('_', '-')}", str(v)]
    if cfg.keep_ties:
        parts.append("--keep-ties")
    if cfg.save_models:
        parts.append("--save-models")
    for k, v in cfg.params.items():
        parts += ["--param", f"{k}={v}"]
    for k, vs in cfg.sweep.items():
        parts += ["--sweep", f"{k}={','.join(map(str, vs))}"]
    for f in dataclasses.fields(SFTConfig):
        v = getattr(cfg.sft, f.name)
        if v != getattr(d.sft, f.name):
            parts += [f"--sft-{f.name.replace('_', '-')}", str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from ..io import write_text

    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
