"""P64 CDR in the arena: pair accuracy of the density-ratio reward ``log pi_strong(y|x) - log pi_weak(y|x)``
against the true reward, as the gap between the strong and the weak model grows.

Weak: the arena's SFT model of the task (fitted to imperfect demonstrations; cached). Strong: the weak model after
``k`` more steps of SFT on *right* answers (the task's target), for each ``k`` in ``--strong-steps``: the larger
``k``, the better aligned the strong model. The gap is measured, not assumed: the strong model's mean true reward
on held-out prompts minus the weak model's (temperature-1 samples). The scored pairs: ``--samples`` weak-model
answers to each of ``--prompts`` held-out prompts; every two with different true rewards make a pair, the better
one chosen. Accuracy counts a tie as wrong (as the arena's ``pair_accuracy``). Beside the density ratio: the
strong model's log-likelihood alone (``log pi_strong``; reference-free) and the weak model's.

Customised (``--criteria``): one more strong model is trained for ``--criteria-steps`` steps on a mixture -- half
of each batch the criteria text before the prompt with the right answer, half the plain prompt with the task's
imperfect demonstrations -- so only the criteria elicit the better behaviour; its density ratio is scored with
and without the criteria given to the strong model (P64's customised density ratio).

    python benchmarks/reward/cdr_gap.py --seeds 0 1 2 --output runs/cdr --figure docs/figures/cdr-gap.png
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from preftune.arena.labelling import make_pairs, pair_accuracy
from preftune.arena.models import SFTConfig, encode, load_sft, sample, sft_model_dir
from preftune.arena.tasks import get_task
from preftune.reward.density_ratio import DensityRatioReward


def sft_more(model, tok, examples, steps: int, *, seed: int, lr: float, batch_size: int):
    """A copy of ``model`` trained ``steps`` more steps of response NLL on ``examples`` ((prompt, response))."""
    m = copy.deepcopy(model)
    if steps == 0:
        return m.eval()
    rng = random.Random(f"cdr-strong-{seed}")
    enc = [encode(tok, p, r) for p, r in examples]
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    m.train()
    for _ in range(steps):
        idx = [rng.randrange(len(enc)) for _ in range(batch_size)]
        T = max(len(enc[i][0]) + len(enc[i][1]) for i in idx)
        ids = torch.full((batch_size, T), tok.pad_token_id)
        attn = torch.zeros((batch_size, T), dtype=torch.long)
        labels = torch.full((batch_size, T), -100)
        for row, i in enumerate(idx):
            p, r = enc[i]
            ids[row, :len(p) + len(r)] = torch.tensor(p + r)
            attn[row, :len(p) + len(r)] = 1
            labels[row, len(p):len(p) + len(r)] = torch.tensor(r)
        loss = m(input_ids=ids.to(m.device), attention_mask=attn.to(m.device), labels=labels.to(m.device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    return m.eval()


def mean_true_reward(task, model, tok, prompts, seed: int, n: int = 4, prefix: str = "") -> float:
    gen = sample(model, tok, [prefix + p for p in prompts], n, seed=seed, max_new_tokens=task.max_new_tokens)
    return float(np.mean([task.reward(p, s.response) for p, row in zip(prompts, gen) for s in row]))


class LogLik:
    """Reference-free baseline: a model's summed response log-prob (P64's comparison point)."""

    def __init__(self, drr: DensityRatioReward, which: str):
        self.drr, self.which = drr, which

    def score(self, prompts, responses):
        return self.drr.components(prompts, responses)[self.which]


def run_seed(task, seed: int, args, say) -> dict:
    path, _ = sft_model_dir(task, seed, SFTConfig(steps=args.sft_steps), args.cache_dir, progress=say)
    weak, tok = load_sft(path)
    weak.to(args.device)
    rng = random.Random(f"cdr-prompts-{seed}")
    train_prompts = task.sample_prompts(args.train_prompts, rng)
    good = [(p, task.target(p)) for p in train_prompts]
    eval_prompts = task.sample_prompts(args.prompts, random.Random(f"cdr-eval-{seed}"))
    gen = sample(weak, tok, eval_prompts, args.samples, seed=60_000 + seed, max_new_tokens=task.max_new_tokens)
    pairs, _ = make_pairs([[(s.prompt, s.response, task.reward(s.prompt, s.response)) for s in row] for row in gen],
                          mode="all")
    gap_prompts = task.sample_prompts(args.gap_prompts, random.Random(f"cdr-gap-{seed}"))
    weak_reward = mean_true_reward(task, weak, tok, gap_prompts, 70_000 + seed)
    rows = []
    for k in args.strong_steps:
        strong = sft_more(weak, tok, good, k, seed=seed, lr=args.lr, batch_size=args.batch_size)
        drr = DensityRatioReward(strong, weak, tok, batch_size=256)
        row = {"seed": seed, "strong_steps": k, "pairs": len(pairs),
               "gap": mean_true_reward(task, strong, tok, gap_prompts, 70_000 + seed) - weak_reward,
               "accuracy": pair_accuracy(drr, pairs),
               "accuracy_mean_reduction": pair_accuracy(DensityRatioReward(strong, weak, tok, reduction="mean",
                                                                            batch_size=256), pairs),
               "accuracy_strong_loglik": pair_accuracy(LogLik(drr, "strong"), pairs),
               "accuracy_weak_loglik": pair_accuracy(LogLik(drr, "weak"), pairs)}
        rows.append(row)
        say(f"seed {seed} k={k}: gap {row['gap']:+.3f}, accuracy {row['accuracy']:.3f} (strong loglik "
            f"{row['accuracy_strong_loglik']:.3f}, weak loglik {row['accuracy_weak_loglik']:.3f})")
    custom = None
    if args.criteria:
        demos = task.demonstrations(len(train_prompts), random.Random(f"cdr-demos-{seed}"))
        mixed = [(args.criteria + p, t) for p, t in good] + demos  # half the draws criteria->right, half plain->demo
        strong = sft_more(weak, tok, mixed, args.criteria_steps, seed=seed, lr=args.lr, batch_size=args.batch_size)
        custom = {"seed": seed, "steps": args.criteria_steps,
                  "gap_plain": mean_true_reward(task, strong, tok, gap_prompts, 70_000 + seed) - weak_reward,
                  "gap_with_criteria": mean_true_reward(task, strong, tok, gap_prompts, 70_000 + seed,
                                                        prefix=args.criteria) - weak_reward,
                  "accuracy_plain": pair_accuracy(DensityRatioReward(strong, weak, tok, batch_size=256), pairs),
                  "accuracy_criteria": pair_accuracy(DensityRatioReward(strong, weak, tok, criteria=args.criteria,
                                                                        batch_size=256), pairs)}
        say(f"seed {seed} criteria: accuracy {custom['accuracy_plain']:.3f} plain -> "
            f"{custom['accuracy_criteria']:.3f} with criteria")
    return {"rows": rows, "custom": custom}


def summarize(per_seed: list[dict], steps: list[int]) -> dict:
    out = {}
    for k in steps:
        rs = [r for s in per_seed for r in s["rows"] if r["strong_steps"] == k]
        out[str(k)] = {m: [float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs]))]
                       for m in ("gap", "accuracy", "accuracy_mean_reduction", "accuracy_strong_loglik",
                                 "accuracy_weak_loglik")}
    cs = [s["custom"] for s in per_seed if s["custom"]]
    if cs:
        out["criteria"] = {m: [float(np.mean([c[m] for c in cs])), float(np.std([c[m] for c in cs]))]
                           for m in ("gap_plain", "gap_with_criteria", "accuracy_plain", "accuracy_criteria")}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    rows = [r for s in results["per_seed"] for r in s["rows"]]
    for seed in sorted({r["seed"] for r in rows}):
        rs = [r for r in rows if r["seed"] == seed]
        ax.plot([r["gap"] for r in rs], [r["accuracy"] for r in rs], "o-", alpha=0.7,
                label=f"density ratio, seed {seed}")
        ax.plot([r["gap"] for r in rs], [r["accuracy_strong_loglik"] for r in rs], "x:", alpha=0.5,
                label=f"log pi_strong alone, seed {seed}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("strong-weak gap (mean true reward, held-out prompts)")
    ax.set_ylabel("pair accuracy vs true reward")
    ax.set_title("accuracy against the measured gap")
    ax.legend(fontsize=6)
    ax = axes[1]
    s = results["summary"]
    ks = [k for k in s if k != "criteria"]
    x = [int(k) for k in ks]
    for m, lbl in (("accuracy", "density ratio (sum)"), ("accuracy_mean_reduction", "density ratio (per-token mean)"),
                   ("accuracy_strong_loglik", "log pi_strong alone"), ("accuracy_weak_loglik", "log pi_weak alone")):
        ax.errorbar(x, [s[k][m][0] for k in ks], yerr=[s[k][m][1] for k in ks], fmt="o-", capsize=3, label=lbl)
    if "criteria" in s:
        c = s["criteria"]
        ax.errorbar([results["config"]["criteria_steps"]] * 2, [c["accuracy_plain"][0], c["accuracy_criteria"][0]],
                    yerr=[c["accuracy_plain"][1], c["accuracy_criteria"][1]], fmt="s", capsize=3, color="k",
                    label="mixed-trained strong: plain (low) / with criteria (high)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("extra SFT steps of the strong model on right answers (k)")
    ax.set_title(f"mean ± std over {len(results['per_seed'])} seeds")
    ax.legend(fontsize=7)
    fig.suptitle("P64 CDR in the arena (task sort): r = log pi_strong(y|x) - log pi_weak(y|x)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sort")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strong-steps", type=int, nargs="+", default=[5, 20, 50, 100, 200, 400])
    ap.add_argument("--sft-steps", type=int, default=1200, help="the weak (arena SFT) model's steps (arena default)")
    ap.add_argument("--train-prompts", type=int, default=2000)
    ap.add_argument("--prompts", type=int, default=300, help="held-out prompts whose answers are paired")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--gap-prompts", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--criteria", default="best: ", help="criteria text for the customised run ('' = skip)")
    ap.add_argument("--criteria-steps", type=int, default=200)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default="runs/cdr")
    ap.add_argument("--figure", default=None)
    ap.add_argument("--from-results", nargs="+", help="run nothing: pool these results.json files (one per seed), "
                                                       "summarize and plot")
    args = ap.parse_args(argv)
    if args.from_results:
        parts = [json.loads(Path(f).read_text()) for f in args.from_results]
        per_seed = [s for part in parts for s in part["per_seed"]]
        config = dict(parts[0]["config"], seeds=[s["rows"][0]["seed"] for s in per_seed])
        results = {"paper": parts[0]["paper"], "config": config, "per_seed": per_seed,
                   "summary": summarize(per_seed, config["strong_steps"]), "merged_from": args.from_results}
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        plot(results, Path(args.figure) if args.figure else out / "cdr-gap.png")
        print(json.dumps(results["summary"]))
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def say(m: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {m}", file=sys.stderr, flush=True)

    task = get_task(args.task)
    per_seed = [run_seed(task, s, args, say) for s in args.seeds]
    results = {"paper": "P64 CDR: r = log pi_strong(y|x) - log pi_weak(y|x)", "config": vars(args),
               "per_seed": per_seed, "summary": summarize(per_seed, args.strong_steps), "seconds": time.time() - t0}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, Path(args.figure) if args.figure else out / "cdr-gap.png")
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
