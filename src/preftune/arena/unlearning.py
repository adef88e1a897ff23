"""Unlearning in the arena: NPO (P06) against gradient ascent on a forget set, with the model's utility
measured on retained data.

P06's claim: gradient ascent (GA) on the forget set drives the model to *catastrophic collapse* -- its
loss is unbounded, so it keeps pushing long after the forget data is unlikely and destroys what the
model does elsewhere -- while NPO's loss is bounded (the weight ``2 sigmoid(-beta h)`` vanishes as a
forget example becomes unlikely), so it forgets without collapse, or far more slowly.

The analogue here, on the arena's ``sort`` task and its cached SFT model: the *forget set* is a set of
sort prompts whose list contains the digit ``forget_digit`` (7), each with its right answer -- the
capability to forget; *retained* data are sort prompts without that digit. At each step in ``eval_at``
(one training run per objective and seed, evaluated in place by a callback) it measures, with greedy
decoding on prompts never trained on:

* ``forget_reward``: the true reward (share of digits in the right place) on held-out forget-type
  prompts -- lower is more forgotten;
* ``retain_reward``: the same on held-out retained prompts -- the model utility, which should stay;
* ``retain_malformed``: the share of retained answers that are not a digit string -- collapse;
* ``forget_nll``: the per-token NLL of the forget set's right answers (the trained-on data);
* ``retain_nll``: the same on the held-out retained prompts' right answers -- utility, read continuously
  (the greedy reward is all-or-nothing once answers break).

Run it with ``python benchmarks/unlearning_npo_vs_ga.py`` (see docs/arena.md).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..callbacks import Callback, TrainState
from ..data.types import UnpairedExample
from ..models.generate import generate
from .models import SFTConfig, decode, encode, load_sft, sft_model_dir
from .tasks import SortTask


@dataclass
class UnlearningConfig:
    """One unlearning comparison. ``objectives``: label -> (preftune objective, hyperparameters), e.g.
    ``{"ga": ("grad_ascent", {}), "npo": ("npo", {"beta": 0.1})}``; ``retain_prompts`` > 0 adds retained
    examples (label True) to the training data, for objectives with a retain term."""

    objectives: dict[str, tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: {"grad_ascent": ("grad_ascent", {}), "npo": ("npo", {"beta": 0.1})})
    seeds: Sequence[int] = (0, 1, 2)
    forget_digit: str = "7"
    forget_prompts: int = 256
    retain_prompts: int = 0
    eval_prompts: int = 256
    steps: int = 200
    eval_at: Sequence[int] = (25, 50, 100, 200)
    batch_size: int = 32
    lr: float = 1e-3
    cache_dir: str | None = None
    sft: SFTConfig = field(default_factory=SFTConfig)


def split_prompts(task: SortTask, n_forget: int, n_retain: int, digit: str, rng: random.Random,
                  exclude: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Distinct sort prompts: ``n_forget`` whose list contains ``digit``, ``n_retain`` without it."""
    forget: list[str] = []
    retain: list[str] = []
    seen = set(exclude)
    while len(forget) < n_forget or len(retain) < n_retain:
        p = task.sample_prompts(1, rng)[0]
        if p in seen:
            continue
        seen.add(p)
        bucket, cap = (forget, n_forget) if digit in SortTask._digits(p) else (retain, n_retain)
        if len(bucket) < cap:
            bucket.append(p)
    return forget, retain


def _answer_nll(model: Any, tok: Any, task: SortTask, prompts: Sequence[str]) -> float:
    """Per-token NLL of the right answers (answer + eos), one right-padded batch."""
    from ..models.scoring import response_logps

    items = [encode(tok, p, task.target(p)) for p in prompts]
    lp = response_logps(model, items, pad_id=tok.pad_token_id, batch_size=256)
    return float(-lp.sum() / sum(len(r) for _, r in items))


def evaluate_unlearning(model: Any, tok: Any, task: SortTask, forget_train: Sequence[str],
                        forget_eval: Sequence[str], retain_eval: Sequence[str]) -> dict[str, float]:
    """The five numbers of the module docstring (greedy decoding for the rewards)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        def greedy(prompts: Sequence[str]) -> list[str]:
            gens = generate(model, tok, [encode(tok, p)[0] for p in prompts], max_new_tokens=task.max_new_tokens,
                            do_sample=False, batch_size=512, bucket_by_length=True)
            return [decode(tok, g.response_ids) for g in gens]
        f = greedy(forget_eval)
        r = greedy(retain_eval)
        out = {"forget_reward": sum(task.reward(p, a) for p, a in zip(forget_eval, f)) / len(f),
               "retain_reward": sum(task.reward(p, a) for p, a in zip(retain_eval, r)) / len(r),
               "retain_malformed": sum(not (a.isdigit()) for a in r) / len(r),
               "forget_nll": _answer_nll(model, tok, task, forget_train),
               "retain_nll": _answer_nll(model, tok, task, retain_eval)}
    model.train(was_training)
    return out


class _EvalAt(Callback):
    def __init__(self, at: Sequence[int], fn: Callable[[Any], dict[str, float]]):
        self.at, self.fn, self.results = set(at), fn, {}

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> dict[str, float] | None:
        if state.step in self.at:
            self.results[state.step] = self.fn(state.model)
        return None


def run_unlearning(cfg: UnlearningConfig, output: str, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Train every objective of ``cfg`` from each seed's SFT model on the forget set and evaluate it at
    ``cfg.eval_at``. Returns ``{"sft": {seed: metrics}, "runs": {objective: {seed: {step: metrics}}},
    "seconds": wall time}``."""
    from ..train import TrainConfig, train

    t0 = time.perf_counter()
    task = SortTask()
    res: dict[str, Any] = {"sft": {}, "runs": {name: {} for name in cfg.objectives}}
    for seed in cfg.seeds:
        path, _ = sft_model_dir(task, seed, cfg.sft, cfg.cache_dir, progress)
        rng = random.Random(f"unlearn-{seed}")
        forget_train, retain_train = split_prompts(task, cfg.forget_prompts, cfg.retain_prompts, cfg.forget_digit,
                                                   rng)
        forget_eval, retain_eval = split_prompts(task, cfg.eval_prompts, cfg.eval_prompts, cfg.forget_digit, rng,
                                                 exclude=set(forget_train) | set(retain_train))
        data = [UnpairedExample(p, task.target(p), False, row=i) for i, p in enumerate(forget_train)]
        data += [UnpairedExample(p, task.target(p), True, row=len(data) + i) for i, p in enumerate(retain_train)]
        sft_model, tok = load_sft(path)
        res["sft"][seed] = evaluate_unlearning(sft_model, tok, task, forget_train, forget_eval, retain_eval)
        for name, (spec, params) in cfg.objectives.items():
            policy, _ = load_sft(path)
            cb = _EvalAt(cfg.eval_at, lambda m: evaluate_unlearning(m, tok, task, forget_train, forget_eval,
                                                                    retain_eval))
            tcfg = TrainConfig(model=str(path), data="", output=f"{output}/{name}/seed{seed}", loss=spec,
                               loss_params=dict(params), max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                               lr_schedule="constant", seed=seed, progress=False, max_length=64,
                               max_prompt_length=32, device="cpu", overwrite=True, save_final=False,
                               save_every=0, group_by_length=False)
            train(tcfg, model=policy, tokenizer=tok, train_examples=data, callbacks=[cb])
            res["runs"][name][seed] = cb.results
            if progress:
                progress(f"unlearning: {name} seed {seed} done")
    res["seconds"] = time.perf_counter() - t0
    return res


def summary_rows(res: dict[str, Any], metric_names: Sequence[str] = ("forget_reward", "retain_reward",
                                                                     "retain_malformed", "forget_nll", "retain_nll")
                 ) -> list[tuple[str, int, dict[str, tuple[float, float]]]]:
    """``(objective, step, {metric: (mean, std over seeds)})`` rows; the SFT model is step 0 of ``sft``."""
    def ms(vals: list[float]) -> tuple[float, float]:
        t = torch.tensor(vals, dtype=torch.float64)
        return float(t.mean()), float(t.std(unbiased=True)) if len(vals) > 1 else 0.0

    rows = [("sft", 0, {k: ms([res["sft"][s][k] for s in res["sft"]]) for k in metric_names})]
    for name, by_seed in res["runs"].items():
        steps = sorted({st for per in by_seed.values() for st in per})
        for st in steps:
            rows.append((name, st, {k: ms([by_seed[s][st][k] for s in by_seed if st in by_seed[s]])
                                    for k in metric_names}))
    return rows


__all__ = ["UnlearningConfig", "evaluate_unlearning", "run_unlearning", "split_prompts", "summary_rows"]
