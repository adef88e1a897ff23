"""P59: learning a gridworld reward from segment preferences under the partial-return and the regret model.

    .venv/bin/python benchmarks/reward/regret_gridworld.py --seeds 0 1 2 --figure docs/figures/regret-gridworld.png

For each seed: a random 7x7 world (:func:`preftune.reward.gridworld.random_gridworld`, the seed places the goal,
pits and mud), ``n`` pairs of random length-3 segments labelled by a synthetic annotator that follows the regret
model under the true reward, then a linear reward fitted to the same labels under each preference model. Score:
the fraction of non-terminal states where the learned reward's greedy (optimal) action is optimal under the true
reward. Also printed: the paper's identifiability example (a constant added to every reward changes the optimal
policy but no partial-return preference between equal-length segments; regret preferences do change).
Results as JSON on stdout and in ``--output``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from preftune.reward.gridworld import greedy_optimal_fraction, make_gridworld, optimal_policy, random_gridworld
from preftune.reward.regret import Segments, fit_reward, label_pairs, preference_logits, sample_segments

MODELS = ("partial_return", "regret")


def run(seeds, sizes, *, steps: int, length: int, world_size: int) -> dict:
    rows = []
    for seed in seeds:
        world = random_gridworld(seed=seed, size=world_size, p_mud=0.4, n_pits=4, gamma=0.9)
        g = torch.Generator().manual_seed(1000 + seed)
        pool1, pool2 = sample_segments(world, max(sizes), length, g), sample_segments(world, max(sizes), length, g)
        labels = label_pairs(world, pool1, pool2, model="regret", generator=g)
        for n in sizes:      # nested data sets: the first n pairs of one pool
            s1 = Segments(pool1.states[:n], pool1.actions[:n])
            s2 = Segments(pool2.states[:n], pool2.actions[:n])
            for model in MODELS:
                t = time.time()
                w = fit_reward(world, s1, s2, labels[:n], model=model, steps=steps)
                rows.append({"seed": seed, "pairs": n, "model": model,
                             "weights": [round(x, 4) for x in w.tolist()],
                             "optimal_fraction": greedy_optimal_fraction(world, w),
                             "seconds": round(time.time() - t, 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = {}
    for model in MODELS:
        for n in sizes:
            xs = [r["optimal_fraction"] for r in rows if r["model"] == model and r["pairs"] == n]
            summary[f"{model}/{n}"] = {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs), "n_seeds": len(xs)}
    return {"rows": rows, "summary": summary}


def identifiability_example(c: float = 10.0) -> dict:
    """The constant-shift example: r and r + c on a corridor with a goal at its end."""
    world = make_gridworld(["....G"], gamma=0.9)
    w = world.weights
    shifted = w + c                       # every transition has exactly one active feature: r + c everywhere
    segs = []
    live = [s for s in range(world.n_states) if not world.terminal[s]]
    for s0 in live:                       # every length-2 segment from a non-terminal start
        for a0 in range(world.n_actions):
            for a1 in range(world.n_actions):
                s1 = int(world.next_state[s0, a0]); s2 = int(world.next_state[s1, a1])
                if not world.terminal[s1]:            # no zero-reward transition out of a terminal cell
                    segs.append(([s0, s1, s2], [a0, a1]))
    i, j = zip(*[(a, b) for a in range(len(segs)) for b in range(len(segs))])
    pick = lambda idx: Segments(torch.tensor([segs[k][0] for k in idx]), torch.tensor([segs[k][1] for k in idx]))
    seg1, seg2 = pick(i), pick(j)
    out = {"pairs": len(i), "c": c}
    for model in MODELS:
        a = preference_logits(world, world.rewards(w), seg1, seg2, model)
        b = preference_logits(world, world.rewards(shifted), seg1, seg2, model)
        out[f"{model}_max_prob_change"] = float((torch.sigmoid(a) - torch.sigmoid(b)).abs().max())
    pi, pi_shift = optimal_policy(world, world.rewards(w)), optimal_policy(world, world.rewards(shifted))
    out["optimal_policies_differ"] = bool((pi != pi_shift)[~world.terminal].any())
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model, colour in zip(MODELS, ("tab:orange", "tab:blue")):
        sizes = sorted({r["pairs"] for r in result["rows"]})
        mean = [result["summary"][f"{model}/{n}"]["mean"] for n in sizes]
        lo = [result["summary"][f"{model}/{n}"]["min"] for n in sizes]
        hi = [result["summary"][f"{model}/{n}"]["max"] for n in sizes]
        ax.plot(sizes, mean, "o-", color=colour, label=f"learned under {model.replace('_', ' ')}")
        ax.fill_between(sizes, lo, hi, color=colour, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("preference pairs (labels from the regret model)")
    ax.set_ylabel("states where the learned\ngreedy action is optimal")
    ax.set_ylim(0, 1.02)
    seeds = sorted({r["seed"] for r in result["rows"]})
    ax.set_title(f"P59 gridworld: mean and min-max over seeds {seeds}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world and data seeds (default: 0 1 2)")
    p.add_argument("--pairs", type=int, nargs="+", default=[10, 30, 100, 300], help="data sizes (nested)")
    p.add_argument("--steps", type=int, default=200, help="Adam steps per fit (default: 200)")
    p.add_argument("--length", type=int, default=3, help="segment length (default: 3, as in the paper)")
    p.add_argument("--size", type=int, default=7, help="grid side (default: 7)")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--figure", help="write the figure here (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)   # tiny tensors: threads only add contention
    result = run(args.seeds, sorted(args.pairs), steps=args.steps, length=args.length, world_size=args.size)
    result["identifiability"] = identifiability_example()
    text = json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1)
    print(text)
    if args.output:
        from preftune.io import write_text
        write_text(args.output, json.dumps(result, indent=1) + "\n")
    if args.figure:
        plot(result, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
