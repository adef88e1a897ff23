"""P67 (Secrets of RLHF II) in the arena: preference strength against known label noise, and Flip + Margin
against plain Bradley-Terry, measured against the task's true reward.

    .venv/bin/python benchmarks/reward/strength_noise.py   # 3 seeds, 25% flipped labels; ~3.5 CPU-minutes

Per seed, on the arena's ``sort`` task (true reward known) with its cached SFT model:

1. ``--prompts`` prompts, ``--samples`` SFT answers each; per prompt the best and worst answer by the true reward make
   a pair (ties dropped, as the arena labels); ``--noise`` of the labels are flipped (``arena.labelling.flip_labels``).
   The pairs carry no score or margin columns: the reward models see only the (noisy) labels.
2. ``--members`` Bradley-Terry reward models (``train_reward_ensemble``: seeds differ, so do head and data order)
   train on the noisy pairs; each training pair's strength is the mean of their margins (P67 eq. 4).
   (a) AUROC of ``-strength`` against the flip indicator, and how many flipped pairs have negative strength.
3. ``rm_flip_margin`` (P67's Flip + Margin, reading the strength) trains once from each member's seed -- the same
   head and data order as that member, which is plain ``bradley_terry`` on the noisy labels: a paired comparison.
   Once each, from member 0's seed: ``rm_adaptive_margin``, ``rm_flip``, ``rm_soft_label_margin`` (P67 sec. 2.5);
   ``bradley_terry + beta * rm_simcse`` (P67 sec. 3.1; beta 1 as the paper, and 0.1); ``bradley_terry`` on the clean
   labels (the ceiling). (b) Accuracy against the true reward on held-out pairs: every two SFT answers to a
   held-out prompt with different true rewards (``arena.run.task_pairs``), a tie in scores counting wrong.

Writes ``<out>/results.json`` and ``docs/figures/strength-noise.png``; prints a table (mean +- std over seeds).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# Trained once per ensemble member, from that member's seed (same head and data order): a paired comparison
# with the member, which is plain Bradley-Terry on the noisy labels.
PAIRED = [("Flip + Margin", "rm_flip_margin")]
SINGLE = [  # label, loss, whether it trains on the clean labels; trained once, from member 0's seed
    ("Margin", "rm_adaptive_margin", False),
    ("Flip", "rm_flip", False),
    ("Soft Label + Margin", "rm_soft_label_margin", False),
    ("BT + SimCSE (beta 1)", "bradley_terry,rm_simcse:1.0", False),
    ("BT + SimCSE (beta 0.1)", "bradley_terry,rm_simcse:0.1", False),
    ("BT (clean labels)", "bradley_terry", True),
]


def plain(pairs):
    """The pairs without score/margin columns: a reward model sees only the labels."""
    from preftune.data.types import PairExample

    return [PairExample(p.prompt, p.chosen, p.rejected, row=i, source="arena") for i, p in enumerate(pairs)]


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    from preftune.arena.labelling import flip_labels, make_pairs, pair_accuracy
    from preftune.arena.models import SFTConfig, load_sft, sample, sft_model_dir
    from preftune.arena.run import task_pairs
    from preftune.arena.tasks import get_task
    from preftune.reward import RewardModel, train_reward_ensemble, train_reward_model
    from preftune.reward.model import load_reward_model
    from preftune.reward.strength import flip_detection_auroc, strength_of_pairs, with_strength
    from preftune.train import TrainConfig

    t0 = time.perf_counter()
    task = get_task(args.task)
    path, _ = sft_model_dir(task, seed, SFTConfig(), None)
    sft, tok = load_sft(path)
    prompts = task.sample_prompts(args.prompts, random.Random(f"strength-prompts-{seed}"))
    gen = sample(sft, tok, prompts, args.samples, seed=50_000 + seed, max_new_tokens=task.max_new_tokens)
    clean, _ = make_pairs([[(s.prompt, s.response, task.reward(s.prompt, s.response)) for s in row] for row in gen])
    clean = plain(clean)
    noisy, flipped_idx = flip_labels(clean, args.noise, seed)
    flipped = torch.zeros(len(noisy), dtype=torch.bool)
    flipped[flipped_idx] = True
    seen = set(prompts)
    held_prompts = [p for p in task.sample_prompts(4 * args.eval_prompts, random.Random(f"strength-eval-{seed}"))
                    if p not in seen][:args.eval_prompts]
    held = task_pairs(task, sample(sft, tok, held_prompts, args.samples, seed=60_000 + seed,
                                   max_new_tokens=task.max_new_tokens))

    def cfg(name: str, loss: str, s: int) -> TrainConfig:
        return TrainConfig(model=str(path), data="", output=str(out / f"seed{seed}" / name), loss=loss,
                           max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, seed=s,
                           progress=False, max_length=64, max_prompt_length=32, device="cpu", overwrite=True,
                           save_final=False, group_by_length=False)

    t_ens = time.perf_counter()
    ens = train_reward_ensemble(cfg("ensemble", "bradley_terry", 1000 * seed), args.members, tokenizer=tok,
                                train_examples=noisy, batch_size=512)
    strength = strength_of_pairs(ens, noisy)
    t_ens = time.perf_counter() - t_ens
    mu = strength.mean
    res = {"seed": seed, "pairs": len(noisy), "flipped": int(flipped.sum()), "heldout_pairs": len(held),
           "auroc": flip_detection_auroc(mu, flipped),
           "auroc_member0": flip_detection_auroc(strength.margins[0], flipped),
           "flipped_negative": float((mu[flipped] < 0).float().mean()),
           "clean_negative": float((mu[~flipped] < 0).float().mean()),
           "negative_share": float((mu < 0).float().mean()),
           "member_accuracy": [pair_accuracy(m, held) for m in ens.models], "ensemble_seconds": t_ens,
           "strength_clean": mu[~flipped].tolist(), "strength_flipped": mu[flipped].tolist(), "methods": {}}
    with_s = with_strength(noisy, strength)
    seeds = [1000 * seed + i for i in range(args.members)]   # the members' seeds (train_reward_ensemble: seed + i)

    def fit(label: str, loss: str, s: int, examples) -> dict:
        t = time.perf_counter()
        name = label.replace(" ", "_").replace("+", "plus").replace("(", "").replace(")", "").replace(".", "")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)   # the new score head as train_reward_ensemble draws it for the member of seed s
            model = load_reward_model(str(path), tokenizer=tok, device="cpu")
        r = train_reward_model(cfg(f"{name}-{s}", loss, s), model=model, tokenizer=tok, train_examples=examples)
        scorer = RewardModel(r.model, tok, max_length=64, batch_size=512)
        return {"accuracy": pair_accuracy(scorer, held), "seconds": time.perf_counter() - t,
                "final_loss": r.history[-1]["loss"], "seed": s}

    res["methods"]["BT (noisy labels)"] = {"accuracy": statistics.mean(res["member_accuracy"]),
                                           "per_member_seed": res["member_accuracy"]}
    for label, loss in PAIRED:
        runs = [fit(label, loss, s, with_s) for s in seeds]
        res["methods"][label] = {"accuracy": statistics.mean(r["accuracy"] for r in runs),
                                 "per_member_seed": [r["accuracy"] for r in runs], "runs": runs}
        res[f"{label}: paired gain"] = [r["accuracy"] - a for r, a in zip(runs, res["member_accuracy"])]
    for label, loss, use_clean in SINGLE:
        res["methods"][label] = fit(label, loss, seeds[0], clean if use_clean else with_s)
        res["methods"][label]["bt_same_seed"] = res["member_accuracy"][0]
    res["seconds"] = time.perf_counter() - t0
    return res


def summarize(results: list[dict]) -> dict:
    def ms(xs):
        return statistics.mean(xs), (statistics.pstdev(xs) if len(xs) > 1 else 0.0)

    out = {k: ms([r[k] for r in results]) for k in ("auroc", "auroc_member0", "flipped_negative", "clean_negative",
                                                     "negative_share")}
    out["methods"] = {m: ms([r["methods"][m]["accuracy"] for r in results]) for m in results[0]["methods"]}
    out["member_accuracy"] = ms([a for r in results for a in r["member_accuracy"]])
    for label, _ in PAIRED:
        gains = [g for r in results for g in r[f"{label}: paired gain"]]
        out[f"{label}: paired gain"] = ms(gains) + (sum(g > 0 for g in gains), len(gains))
    return out


def figure(results: list[dict], summary: dict, path: Path, noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    r0 = results[0]
    lo = min(r0["strength_clean"] + r0["strength_flipped"])
    hi = max(r0["strength_clean"] + r0["strength_flipped"])
    bins = torch.linspace(lo, hi, 40).tolist()
    a.hist(r0["strength_clean"], bins=bins, alpha=0.6, label=f"clean labels ({len(r0['strength_clean'])})")
    a.hist(r0["strength_flipped"], bins=bins, alpha=0.6, label=f"flipped labels ({len(r0['strength_flipped'])})")
    a.axvline(0, color="k", lw=0.8)
    au, au_sd = summary["auroc"]
    a.set_title(f"(a) strength (P67 eq. 4) of training pairs, seed {r0['seed']}\n"
                f"AUROC of -strength for flips: {au:.3f} ± {au_sd:.3f} over {len(results)} seeds")
    a.set_xlabel("strength: mean over reward models of r(chosen) - r(rejected)")
    a.set_ylabel("pairs")
    a.legend()
    order = ["BT (noisy labels)"] + [l for l, _ in PAIRED] + [l for l, _, _ in SINGLE]
    names = [n for n in order if n in summary["methods"]]
    means = [summary["methods"][n][0] for n in names]
    sds = [summary["methods"][n][1] for n in names]
    x = range(len(names))
    special = {"BT (noisy labels)": "C7", "Flip + Margin": "C3", "BT (clean labels)": "C8"}
    b.bar(x, means, yerr=sds, capsize=3, color=[special.get(n, "C2" if "SimCSE" in n else "C0") for n in names])
    for i, n in enumerate(names):
        b.scatter([i] * len(results), [r["methods"][n]["accuracy"] for r in results], color="k", s=10, zorder=3)
    b.set_xticks(list(x))
    b.set_xticklabels(names, rotation=30, ha="right")
    b.set_ylim(min(means) - 0.08, max(m + sd for m, sd in zip(means, sds)) + 0.02)
    b.set_ylabel("held-out accuracy against the true reward")
    b.set_title(f"(b) trained on {noise:.0%} flipped labels: mean ± std over {len(results)} seeds (dots)\n"
                f"BT (noisy), Flip + Margin: a dot is the mean of {len(results[0]['member_accuracy'])} paired runs",
                fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sort", help="arena task (default: sort)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    p.add_argument("--noise", type=float, default=0.25, help="share of flipped labels (default: 0.25)")
    p.add_argument("--members", type=int, default=4, help="reward models giving the strength (default: 4)")
    p.add_argument("--prompts", type=int, default=1024, help="training prompts (default: 1024)")
    p.add_argument("--samples", type=int, default=4, help="SFT answers per prompt (default: 4)")
    p.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts (default: 256)")
    p.add_argument("--steps", type=int, default=60, help="steps per reward model (default: 60, about 2 epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", default=str(ROOT / "runs" / "strength-noise"), help="output directory")
    p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "strength-noise.png"), help="figure path")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from preftune.arena.run import _quiet_transformers

    _quiet_transformers()
    out = Path(args.out)
    t0 = time.perf_counter()
    results = []
    for seed in range(args.seeds):
        r = run_seed(seed, args, out)
        results.append(r)
        print(f"seed {seed}: {r['pairs']} pairs ({r['flipped']} flipped), AUROC {r['auroc']:.3f}, "
              + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in r["methods"].items())
              + f" [{r['seconds']:.0f} s]", file=sys.stderr, flush=True)
    summary = summarize(results)
    total = time.perf_counter() - t0
    from preftune.io import write_json

    write_json(out / "results.json", {"args": vars(args), "summary": summary, "per_seed": results,
                                      "seconds": total})
    figure(results, summary, Path(args.figure), args.noise)
    print(f"\nP67 in the arena: task {args.task}, {args.noise:.0%} flipped labels, {args.members} reward models for "
          f"the strength, seeds 0..{args.seeds - 1}, {total:.0f} s")
    for k, txt in (("auroc", "AUROC of -strength against the flips"),
                   ("auroc_member0", "  the same from one reward model's margin"),
                   ("flipped_negative", "flipped pairs with strength < 0"),
                   ("clean_negative", "clean pairs with strength < 0")):
        m, s = summary[k]
        print(f"{txt:<44} {m:.3f} ± {s:.3f}")
    print(f"\n{'reward model':<24} held-out accuracy vs the true reward")
    for name, (m, s) in summary["methods"].items():
        print(f"{name:<24} {m:.3f} ± {s:.3f}")
    for label, _ in PAIRED:
        m, sd, wins, n = summary[f"{label}: paired gain"]
        print(f"\n{label} minus BT from the same seed (head, data order), {n} pairs of runs: {m:+.3f} ± {sd:.3f} "
              f"(higher in {wins} of {n})")
    print(f"\n(BT (noisy labels) and {', '.join(l for l, _ in PAIRED)}: mean of {args.members} training seeds per "
          "task seed; the other rows: one training seed, member 0's)")
    print(f"\nresults: {out / 'results.json'}; figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
