"""Reward-model scaling (P57 WorldPM, "WorldPM: Scaling Human Preference Modeling", 2025): Bradley-Terry test
loss against training-set size, per model size, with a fitted power law.

WorldPM (sec. 3, fig. 1-3) trains Bradley-Terry preference models of several sizes on growing amounts of
preference data and finds that the test loss falls as a power law of the data where the evaluation is objective
(or adversarial), while on subjective evaluations -- labels that carry style preferences -- it does not. Its
scaling law is the usual one of language modelling (Kaplan et al. 2020, eq. 1.2), written here with an
irreducible term, per model size::

    L(D) = a * D^(-b) + c              a > 0, c >= 0

The loss is the Bradley-Terry test loss on held-out pairs, ``mean -log sigmoid(r(x, y_w) - r(x, y_l))``
(:func:`bt_loss`), in nats; ``log 2`` is chance.

Fitting (no scipy): :func:`fit_power_law` profiles ``c`` -- for a fixed ``c`` the law is a straight line in
log-log space, ``log(L - c) = log a - b log D``, solved by ordinary least squares (:func:`fit_loglinear`) --
over a grid of ``c`` in ``[0, min L)``, then refines ``(log a, b, c)`` jointly from the best grid point with
L-BFGS (float64 torch) on the squared error in log space, ``sum_i (log L_i - log(a D_i^-b + c))^2``, so every
decade of loss weighs alike. Exact points of a power law are recovered to about 1e-6
(``tests/test_reward_scaling.py``).

Public code: the authors' repository (QwenLM/WorldPM, README.md at commit
``0308f93cda60884fe5b987b534b885ef78f703a1``) releases models and a scoring example, no training or fitting code;
the fit here follows the paper's equation.

The experiment grid (:func:`run_scaling_grid`; ``preftune rm scale``) is in the second half of this module.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

# ----------------------------------------------------------------------------- the law and its fit


def power_law(d: Any, a: float, b: float, c: float) -> np.ndarray:
    """``a * d^(-b) + c`` (P57 WorldPM; Kaplan et al. 2020 eq. 1.2 with an irreducible loss ``c``)."""
    return a * np.asarray(d, dtype=np.float64) ** (-b) + c


def bt_loss(chosen: Any, rejected: Any) -> float:
    """Bradley-Terry loss of scored pairs, ``mean_i -log sigmoid(r_w,i - r_l,i)`` in nats (Ouyang et al. 2022
    eq. 1; WorldPM's test loss)."""
    rc, rr = torch.as_tensor(chosen, dtype=torch.float64), torch.as_tensor(rejected, dtype=torch.float64)
    if rc.shape != rr.shape or rc.numel() == 0:
        raise ConfigError(f"bt_loss needs chosen and rejected scores of one non-empty shape, got "
                          f"{tuple(rc.shape)} and {tuple(rr.shape)}")
    return float(F.softplus(-(rc - rr)).mean())


@dataclass
class PowerLawFit:
    """``L(D) = a * D^(-b) + c``; ``r2`` is the coefficient of determination of ``log L`` (1 = exact)."""

    a: float
    b: float
    c: float
    r2: float
    n: int

    def __call__(self, d: Any) -> np.ndarray:
        return power_law(d, self.a, self.b, self.c)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_points(d: Any, loss: Any, need: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(d, dtype=np.float64).ravel(), np.asarray(loss, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ConfigError(f"power-law fit: {x.size} data sizes but {y.size} losses")
    if x.size < need:
        raise ConfigError(f"power-law fit needs at least {need} points, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (x <= 0).any() or (y <= 0).any():
        raise ConfigError("power-law fit needs finite, positive data sizes and losses")
    return x, y


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ly, lp = np.log(y), np.log(np.maximum(pred, 1e-300))
    tot = float(((ly - ly.mean()) ** 2).sum())
    res = float(((ly - lp) ** 2).sum())
    return 1.0 - res / tot if tot > 0 else (1.0 if res < 1e-24 else 0.0)


def fit_loglinear(d: Any, loss: Any, c: float = 0.0) -> PowerLawFit:
    """Least squares of ``log(L - c) = log a - b log D`` for a fixed ``c`` (closed form; ``c < min L``)."""
    x, y = _check_points(d, loss, 2)
    if not c < y.min():
        raise ConfigError(f"power-law fit: c = {c} must be below the smallest loss {y.min()}")
    lx, ly = np.log(x), np.log(y - c)
    A = np.stack([np.ones_like(lx), -lx], 1)
    (log_a, b), *_ = np.linalg.lstsq(A, ly, rcond=None)
    a = float(math.exp(log_a))
    return PowerLawFit(a, float(b), float(c), _r2(y, power_law(x, a, float(b), c)), int(x.size))


def fit_power_law(d: Any, loss: Any, *, irreducible: bool = True, grid: int = 200, refine_steps: int = 200
                  ) -> PowerLawFit:
    """Fit ``L(D) = a * D^(-b) + c`` to measured ``(D, L)`` points (P57 WorldPM; see the module docstring).

    ``irreducible=False`` fixes ``c = 0`` (a straight line in log-log space, closed form; two points suffice).
    Otherwise at least three points: ``c`` is profiled over ``grid`` values in ``[0, min L)``, then ``(log a, b,
    c)`` refined with L-BFGS in float64, ``c = min L * sigmoid(u)`` so it stays in ``[0, min L)``."""
    if not irreducible:
        return fit_loglinear(d, loss, 0.0)
    x, y = _check_points(d, loss, 3)
    if grid < 2:
        raise ConfigError(f"power-law fit: grid must be >= 2, got {grid}")
    lo = y.min()
    best: PowerLawFit | None = None
    best_res = math.inf
    for c in lo * np.linspace(0.0, 1.0, grid, endpoint=False):
        f = fit_loglinear(x, y, float(c))
        res = float(((np.log(y) - np.log(f(x))) ** 2).sum())
        if res < best_res:
            best, best_res = f, res
    assert best is not None
    lx, ly = torch.tensor(np.log(x)), torch.tensor(np.log(y))
    frac = min(max(best.c / lo, 1e-9), 1 - 1e-9)
    params = torch.tensor([math.log(best.a), best.b, math.log(frac / (1 - frac))], dtype=torch.float64,
                          requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=refine_steps, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        la, b, u = params
        pred = torch.logaddexp(la - b * lx, math.log(lo) + F.logsigmoid(u))  # log(a D^-b + c), stable
        res = ((ly - pred) ** 2).sum()
        res.backward()
        return res

    opt.step(closure)
    with torch.no_grad():
        la, b, u = params.tolist()
        refined = (math.exp(la), b, lo / (1 + math.exp(-u)))
    res = float(((np.log(y) - np.log(power_law(x, *refined))) ** 2).sum())
    if not math.isfinite(res) or res > best_res:
        return best  # the refinement only ever improves on the grid
    return PowerLawFit(*refined, _r2(y, power_law(x, *refined)), int(x.size))


def monotone_share(d: Any, loss: Any) -> float:
    """Share of consecutive data sizes (sorted) at which the loss fell: 1 = it fell at every step."""
    x, y = np.asarray(d, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    y = y[np.argsort(x)]
    if y.size < 2:
        return float("nan")
    return float((np.diff(y) < 0).mean())


# ----------------------------------------------------------------------------- the experiment grid


@dataclass
class ModelSize:
    """A reward-model backbone: a tiny Llama-style causal LM (:func:`preftune.models.tiny.build_model`) of this
    width and depth, pretrained on the task's demonstrations as the arena's SFT model (``pretrain_steps``), then
    given a score head."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int


SIZES: dict[str, ModelSize] = {s.name: s for s in (
    ModelSize("xs", 8, 1, 2), ModelSize("s", 16, 1, 2), ModelSize("m", 32, 2, 4), ModelSize("l", 64, 2, 4),
    ModelSize("xl", 128, 4, 4))}


@dataclass
class ScalingConfig:
    """One ``rm scale`` grid: every ``sizes`` x ``data_sizes`` x ``annotators`` x ``seeds`` cell trains a
    Bradley-Terry reward model on ``D`` pairs for ``max(min_steps, ceil(epochs * D / batch_size))`` steps and
    measures its BT loss on ``test_pairs`` held-out pairs labelled by the same annotator."""

    task: str = "sort"
    sizes: list[str] = field(default_factory=lambda: ["xs", "s", "m", "l"])
    data_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048])
    annotators: list[str] = field(default_factory=lambda: ["objective", "style"])
    style_weight: float = 0.9
    style_feature: str = "length"
    annotator_temperature: float = 0.0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_pairs: int = 512
    samples_per_prompt: int = 4
    epochs: float = 8.0
    min_steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    pretrain_steps: int = 400
    pool_steps: int = 1200          # SFT steps of the model whose answers are labelled (the arena's default)
    cache_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [s for s in self.sizes if s not in SIZES]
        if unknown:
            raise ConfigError(f"unknown model size(s) {', '.join(unknown)}; available: {', '.join(SIZES)}")
        bad = [a for a in self.annotators if a not in ("objective", "style")]
        if bad:
            raise ConfigError(f"unknown annotator(s) {', '.join(bad)}; available: objective, style")
        if not self.data_sizes or min(self.data_sizes) < 1:
            raise ConfigError(f"data_sizes must be positive integers, got {self.data_sizes}")
        for name, v in (("test_pairs", self.test_pairs), ("batch_size", self.batch_size),
                        ("samples_per_prompt", self.samples_per_prompt - 1), ("pretrain_steps", self.pretrain_steps),
                        ("pool_steps", self.pool_steps)):
            if v < 1:
                raise ConfigError(f"{name} is too small: {getattr(self, name)}")
        if self.epochs <= 0 or self.lr <= 0:
            raise ConfigError(f"epochs and lr must be > 0, got {self.epochs} and {self.lr}")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")


def quick_config(**kw: Any) -> ScalingConfig:
    """A grid that runs in a few minutes on two shared CPU cores."""
    base = dict(sizes=["xs", "s", "m"], data_sizes=[64, 128, 256, 512], seeds=[0, 1], test_pairs=256,
                epochs=6.0, min_steps=50, pretrain_steps=300)
    base.update(kw)
    return ScalingConfig(**base)


def _annotator(cfg: ScalingConfig, name: str) -> Any:
    from ..arena.annotators import objective_annotator, style_annotator

    if name == "objective":
        return objective_annotator()
    return style_annotator(cfg.style_weight, cfg.style_feature, cfg.annotator_temperature)


def _backbone(task: Any, size: ModelSize, seed: int, cfg: ScalingConfig, progress: Callable[[str], None]) -> Path:
    from ..arena.models import SFTConfig, sft_model_dir

    sft = SFTConfig(steps=cfg.pretrain_steps, hidden_size=size.hidden_size, num_layers=size.num_layers,
                    num_heads=size.num_heads)
    path, _ = sft_model_dir(task, seed, sft, cfg.cache_dir, progress=progress)
    return path


def answer_pool(task: Any, seed: int, n_prompts: int, cfg: ScalingConfig, progress: Callable[[str], None]
                ) -> list[list[tuple[str, str]]]:
    """``n_prompts`` fresh prompts with ``samples_per_prompt`` answers each, sampled (temperature 1) from the
    arena's SFT model of this seed (``pool_steps`` SFT steps; the default is the arena's) -- the answers every
    annotator labels."""
    from ..arena.models import SFTConfig, load_sft, sample, sft_model_dir

    path, _ = sft_model_dir(task, seed, SFTConfig(steps=cfg.pool_steps), cfg.cache_dir, progress=progress)
    model, tok = load_sft(path)
    prompts = task.sample_prompts(n_prompts, random.Random(f"rm-scale-prompts-{seed}"))
    gen = sample(model, tok, prompts, cfg.samples_per_prompt, seed=50_000 + seed, max_new_tokens=task.max_new_tokens)
    return [[(s.prompt, s.response) for s in row] for row in gen]


def _score_pairs(model: Any, tok: Any, pairs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    from .model import RewardModel

    rm = RewardModel(model, tok, max_length=64, batch_size=256)
    prompts = [p.prompt for p in pairs]
    return rm.score(prompts, [p.chosen for p in pairs]), rm.score(prompts, [p.rejected for p in pairs])


def train_cell(backbone: Path, pairs: Sequence[Any], seed: int, cfg: ScalingConfig, out: Path) -> Any:
    """Train one reward model (the backbone with a new, seeded score head) on ``pairs``; returns ``(model,
    tokenizer)``."""
    from ..models.loading import load_tokenizer
    from ..train import TrainConfig
    from ..train.setup import quiet_transformers
    from .model import load_reward_model
    from .train import train_reward_model

    tok = load_tokenizer(str(backbone))
    torch.manual_seed(seed)  # the new score head's initialisation
    with quiet_transformers(True):
        model = load_reward_model(str(backbone), tokenizer=tok)
    steps = max(cfg.min_steps, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    tcfg = TrainConfig(model=str(backbone), data="", output=str(out), loss="bradley_terry", max_steps=steps,
                       batch_size=min(cfg.batch_size, len(pairs)), lr=cfg.lr, warmup_ratio=0.05, seed=seed,
                       progress=False, max_length=64, max_prompt_length=32, device=cfg.device, overwrite=True,
                       save_final=False, save_every=None, group_by_length=False, log_every=max(1, steps // 10))
    train_reward_model(tcfg, model=model, tokenizer=tok, train_examples=list(pairs))
    return model, tok


def run_scaling_grid(cfg: ScalingConfig, out_dir: str | Path, progress: Callable[[str], None] | None = None
                     ) -> dict[str, Any]:
    """Run the grid; returns (and writes to ``<out_dir>/results.json``) every cell's test loss and accuracies and,
    per annotator and size, the power law fitted to the mean test loss over seeds.

    Per seed: a pool of SFT answers to fresh prompts; per annotator the first ``max(data_sizes)`` labelled pairs
    train (the first ``D`` of them for size ``D``, so the sets are nested) and the last ``test_pairs`` test. Each
    model is also scored on the *objective* test pairs (``true_accuracy``): how well it ranks by the true reward."""
    from ..arena.annotators import annotate_pairs
    from ..arena.tasks import get_task
    from ..io import write_json

    say = progress or (lambda m: None)
    out = Path(out_dir)
    task = get_task(cfg.task)
    d_max = max(cfg.data_sizes)
    cells: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        # ties and repeated answers drop some prompts: draw a margin
        pool = answer_pool(task, seed, int(1.6 * (d_max + cfg.test_pairs)) + 64, cfg, say)
        labelled = {name: annotate_pairs(task, pool, _annotator(cfg, name), seed=seed)
                    for name in ("objective", *cfg.annotators)}
        for name, pairs in labelled.items():
            if len(pairs) < d_max + cfg.test_pairs:
                raise ConfigError(f"annotator '{name}' labelled only {len(pairs)} pairs; the grid needs "
                                  f"{d_max + cfg.test_pairs} (lower --data-sizes or --test-pairs)")
        true_test = labelled["objective"][-cfg.test_pairs:]
        for size_name in cfg.sizes:
            size = SIZES[size_name]
            backbone = _backbone(task, size, seed, cfg, say)
            for name in cfg.annotators:
                pairs = labelled[name]
                test = pairs[-cfg.test_pairs:]
                agree = sum(p.extras["true_reward_chosen"] > p.extras["true_reward_rejected"] for p in test) / len(test)
                for d in sorted(cfg.data_sizes):
                    model, tok = train_cell(backbone, pairs[:d], seed, cfg,
                                            out / "runs" / f"{name}-{size_name}-D{d}-seed{seed}")
                    c, r = _score_pairs(model, tok, test)
                    tc, tr = _score_pairs(model, tok, true_test)
                    cell = {"annotator": name, "size": size_name, "params": sum(p.numel() for p in model.parameters()),
                            "data": d, "seed": seed, "test_loss": bt_loss(c, r),
                            "test_accuracy": float((c > r).float().mean()),
                            "true_accuracy": float((tc > tr).float().mean()), "annotator_true_agreement": agree}
                    cells.append(cell)
                    write_json(out / "cells.partial.json", {"config": asdict(cfg), "cells": cells})  # survives a kill
                    say(f"rm scale: {name:9s} size {size_name:2s} D={d:5d} seed {seed}: test loss "
                        f"{cell['test_loss']:.4f}, acc {cell['test_accuracy']:.3f}, "
                        f"true acc {cell['true_accuracy']:.3f}")
    results = {"paper": "P57 WorldPM (2025): L(D) = a * D^-b + c per model size", "config": asdict(cfg),
               "cells": cells, "curves": summarize(cells)}
    write_json(out / "results.json", results)
    return results


def merge_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Pool the cells of several ``results.json`` files (say one run per seed) and refit; the first file's config
    stands for all, with the union of their seeds."""
    import json

    from ..errors import DataError

    cells: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for p in paths:
        try:
            res = json.loads(Path(p).read_text(encoding="utf-8"))
            part, cfg = res["cells"], res["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"not a results.json of `rm scale` ({type(e).__name__}: {e})", file=str(p)) from None
        cells += part
        config = config or dict(cfg)
    assert config is not None
    config["seeds"] = sorted({c["seed"] for c in cells})
    return {"paper": "P57 WorldPM (2025): L(D) = a * D^-b + c per model size", "config": config, "cells": cells,
            "curves": summarize(cells), "merged_from": [str(p) for p in paths]}


def summarize(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (annotator, size): mean and std over seeds of the test loss at each data size, the power-law fit to the
    means (None with fewer than three data sizes) and how monotonically the loss fell."""
    groups: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for c in cells:
        groups.setdefault((c["annotator"], c["size"]), {}).setdefault(c["data"], []).append(c)
    curves = []
    for (ann, size), by_d in groups.items():
        ds = sorted(by_d)
        mean = [float(np.mean([c["test_loss"] for c in by_d[d]])) for d in ds]
        std = [float(np.std([c["test_loss"] for c in by_d[d]])) for d in ds]
        fit = fit_power_law(ds, mean).to_dict() if len(ds) >= 3 else None
        curves.append({"annotator": ann, "size": size, "params": by_d[ds[0]][0]["params"], "data": ds,
                       "loss_mean": mean, "loss_std": std,
                       "accuracy_mean": [float(np.mean([c["test_accuracy"] for c in by_d[d]])) for d in ds],
                       "true_accuracy_mean": [float(np.mean([c["true_accuracy"] for c in by_d[d]])) for d in ds],
                       "seeds": len(by_d[ds[0]]), "fit": fit, "monotone_share": monotone_share(ds, mean)})
    return curves


def format_table(results: dict[str, Any]) -> str:
    """A markdown table: per annotator and size, the loss at each data size (mean +- std over seeds) and the fit."""
    curves = results["curves"]
    if not curves:
        return "(no cells)\n"
    ds = curves[0]["data"]
    head = "| annotator | size | params | " + " | ".join(f"D={d}" for d in ds) + " | a | b | c | R^2 (log) | falls |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cv in curves:
        f = cv["fit"] or {}
        vals = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(cv["loss_mean"], cv["loss_std"]))
        fit = (f"{f['a']:.3g} | {f['b']:.3g} | {f['c']:.3g} | {f['r2']:.3f}" if f else "- | - | - | -")
        lines.append(f"| {cv['annotator']} | {cv['size']} | {cv['params']} | {vals} | {fit} | "
                     f"{cv['monotone_share']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: str | Path) -> Path:
    """Test loss against data (log-log) per model size, one panel per annotator, the fitted laws dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = results["curves"]
    anns = list(dict.fromkeys(c["annotator"] for c in curves))
    fig, axes = plt.subplots(1, len(anns), figsize=(5.2 * len(anns), 4), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ann in zip(axes[0], anns):
        for i, cv in enumerate(c for c in curves if c["annotator"] == ann):
            col = colors[i % len(colors)]
            ax.errorbar(cv["data"], cv["loss_mean"], yerr=cv["loss_std"], fmt="o", color=col, capsize=3,
                        label=f"{cv['size']} ({cv['params']:,} params)")
            if cv["fit"]:
                grid = np.geomspace(min(cv["data"]), max(cv["data"]), 100)
                f = cv["fit"]
                ax.plot(grid, power_law(grid, f["a"], f["b"], f["c"]), "--", color=col,
                        label=f"  fit b={f['b']:.2f}, c={f['c']:.2f}")
        ax.axhline(math.log(2), color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{ann} annotator")
        ax.set_xlabel("training pairs D")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test BT loss (nats; dotted: log 2)")
    fig.suptitle(f"P57 WorldPM scaling, task {results['config']['task']}, "
                 f"{len(results['config']['seeds'])} seeds (error bars: std)")
    fig.tight_layout()
    from ..io import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=110, format=p.suffix.lstrip(".") or "png")
    plt.close(fig)
    return p
