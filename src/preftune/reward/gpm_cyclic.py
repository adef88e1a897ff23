"""The P31 demonstration: cyclic (rock-paper-scissors) preferences, which a Bradley-Terry model cannot fit and a
GPM can (Zhang et al. 2024, the paper's cyclic-preference experiment, rebuilt on synthetic token data).

Each response holds one *type* token (``n_types``, odd), one *quality* token (``n_quality`` levels) and a few
filler tokens; each prompt is one or two topic tokens that do not change the preference. A pair is

* *cyclic* (probability ``p_cyclic``): two different types; type ``a`` beats type ``b`` when
  ``(b - a) mod n`` is in ``1 .. (n-1)/2`` -- for three types A > B > C > A. Every type wins exactly half of its
  comparisons (a regular tournament), so a Bradley-Terry model's maximum-likelihood type rewards are all equal
  and it can do no better than chance on these pairs (its score equations match each type's win count);
* *transitive*: two responses of one type; the higher quality wins.

``flip`` flips a share of the labels at random. The same training pairs train a Bradley-Terry scalar scorer
(the ``bradley_terry`` objective) and a GPM (:func:`preftune.reward.gpm.gpm_loss`) on the same encoder
(:class:`~preftune.reward.gpm_train.BagEncoder`); both are scored on fresh test pairs, cyclic and transitive
separately. ``preftune rm gpm-demo`` runs it for several seeds and draws the figure.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .gpm import GPM, score_matrix
from .gpm_train import (BagEncoder, PairTensors, ScalarScorer, bt_pair_margins, gpm_pair_scores, pair_accuracy,
                        train_bradley_terry, train_gpm)


@dataclass
class CyclicConfig:
    """The demonstration's data and training settings (defaults: the documented run)."""

    n_types: int = 3
    n_quality: int = 4
    n_prompts: int = 8
    n_filler: int = 16
    fillers_per_response: int = 3
    p_cyclic: float = 0.5
    flip: float = 0.0
    train_pairs: int = 2000
    test_pairs: int = 1000
    hidden_size: int = 32
    k: int = 2
    gate: bool = True
    normalize: bool = True
    tau: float = 0.1
    steps: int = 300
    lr: float = 1e-2
    batch_size: int = 64

    def validate(self) -> None:
        if self.n_types < 3 or self.n_types % 2 == 0:
            raise ConfigError(f"n_types must be odd and >= 3 (a regular tournament); got {self.n_types}")
        if self.n_quality < 2:
            raise ConfigError(f"n_quality must be >= 2; got {self.n_quality}")
        if not 0 < self.p_cyclic < 1:
            raise ConfigError(f"p_cyclic must be in (0, 1); got {self.p_cyclic}")
        if not 0 <= self.flip < 0.5:
            raise ConfigError(f"flip must be in [0, 0.5); got {self.flip}")
        if min(self.train_pairs, self.test_pairs, self.n_prompts, self.hidden_size, self.k, self.steps) < 1:
            raise ConfigError("train_pairs, test_pairs, n_prompts, hidden_size, k and steps must be >= 1")
        if self.tau <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError(f"tau and lr must be > 0 and batch_size >= 1; got tau={self.tau}, lr={self.lr}, "
                              f"batch_size={self.batch_size}")

    # token ids: 0 padding, then prompts, types, qualities, fillers
    def prompt_token(self, i: int) -> int:
        return 1 + i

    def type_token(self, t: int) -> int:
        return 1 + self.n_prompts + t

    def quality_token(self, q: int) -> int:
        return 1 + self.n_prompts + self.n_types + q

    def filler_token(self, f: int) -> int:
        return 1 + self.n_prompts + self.n_types + self.n_quality + f

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_prompts + self.n_types + self.n_quality + self.n_filler


def beats(a: int, b: int, n: int) -> bool:
    """Type ``a`` beats type ``b`` in the regular cyclic tournament on ``n`` (odd) types."""
    return 1 <= (b - a) % n <= (n - 1) // 2


def make_pairs(cfg: CyclicConfig, n: int, rng: random.Random) -> tuple[PairTensors, torch.Tensor]:
    """``n`` labelled pairs and a bool ``[n]`` marking the cyclic ones."""
    prompts, chosen, rejected, cyclic = [], [], [], []

    def response(t: int, q: int) -> list[int]:
        toks = [cfg.type_token(t), cfg.quality_token(q)]
        toks += [cfg.filler_token(rng.randrange(cfg.n_filler)) for _ in range(cfg.fillers_per_response)]
        rng.shuffle(toks)
        return toks

    for _ in range(n):
        x = [cfg.prompt_token(rng.randrange(cfg.n_prompts)) for _ in range(rng.randint(1, 2))]
        if rng.random() < cfg.p_cyclic:
            ta, tb = rng.sample(range(cfg.n_types), 2)
            qa, qb = rng.randrange(cfg.n_quality), rng.randrange(cfg.n_quality)
            a_wins = beats(ta, tb, cfg.n_types)
        else:
            ta = tb = rng.randrange(cfg.n_types)
            qa, qb = rng.sample(range(cfg.n_quality), 2)
            a_wins = qa > qb
        if rng.random() < cfg.flip:
            a_wins = not a_wins
        ya, yb = response(ta, qa), response(tb, qb)
        prompts.append(x)
        chosen.append(ya if a_wins else yb)
        rejected.append(yb if a_wins else ya)
        cyclic.append(ta != tb)
    return PairTensors.from_lists(prompts, chosen, rejected), torch.tensor(cyclic)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_seed(cfg: CyclicConfig, seed: int) -> dict[str, Any]:
    """One seed: data, both models trained from the same encoder initialisation, test accuracies."""
    rng = random.Random(seed)
    train, _ = make_pairs(cfg, cfg.train_pairs, rng)
    test, cyc = make_pairs(cfg, cfg.test_pairs, rng)
    torch.manual_seed(seed)
    bt = ScalarScorer(BagEncoder(cfg.vocab_size, cfg.hidden_size), cfg.hidden_size)
    torch.manual_seed(seed)
    gpm = GPM(BagEncoder(cfg.vocab_size, cfg.hidden_size), cfg.hidden_size, k=cfg.k, gate=cfg.gate,
              normalize=cfg.normalize)
    t0 = time.perf_counter()
    kw = dict(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)
    bt_hist = train_bradley_terry(bt, train, **kw)
    gpm_hist = train_gpm(gpm, train, tau=cfg.tau, **kw)
    m_bt, s_gpm = bt_pair_margins(bt, test), gpm_pair_scores(gpm, test)
    out = {"seed": seed, "seconds": time.perf_counter() - t0,
           "bt": {"cyclic": pair_accuracy(m_bt[cyc]), "transitive": pair_accuracy(m_bt[~cyc]),
                  "all": pair_accuracy(m_bt), "final_loss": bt_hist[-1]},
           "gpm": {"cyclic": pair_accuracy(s_gpm[cyc]), "transitive": pair_accuracy(s_gpm[~cyc]),
                   "all": pair_accuracy(s_gpm), "final_loss": gpm_hist[-1]},
           "gpm_type_scores": type_score_matrix(gpm, cfg).tolist()}
    return out


@torch.no_grad()
def type_score_matrix(gpm: GPM, cfg: CyclicConfig) -> torch.Tensor:
    """The learned ``s(type i > type j)`` at quality 0 with no fillers, under prompt 0: the K = n_types responses'
    scores from their n_types embeddings (:func:`~preftune.reward.gpm.score_matrix`)."""
    x = [cfg.prompt_token(0)]
    ids = torch.tensor([x + [cfg.type_token(t), cfg.quality_token(0)] for t in range(cfg.n_types)])
    v, gate = gpm(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([x]), torch.ones(1, 1, dtype=torch.bool))
    return score_matrix(v, None if gate is None else gate[0])


def run_cyclic_demo(seeds: Sequence[int] = (0, 1, 2, 3, 4), cfg: CyclicConfig | None = None) -> dict[str, Any]:
    """Every seed, and the mean and sample standard deviation of each accuracy over seeds."""
    cfg = cfg or CyclicConfig()
    cfg.validate()
    if not seeds:
        raise ConfigError("give at least one seed")
    runs = [run_seed(cfg, s) for s in seeds]
    summary = {m: {split: dict(zip(("mean", "std"), _mean_std([r[m][split] for r in runs])))
                   for split in ("cyclic", "transitive", "all")} for m in ("bt", "gpm")}
    return {"config": asdict(cfg), "seeds": list(seeds), "runs": runs, "summary": summary}


def format_summary(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"cyclic-preference demo (P31), {len(result['seeds'])} seeds {result['seeds']}: "
             "test pair accuracy, mean ± std over seeds",
             f"{'model':<20} {'cyclic pairs':>16} {'transitive pairs':>18} {'all':>16}"]
    c = result["config"]
    gpm_name = f"GPM (k={c['k']}" + ("" if c["gate"] else ", no gate") + ("" if c["normalize"] else ", raw v") + ")"
    for m, name in (("bt", "Bradley-Terry"), ("gpm", gpm_name)):
        cells = [f"{s[m][x]['mean']:.3f} ± {s[m][x]['std']:.3f}" for x in ("cyclic", "transitive", "all")]
        lines.append(f"{name:<20} {cells[0]:>16} {cells[1]:>18} {cells[2]:>16}")
    return "\n".join(lines) + "\n"


def plot_demo(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels: accuracy (bars: mean over seeds, error bars: std, dots: seeds) on cyclic and transitive test
    pairs for both models; the first seed's learned GPM type-score matrix. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    runs = result["runs"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for i, (m, name, color) in enumerate((("bt", "Bradley-Terry", "tab:gray"), ("gpm", "GPM", "tab:blue"))):
        for j, split in enumerate(("cyclic", "transitive")):
            xs = [r[m][split] for r in runs]
            mean, std = _mean_std(xs)
            x = j + (i - 0.5) * 0.36
            ax.bar(x, mean, 0.34, yerr=std, color=color, capsize=4, label=name if j == 0 else None)
            ax.scatter([x] * len(xs), xs, color="black", s=10, zorder=3)
    ax.axhline(0.5, color="tab:red", lw=1, ls="--", label="chance")
    ax.set_xticks([0, 1], ["cyclic pairs (A>B>C>A)", "transitive pairs"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test pair accuracy")
    ax.set_title(f"{len(runs)} seeds: mean ± std, dots = seeds")
    ax.legend(loc="center", fontsize=8)  # the gap between the two groups of bars
    S = torch.tensor(runs[0]["gpm_type_scores"])
    n = S.shape[0]
    lim = float(S.abs().max()) or 1.0
    im = ax2.imshow(S, cmap="RdBu", vmin=-lim, vmax=lim)
    names = [chr(ord("A") + t) for t in range(n)]
    ax2.set_xticks(range(n), names)
    ax2.set_yticks(range(n), names)
    for a in range(n):
        for b in range(n):
            ax2.text(b, a, f"{float(S[a, b]):+.2f}", ha="center", va="center", fontsize=8)
    ax2.set_title(f"GPM s(row > column), seed {runs[0]['seed']}")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


__all__ = ["CyclicConfig", "beats", "format_summary", "make_pairs", "plot_demo", "run_cyclic_demo", "run_seed",
           "type_score_matrix"]
