"""``run_arena``: SFT model -> samples -> labelled preference data -> every objective -> held-out
evaluation -> report. One plain function; each stage lives in its own module.

Per seed: build (or load from the cache) the SFT model; sample ``samples_per_prompt``
answers for each training prompt and label them (:mod:`.labelling`); then, for each
objective, train a fresh copy of the SFT model with :func:`preftune.train.train` (the SFT
model is the frozen reference) and evaluate it on held-out prompts (:mod:`.evaluate`) -- or, when the
task has no prompt outside the training prompts, on fresh samples of training prompts, which
``results.json`` (``evaluation_note``, ``data[*].eval_prompt_source``) and the reports say in a note.
All policies are sampled with the same seed, so differences between them are not sampling luck.

``labeller="reward_model"``: per seed, a separate set of prompts is sampled and labelled by the task's
annotator (``preference_score``; ``noise`` flips these labels), a reward model (the SFT model with a new score
head, or an ensemble of ``rm_members`` of them) trains on those pairs with
:func:`preftune.reward.train_reward_model`, and its scores -- not the true reward -- label the pairs the policies
train on. Its pairwise accuracy against the true reward on held-out sampled pairs, its agreement with the true
reward on the policies' pairs and every policy's mean reward-model score (``rm_reward``, the proxy the policies
optimise) are in ``results.json`` (``labeller``) and the reports, so reward-model error and over-optimisation
show up next to the true reward.
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
from .labelling import label, make_pairs, pair_accuracy, rescore
from .models import SFTConfig, load_sft, sample, sft_model_dir
from .tasks import Task, get_task

# Preferred default line-up; the first four that are registered are used.
DEFAULT_OBJECTIVES = ("dpo", "ipo", "rpo", "simpo", "ln_dpo", "rdpo", "dpo+sft:0.2", "sft")
DPO_FAMILY_BETA = 0.1
METRICS = ("true_reward", "win_rate_vs_sft", "kl", "length", "ranking_accuracy", "reward_accuracy")
LABELLERS = ("true_reward", "reward_model")


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
    # who labels the pairs the policies train on: the task's annotator (true_reward) or a reward model trained on
    # rm_train_prompts x samples_per_prompt answers labelled by the annotator (reward_model)
    labeller: str = "true_reward"
    rm_train_prompts: int = 1024
    rm_steps: int = 100
    rm_batch_size: int = 32
    rm_lr: float = 1e-3
    rm_members: int = 1          # > 1: an ensemble (seeds seed, seed+1, ...) labels by mean - rm_k * std
    rm_k: float = 1.0
    # preference training (the same for every objective)
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    beta: float | None = 0.5     # for the DPO family (registry default beta 0.1); None keeps registry defaults
    params: dict[str, Any] = field(default_factory=dict)        # hyperparameters: "beta" or "dpo.beta"
    sweep: dict[str, list[Any]] = field(default_factory=dict)    # hyperparameter -> values
    save_models: bool = False
    # online contestants (preftune.online): trained on the same prompts and annotator at an equal budget of
    # reward calls (train_prompts x samples_per_prompt); see preftune.arena.online
    online: list[str] = field(default_factory=list)
    online_lr: float | None = None   # None: lr
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
        need(self.labeller in LABELLERS, f"labeller='{self.labeller}'; use {' or '.join(LABELLERS)}")
        for name in ("rm_train_prompts", "rm_steps", "rm_batch_size", "rm_members"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(self.rm_lr > 0, f"rm_lr must be > 0, got {self.rm_lr}")
        need(self.rm_k >= 0, f"rm_k must be >= 0, got {self.rm_k}")
        need(bool(self.seeds), "at least one seed is needed")
        from ..online.config import ALGORITHMS
        for algo in self.online:
            need(algo in ALGORITHMS and ALGORITHMS[algo].source in ("group", "pair"),
                 f"online '{algo}': use one of {', '.join(a for a, x in ALGORITHMS.items() if x.source in ('group', 'pair'))}")
        need(self.online_lr is None or self.online_lr > 0, f"online_lr must be > 0, got {self.online_lr}")
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
    from ..objectives.base import Wrapper

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
        # a wrapper (madpo, lcpo, wpo, tars) passes what it does not declare to its base: the base's count too
        classes += [objective_class(c.hyperparameters()["base"]["default"]) for c in list(classes)
                    if issubclass(c, Wrapper)]
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
    # rDPO/cDPO are told the flip rate of the pairs they train on: none were flipped under a reward-model labeller
    entries = resolve_objectives(cfg.objectives, cfg.params, cfg.sweep,
                                 0.0 if cfg.labeller == "reward_model" else cfg.noise, cfg.beta)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _quiet_transformers()

    from tqdm.auto import tqdm

    use_rm = cfg.labeller == "reward_model"
    units = len(seed_list) * (3 + use_rm + len(entries) + len(cfg.online))
    budget = cfg.train_prompts * cfg.samples_per_prompt   # reward calls an offline contestant's data cost
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
    rm_stats: list[dict[str, Any]] = []
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
        rm = None
        if use_rm:   # 2b. a reward model labels the policies' pairs instead of the annotator
            timings["sampling"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            stage(f"seed {seed}: training the reward model")
            rm, info = train_labeller(task_obj, sft_model, tok, path, seed, cfg, out, eval_prompts)
            scored = rescore(scored, rm)
            data = label(scored, noise=0.0, seed=seed, mode=cfg.pairs, keep_ties=cfg.keep_ties)
            true_c = [task_obj.reward(p.prompt, p.chosen) for p in data.pairs]
            true_r = [task_obj.reward(p.prompt, p.rejected) for p in data.pairs]
            untied = [(a, b) for a, b in zip(true_c, true_r) if a != b]
            info["policy_pairs"] = len(data.pairs)
            info["label_agreement"] = _mean([float(a > b) for a, b in untied])
            info["label_true_ties"] = _mean([float(a == b) for a, b in zip(true_c, true_r)])
            info["seconds"] = time.perf_counter() - t0
            timings["reward_model"] = timings.get("reward_model", 0.0) + info["seconds"]
            rm_stats.append(info)
            bar.update(1)
            t0 = time.perf_counter()
            rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras,
                     "true_reward_chosen": a, "true_reward_rejected": b, "flipped": False}
                    for p, a, b in zip(data.pairs, true_c, true_r)]
        else:
            data = label(scored, noise=cfg.noise, seed=seed, mode=cfg.pairs, keep_ties=cfg.keep_ties)
            rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras,
                     "flipped": i in set(data.flipped)} for i, p in enumerate(data.pairs)]
        _write_jsonl(out / "data" / f"seed{seed}" / "pairs.jsonl", rows)
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
            m = evaluate_policy(task_obj, policy, sft_model, tok, smp, sft_rewards, heldout, ref_pair_lp)
            if rm is not None:   # the proxy the policies optimise, beside the true reward
                m["rm_reward"] = _mean([float(v) for v in rm.score([s.prompt for row in smp for s in row],
                                                                  [s.response for row in smp for s in row])])
            return m

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
            per_seed.setdefault(e.label, []).append({**eval_policy(result.model, e.label), "reward_calls": budget})
            histories.setdefault(e.label, []).append(result.history)
            timings["evaluation"] += time.perf_counter() - t0
            bar.update(1)

        # 5. online contestants, at the same budget of reward calls ---------------------
        for algo in cfg.online:
            lbl = f"{algo} (online)"
            if lbl in skipped:
                bar.update(1)
                continue
            stage(f"seed {seed}: training {lbl}")
            t0 = time.perf_counter()
            try:
                res, calls = _online_contestant(algo, task_obj, path, tok, train_prompts, rm, seed, cfg, budget,
                                                out / "runs" / _safe(lbl) / f"seed{seed}")
            except (PreftuneError, ValueError, TypeError, KeyError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                skipped[lbl] = f"{type(err).__name__}: {msg}"
                if cfg.progress:
                    tqdm.write(f"arena: skipped {lbl}: {skipped[lbl]}")
                bar.update(1)
                continue
            timings["training"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            per_seed.setdefault(lbl, []).append({**eval_policy(res.model, lbl), "reward_calls": calls})
            histories.setdefault(lbl, []).append(res.history)
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
            "command": command or reproduce_command(cfg), "examples": examples,
            "labeller": labeller_summary(cfg, rm_stats)}
    note = evaluation_note(data_stats)
    notes_top, sections = [note] if note else [], []
    if note:
        meta["evaluation_note"] = note
    if use_rm:
        rm_note, rm_lines = labeller_lines(meta["labeller"], results)
        notes_top.append(rm_note)
        sections.append(rm_lines)
    write_report(out, results, meta, notes_top=notes_top, sections=sections)
    return results


def _online_contestant(algo: str, task: Task, sft_path: Path, tok: Any, prompts: Sequence[str], rm: Any, seed: int,
                       cfg: ArenaConfig, budget: int, run_dir: Path) -> tuple[Any, int]:
    """Train one online contestant from the SFT model; returns (run result, reward calls spent)."""
    from ..online.config import ALGORITHMS
    from .online import online_steps, train_online_entry

    k = 2 if algo == "online_dpo" else (cfg.samples_per_prompt if algo in ("grpo", "rloo")
                                        else ALGORITHMS[algo].num_generations)
    bs = cfg.batch_size if ALGORITHMS[algo].source == "pair" else max(k, cfg.batch_size // k * k)
    steps, per_step = online_steps(algo, budget, bs, k)

    def scorer(ps: list[str], cs: list[str]) -> list[float]:
        if rm is not None:
            return [float(v) for v in rm.score(ps, cs)]
        return [task.preference_score(p, c) for p, c in zip(ps, cs)]

    policy, _ = load_sft(sft_path)
    from ..objectives import objective_class

    accepted = objective_class(ALGORITHMS[algo].loss).hyperparameters()
    params = {k2.rpartition(".")[2]: v for k2, v in cfg.params.items()
              if k2.rpartition(".")[2] in accepted and k2.rpartition(".")[0] in (algo, ALGORITHMS[algo].loss)}
    # (only qualified names, --param grpo.negative_gradient=false: a plain beta means DPO's beta in the arena)
    res = train_online_entry(algo, task, sft_path, policy, tok, prompts, scorer=scorer, seed=seed, steps=steps,
                             batch_size=bs, lr=cfg.online_lr or cfg.lr, warmup_ratio=cfg.warmup_ratio, beta=cfg.beta,
                             k=k, out=run_dir, params=params)
    return res, steps * per_step


# ----------------------------------------------------------------------------- the reward-model labeller


def train_labeller(task: Task, sft_model: Any, tok: Any, sft_path: Path, seed: int, cfg: ArenaConfig, out: Path,
                   eval_prompts: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """Train the reward model that labels the policies' pairs; return ``(scorer, info)``.

    Its data: ``rm_train_prompts`` fresh prompts, ``samples_per_prompt`` SFT answers each, labelled by the task's
    annotator (``preference_score``) into pairs as the policies' data is (``pairs``, ties dropped; ``noise``
    flips ``round(noise * pairs)`` of them). The model: the SFT model with a new score head (seeded by ``seed``),
    trained with :func:`preftune.reward.train_reward_model` into ``<output>/reward_model/seedN`` (``member-i``
    per member). With ``rm_members > 1`` the scorer is the ensemble's ``mean - rm_k * std``. ``info`` holds the
    scorer's pairwise accuracy against the true reward on held-out pairs (every two SFT answers with different
    true rewards, ``samples_per_prompt`` answers to each evaluation prompt) and on its own training pairs."""
    from ..reward.ensemble import train_reward_ensemble
    from ..train import TrainConfig

    rm_prompts = task.sample_prompts(cfg.rm_train_prompts, random.Random(f"rm-prompts-{seed}"))
    gen = sample(sft_model, tok, rm_prompts, cfg.samples_per_prompt, seed=30_000 + seed,
                 max_new_tokens=task.max_new_tokens, temperature=cfg.temperature)
    rm_data = label([[(s.prompt, s.response, task.preference_score(s.prompt, s.response)) for s in row]
                     for row in gen], noise=cfg.noise, seed=seed, mode=cfg.pairs, keep_ties=False)
    if not rm_data.pairs:
        raise PreftuneError(f"task '{task.name}': every pair sampled for the reward model tied; no data to train it "
                            "(raise --rm-train-prompts, --samples-per-prompt or --temperature)")
    rdir = out / "reward_model" / f"seed{seed}"
    _write_jsonl(rdir / "pairs.jsonl", [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **p.extras,
                                         "flipped": i in set(rm_data.flipped)} for i, p in enumerate(rm_data.pairs)])
    rcfg = TrainConfig(model=str(sft_path), data="", output=str(rdir), loss="bradley_terry", max_steps=cfg.rm_steps,
                       batch_size=cfg.rm_batch_size, lr=cfg.rm_lr, warmup_ratio=cfg.warmup_ratio, seed=seed,
                       progress=False, max_length=64, max_prompt_length=32, device="cpu", overwrite=True,
                       save_final=cfg.save_models, group_by_length=False)
    ens = train_reward_ensemble(rcfg, cfg.rm_members, tokenizer=tok, train_examples=rm_data.pairs, k=cfg.rm_k,
                                batch_size=512)
    scorer = ens.as_reward_model("conservative" if cfg.rm_members > 1 else "mean")
    held = task_pairs(task, sample(sft_model, tok, list(eval_prompts), cfg.samples_per_prompt, seed=40_000 + seed,
                                   max_new_tokens=task.max_new_tokens, temperature=cfg.temperature))
    true_train = task_pairs(task, gen)
    info: dict[str, Any] = {
        "seed": seed, "train_pairs": len(rm_data.pairs), "flipped": len(rm_data.flipped),
        "ties_dropped": rm_data.ties_dropped, "heldout_pairs": len(held),
        "accuracy": pair_accuracy(scorer, held), "train_accuracy": pair_accuracy(scorer, true_train),
        "final_loss": _mean([r.history[-1]["loss"] for r in ens.results if r.history]),
        "output": str(rdir)}
    if cfg.rm_members > 1:
        info["member_accuracy"] = [pair_accuracy(m, held) for m in ens.models]
    return scorer, info


def task_pairs(task: Task, samples: Sequence[Sequence[Any]]) -> list:
    """Every two answers to a prompt with different *true* rewards, the better one chosen."""
    pairs, _ = make_pairs([[(s.prompt, s.response, task.reward(s.prompt, s.response)) for s in row]
                           for row in samples], mode="all")
    return pairs


def labeller_summary(cfg: ArenaConfig, rm_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``results.json``'s ``labeller``: the kind, and for a reward model its settings, per-seed numbers and their
    mean and std over seeds."""
    from .report import _mean_std

    if cfg.labeller != "reward_model":
        return {"kind": "true_reward", "annotator": "task.preference_score"}
    out: dict[str, Any] = {"kind": "reward_model", "annotator": "task.preference_score",
                           "settings": {k: getattr(cfg, k) for k in ("rm_train_prompts", "rm_steps", "rm_batch_size",
                                                                     "rm_lr", "rm_members", "rm_k")},
                           "score": "mean - rm_k * std over members" if cfg.rm_members > 1 else "the model's score",
                           "per_seed": list(rm_stats)}
    for k in ("accuracy", "train_accuracy", "label_agreement"):
        out[k], out[f"{k}_std"] = _mean_std([s[k] for s in rm_stats])
    return out


def labeller_lines(info: dict[str, Any], results: dict[str, dict]) -> tuple[str, list[str]]:
    """The reports' one-line note and their labeller section (markdown)."""
    def pm(k: str) -> str:
        m, sd = info.get(k, math.nan), info.get(f"{k}_std", math.nan)
        if m is None or math.isnan(m):
            return "-"
        return f"{m:.3f}" if len(info["per_seed"]) < 2 else f"{m:.3f} ± {sd:.3f}"

    st = info["settings"]
    what = (f"an ensemble of {st['rm_members']} reward models (mean - {st['rm_k']:g} x std)" if st["rm_members"] > 1
            else "a reward model")
    note = (f"Labeller: {what}, not the true reward. The policies' pairs were labelled by {what} trained on pairs "
            f"labelled by the task's annotator; its pairwise accuracy against the true reward on held-out pairs "
            f"is {pm('accuracy')}.")
    lines = ["## Labeller: reward model", "",
             f"The pairs the policies trained on were labelled by {what}: the SFT model with a new score head, "
             f"trained with `bradley_terry` for {st['rm_steps']} steps (batch {st['rm_batch_size']}, lr "
             f"{st['rm_lr']}) on pairs from {st['rm_train_prompts']} other prompts labelled by the task's annotator "
             "(label noise, if any, flips these). Accuracy: share of pairs whose better answer by the true reward "
             "the reward model scores higher; held-out pairs are every two SFT answers to an evaluation prompt "
             "with different true rewards. Agreement: share of the policies' pairs (ties by true reward left out) "
             "whose chosen answer has the higher true reward. `rm_reward`: the policy's mean reward-model score "
             "on its held-out answers (the proxy it optimised).", "",
             f"Accuracy vs the true reward: held-out **{pm('accuracy')}**, on its training answers "
             f"{pm('train_accuracy')}; "
             f"agreement on the policies' pairs {pm('label_agreement')}. Time for the reward model (sampling its "
             f"data, training, scoring): {sum(s.get('seconds', 0.0) for s in info['per_seed']):.0f} s.", "",
             "| seed | RM train pairs | flipped | held-out pairs | held-out accuracy | train accuracy | policy pairs "
             "| agreement | true-reward ties | final loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in info["per_seed"]:
        lines.append(f"| {s['seed']} | {s['train_pairs']} | {s['flipped']} | {s['heldout_pairs']} | "
                     f"{s['accuracy']:.3f} | {s['train_accuracy']:.3f} | {s['policy_pairs']} | "
                     f"{s['label_agreement']:.3f} | {s['label_true_ties']:.3f} | {s['final_loss']:.4f} |")
    base = results.get("sft (reference)")
    if base is not None and "rm_reward" in base:
        def fell(r: dict) -> bool:   # beyond the spread over seeds, as the report's other findings
            spread = max(r.get("true_reward_std", 0.0) or 0.0, base.get("true_reward_std", 0.0) or 0.0)
            return base["true_reward"] - r["true_reward"] > spread

        hacked = [lbl for lbl, r in results.items() if lbl != "sft (reference)" and "rm_reward" in r
                  and r["rm_reward"] > base["rm_reward"] and fell(r)]
        lines.append("")
        for lbl in hacked:
            r = results[lbl]
            lines.append(f"- **{lbl}**: the reward model's score rose "
                         f"({base['rm_reward']:.3f} -> {r['rm_reward']:.3f}) "
                         f"while the true reward fell ({base['true_reward']:.3f} -> {r['true_reward']:.3f}): "
                         "over-optimisation of the learned reward.")
        if not hacked:
            lines.append("No policy raised the reward model's score while lowering the true reward beyond the "
                         "spread.")
    return note, lines


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


def reproduce_command(cfg: ArenaConfig) -> str:
    """The ``preftune arena`` command line that reruns ``cfg`` (built-in tasks)."""
    d = ArenaConfig()
    parts = ["preftune", "arena", "--task", cfg.task]
    if cfg.objectives:
        parts += ["--objectives", ",".join(cfg.objectives)]
    if cfg.online:
        parts += ["--online", ",".join(cfg.online)]
    if cfg.seeds != list(range(len(cfg.seeds))):
        parts += ["--seed-list", ",".join(map(str, cfg.seeds))]
    elif len(cfg.seeds) != 1:
        parts += ["--seeds", str(len(cfg.seeds))]
    parts += ["--output", cfg.output]
    for f in ("cache_dir", "train_prompts", "samples_per_prompt", "temperature", "pairs", "noise", "labeller",
              "rm_train_prompts", "rm_steps", "rm_batch_size", "rm_lr", "rm_members", "rm_k", "steps",
              "batch_size", "lr", "warmup_ratio", "beta", "eval_prompts", "eval_samples", "threads", "online_lr"):
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
