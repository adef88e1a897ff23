"""DRIFT (P14) against iterative DPO and a SPIN-like baseline on the arena's ``sort`` task (true reward known).

The setting P14 is about: a deployed model's log holds many answers users were dissatisfied with, and few good
ones. Here the "deployed" model is the arena's SFT model for ``sort`` (imperfect demonstrations: half carry one
random edit); its DSAT log is, for each of ``--prompts`` training prompts, one sampled answer whose true reward is
below 1 (not the sorted list). Prompts whose sample was exact are not in the log. Every method starts from the
same SFT model, trains on the same prompts (the logged ones) for the same rounds and optimizer steps, with DPO
(beta 0.1, lr 2e-4, batch 16) and the round's starting policy as reference:

* ``drift``: ``preftune online --algo drift``: the logged DSAT answer rejected, one sample of pi_t chosen; no
  reward is used;
* ``iterative_dpo``: ``--algo iterative_dpo``: K = 4 samples of pi_t scored by the TRUE reward, best chosen and
  worst rejected (it sees the reward DRIFT never sees);
* ``spin``: SPIN-like (Chen et al. 2024): the task's correct answer chosen (a gold SFT answer, which P14 notes is
  scarce in practice), one sample of pi_t rejected; run on the same round runner.

Measured on 48 held-out prompts, 16 samples each at temperature 1: the mean true reward, the exact rate, the
coverage (share of prompts with at least one exact answer among the 16), and two diversity measures -- the
distinct answers per prompt and the distinct *high-reward* answers per prompt (reward >= 0.75: at most one
wrong or missing digit), the latter being P14's "more diverse high-reward solutions" read on this task. ``sort``
has ONE best answer per prompt, so diversity here is spread among near-correct answers, not among equally good
ones.

    .venv/bin/python benchmarks/drift_demo.py                         # 3 seeds, writes docs/figures/drift-sort.png
    .venv/bin/python benchmarks/drift_demo.py --seeds 0 --methods drift   # a quick look
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = ("drift", "iterative_dpo", "spin")
HIGH = 0.75


def build_sft(seed: int, cache: Path):
    from preftune.arena.models import SFTConfig, sft_model_dir
    from preftune.arena.tasks import SortTask

    cfg = SFTConfig(demos=1000, steps=300, batch_size=32, hidden_size=32, num_layers=2, num_heads=2)
    path, _ = sft_model_dir(SortTask(), seed, cfg, cache)
    return path


def dsat_log(sft: Path, seed: int, n: int) -> tuple[list[dict], float]:
    """One SFT sample per training prompt; those below reward 1 are the DSAT log. Returns (rows, SFT reward)."""
    from preftune.arena.models import load_sft, sample
    from preftune.arena.tasks import SortTask

    task = SortTask()
    prompts = task.sample_prompts(n, random.Random(f"drift-train-{seed}"))
    model, tok = load_sft(sft)
    out = sample(model, tok, prompts, 1, seed=seed, max_new_tokens=task.max_new_tokens)
    rewards = [task.reward(p, s[0].response) for p, s in zip(prompts, out)]
    rows = [{"prompt": p, "rejected": s[0].response} for p, s, r in zip(prompts, out, rewards)
            if r < 1.0 and s[0].response]
    return rows, sum(rewards) / len(rewards)


def evaluate(model_dir: Path, seed: int, n_prompts: int = 48, n: int = 16) -> dict[str, float]:
    from preftune.arena.models import load_sft, sample
    from preftune.arena.tasks import SortTask

    task = SortTask()
    prompts = task.sample_prompts(n_prompts, random.Random(f"drift-eval-{seed}"))
    model, tok = load_sft(model_dir)
    out = sample(model, tok, prompts, n, seed=10_000 + seed, max_new_tokens=task.max_new_tokens)
    rew, exact, cover, distinct, high = [], [], [], [], []
    for p, ss in zip(prompts, out):
        rs = [task.reward(p, s.response) for s in ss]
        rew += rs
        ex = [s.response == task.target(p) for s in ss]
        exact += ex
        cover.append(any(ex))
        distinct.append(len({s.response for s in ss}))
        high.append(len({s.response for s, r in zip(ss, rs) if r >= HIGH}))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"reward": mean(rew), "exact": mean(exact), "coverage@16": mean(cover),
            "distinct@16": mean(distinct), "distinct_high@16": mean(high)}


def train_cfg(sft: Path, out: Path, seed: int, steps: int, lr: float):
    from preftune.train import TrainConfig

    return TrainConfig(model=str(sft), output=str(out), max_steps=steps, batch_size=16, lr=lr, beta=0.1,
                       progress=False, save_every=0, seed=seed)


def run_method(method: str, sft: Path, rows: list[dict], out: Path, seed: int, rounds: int, steps: int,
               lr: float) -> Path:
    from preftune.online import OnlineConfig, train_online

    cfg = train_cfg(sft, out, seed, steps, lr)
    if method == "drift":
        train_online(cfg, OnlineConfig(algo="drift", prompts=rows, task="sort", rounds=rounds, max_new_tokens=10))
    elif method == "iterative_dpo":
        train_online(cfg, OnlineConfig(algo="iterative_dpo", prompts=[{"prompt": r["prompt"]} for r in rows],
                                       task="sort", num_generations=4, rounds=rounds, max_new_tokens=10))
    else:
        spin(cfg, rows, rounds)
    return out / "final"


def spin(cfg, rows: list[dict], rounds: int) -> None:
    """SPIN-like rounds on preftune's round runner: gold answer chosen, one sample of pi_t rejected."""
    from preftune.arena.models import encode
    from preftune.arena.tasks import SortTask
    from preftune.data.types import TokenizedPair
    from preftune.models.generate import generate
    from preftune.online.rounds import run_rounds
    from preftune.train.setup import load_tokenizer_for

    task = SortTask()
    tok = load_tokenizer_for(cfg, None)
    prompts = [r["prompt"] for r in rows]
    enc = [encode(tok, p, task.target(p)) for p in prompts]

    def make_rows(t, policy):
        gens = generate(policy, tok, [e[0] for e in enc], n=1, max_new_tokens=10, seed=cfg.seed * 1_000_003 + t)
        out = [{"prompt": p, "prompt_ids": e[0], "chosen_ids": e[1], "rejected_ids": g.response_ids}
               for p, e, g in zip(prompts, enc, gens) if g.response_ids != e[1]]
        return out, {"pairs": len(out), "prompts": len(prompts)}

    def make_items(rs):
        return [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], row=i + 1)
                for i, r in enumerate(rs)]

    run_rounds(cfg, rounds, name="spin", kind="pair", data_file="pairs.jsonl", make_rows=make_rows,
               make_items=make_items, tokenizer=tok)


def summarise(results: dict) -> dict:
    out = {}
    for m, per_seed in results.items():
        out[m] = {}
        for key in next(iter(per_seed.values())):
            xs = [r[key] for r in per_seed.values()]
            out[m][key] = (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["reward", "exact", "coverage@16", "distinct_high@16"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
    names = list(summary)
    for ax, k in zip(axes, keys):
        ax.bar(range(len(names)), [summary[m][k][0] for m in names], yerr=[summary[m][k][1] for m in names],
               color=["#888888", "#d62728", "#1f77b4", "#2ca02c"][:len(names)], capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(k, fontsize=9)
    fig.suptitle("sort: DRIFT vs iterative DPO vs SPIN-like (mean ± sd over seeds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--prompts", type=int, default=128, help="training prompts sampled for the DSAT log")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per round")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--cache", default=None, help="SFT model cache directory (default: a temporary one)")
    ap.add_argument("--out", default="docs/figures/drift-sort.png")
    ap.add_argument("--json", default=None, help="also write the per-seed numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    results: dict = {"sft": {}, **{m: {} for m in args.methods}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            sft = build_sft(seed, Path(args.cache) if args.cache else tmp / "cache")
            rows, sft_logged = dsat_log(sft, seed, args.prompts)
            print(f"seed {seed}: SFT reward on the training prompts {sft_logged:.3f}; DSAT log {len(rows)} rows",
                  flush=True)
            results["sft"][seed] = evaluate(sft, seed)
            for m in args.methods:
                final = run_method(m, sft, rows, tmp / f"{m}-{seed}", seed, args.rounds, args.steps, args.lr)
                results[m][seed] = evaluate(final, seed)
                print(f"seed {seed} {m}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[m][seed].items())
                      + f"  ({time.time() - t0:.0f} s)", flush=True)
    summary = summarise(results)
    print(f"\n{'method':15s}" + "".join(f"{k:>22s}" for k in next(iter(summary.values()))))
    for m, s in summary.items():
        print(f"{m:15s}" + "".join(f"{mu:>14.3f} ± {sd:5.3f}" for mu, sd in s.values()))
    print(f"seeds {args.seeds}, {args.rounds} rounds x {args.steps} steps, lr {args.lr}, {time.time() - t0:.0f} s")
    plot(summary, Path(args.out))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "per_seed": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
