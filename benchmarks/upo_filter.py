"""P54 (UPO) in the arena: how well the MC-dropout estimator's filter catches wrong judge labels, measured against the
task's true reward, beside a random filter of the same drop rate.

    .venv/bin/python benchmarks/upo_filter.py     # 3 seeds, 20% and 40% flipped judge labels; a few CPU-minutes

Per seed, on the arena's ``sort`` task (true reward known) with the seed's cached SFT model:

1. The estimator (P54's "estimator model"): the SFT model with a new score head and attention dropout
   ``--dropout`` (:func:`preftune.reward.uncertainty.set_dropout`), trained as a Bradley-Terry reward model with its
   dropout on (``disable_dropout=False``) on *seed* pairs -- ``--seed-prompts`` prompts, 4 SFT answers each, best
   vs worst by the true reward (P54 trains its estimator on the labelled seed preference data).
2. The pool (P54's self-generated pairs): ``--pool-prompts`` other prompts, 4 SFT answers each, every two answers
   with different true rewards (:func:`preftune.online.upo.candidate_pairs`). The judge labels each pair by the true
   reward, and a share ``rho`` of the labels is flipped (exactly ``round(rho * n)``, at random).
3. The estimator judges each pair in ``--passes`` MC-dropout passes (``P_t = sigmoid(r_t(a) - r_t(b))``); its majority
   vote against the judge's label drops the pair (P54's filter). Caught = dropped and flipped:
   precision = flipped share of the dropped pairs, recall = share of the flipped pairs that were dropped. Beside it:
   a random filter dropping as many pairs (its expected precision is rho, its recall the drop rate), and the same
   estimator with dropout off (one deterministic pass: does MC dropout add anything to the point prediction?).
4. After the filter, P54's BALD sampling (``upo_easy_rate`` 0.5 and ``upo_hard_rate`` 0.1 of the agreeing pairs):
   the share of wrong labels among the easy and the hard pairs, beside a random subset of the pool of the same size.

Writes ``<out>/results.json`` and ``docs/figures/upo-filter.png``; prints mean +- population std over seeds.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def pr(dropped: torch.Tensor, flipped: torch.Tensor) -> dict:
    """Precision and recall of a filter (``dropped``) at catching the ``flipped`` labels."""
    caught = int((dropped & flipped).sum())
    nd, nf = int(dropped.sum()), int(flipped.sum())
    return {"dropped": nd, "drop_rate": nd / len(dropped), "precision": caught / nd if nd else float("nan"),
            "recall": caught / nf if nf else float("nan")}


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    from preftune.arena.labelling import make_pairs
    from preftune.arena.models import SFTConfig, load_sft, sample, sft_model_dir
    from preftune.arena.tasks import get_task
    from preftune.data.types import PairExample
    from preftune.models.scoring import eval_mode
    from preftune.online.upo import candidate_pairs, upo_select
    from preftune.reward import RewardModel, train_reward_model
    from preftune.reward.model import load_reward_model
    from preftune.reward.uncertainty import bald, bt_probs, majority_vote, mc_rewards, set_dropout
    from preftune.train import TrainConfig

    t0 = time.perf_counter()
    task = get_task(args.task)
    path, _ = sft_model_dir(task, seed, SFTConfig(), None)
    sft, tok = load_sft(path)
    rng = random.Random(f"upo-prompts-{seed}")
    prompts = list(dict.fromkeys(task.sample_prompts(4 * (args.seed_prompts + args.pool_prompts), rng)))
    seed_prompts = prompts[:args.seed_prompts]
    pool_prompts = prompts[args.seed_prompts:args.seed_prompts + args.pool_prompts]

    # 1. the estimator, trained with its dropout on the seed pairs (clean labels: the labelled seed data)
    gen = sample(sft, tok, seed_prompts, 4, seed=70_000 + seed, max_new_tokens=task.max_new_tokens)
    seed_pairs, _ = make_pairs([[(s.prompt, s.response, task.reward(s.prompt, s.response)) for s in row]
                                for row in gen])
    seed_pairs = [PairExample(p.prompt, p.chosen, p.rejected, row=i, source="arena") for i, p in enumerate(seed_pairs)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = load_reward_model(str(path), tokenizer=tok, device="cpu")
    set_dropout(est, args.dropout)
    cfg = TrainConfig(model=str(path), data="", output=str(out / f"seed{seed}" / "estimator"), loss="bradley_terry",
                      max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, seed=seed,
                      progress=False, max_length=64, max_prompt_length=32, device="cpu", overwrite=True,
                      save_final=False, group_by_length=False, disable_dropout=False)
    t_est = time.perf_counter()
    res = train_reward_model(cfg, model=est, tokenizer=tok, train_examples=seed_pairs)
    t_est = time.perf_counter() - t_est
    rm = RewardModel(res.model, tok, max_length=64, batch_size=512)

    # 2. the pool: every two answers of a prompt with different true rewards, true chosen first
    gen = sample(sft, tok, pool_prompts, 4, seed=80_000 + seed, max_new_tokens=task.max_new_tokens)
    texts_p = [s.prompt for row in gen for s in row]
    texts_r = [s.response for row in gen for s in row]
    true = [task.reward(p, r) for p, r in zip(texts_p, texts_r)]
    pairs = [(i * 4 + a, i * 4 + b) for i in range(len(gen)) for a, b in candidate_pairs(true[i * 4:(i + 1) * 4])]
    c = torch.tensor([a for a, _ in pairs])
    r = torch.tensor([b for _, b in pairs])

    # 3. the estimator's passes (dropout on) and its point prediction (dropout off), on the true order
    t_mc = time.perf_counter()
    R = mc_rewards(rm, texts_p, texts_r, args.passes, seed=seed)          # [T, responses]
    t_mc = time.perf_counter() - t_mc
    probs = bt_probs(R[:, c], R[:, r])                                     # class 0: the true chosen is better
    votes_true, b = majority_vote(probs), bald(probs)
    with eval_mode(rm.model):
        r0 = rm.score(texts_p, texts_r)
    point_true = (r0[c] <= r0[r]).long()                                   # 0: the point estimate agrees with truth
    result = {"seed": seed, "seed_pairs": len(seed_pairs), "pool_pairs": len(pairs), "estimator_seconds": t_est,
              "mc_seconds": t_mc, "final_loss": res.history[-1]["loss"],
              "estimator_accuracy_vote": float((votes_true == 0).float().mean()),
              "estimator_accuracy_point": float((point_true == 0).float().mean()),
              "bald_mean": float(b.mean()), "bald_auroc_estimator_errors": auroc(b, votes_true != 0), "noise": {}}
    n = len(pairs)
    for rho in args.noise:
        g = random.Random(f"upo-flip-{seed}-{rho}")
        flipped = torch.zeros(n, dtype=torch.bool)
        flipped[g.sample(range(n), round(rho * n))] = True
        # the judge's label in the true order: class 0 unless flipped; the filter drops a vote against it
        judge = flipped.long()
        upo_drop = votes_true != judge
        point_drop = point_true != judge
        rand_drop = torch.zeros(n, dtype=torch.bool)
        rand_drop[g.sample(range(n), int(upo_drop.sum()))] = True
        sel = upo_select(votes_true, b, 0.5, 0.1, labels=judge,
                         generator=torch.Generator().manual_seed(1000 * seed + int(100 * rho)))
        rand_kept = torch.tensor(g.sample(range(n), len(sel["easy"])))
        kept = ~upo_drop
        result["noise"][str(rho)] = {
            "flipped": int(flipped.sum()), "upo": pr(upo_drop, flipped), "random": pr(rand_drop, flipped),
            "point": pr(point_drop, flipped),
            "noise_after_filter": float(flipped[kept].float().mean()),
            "noise_easy": float(flipped[sel["easy"]].float().mean()),
            "noise_hard": float(flipped[sel["hard"]].float().mean()) if len(sel["hard"]) else float("nan"),
            "noise_random_subset": float(flipped[rand_kept].float().mean()),
            "bald_flipped_kept": float(b[kept & flipped].mean()) if (kept & flipped).any() else float("nan"),
            "bald_clean_kept": float(b[kept & ~flipped].mean()),
        }
    result["seconds"] = time.perf_counter() - t0
    return result


def ms(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.pstdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: list[dict], noise: list[float]) -> dict:
    s: dict = {k: ms([r[k] for r in results]) for k in ("estimator_accuracy_vote", "estimator_accuracy_point",
                                                        "pool_pairs", "bald_mean", "bald_auroc_estimator_errors")}
    for rho in noise:
        rows = [r["noise"][str(rho)] for r in results]
        d = {f"{f}/{m}": ms([x[f][m] for x in rows]) for f in ("upo", "random", "point")
             for m in ("drop_rate", "precision", "recall")}
        d.update({k: ms([x[k] for x in rows]) for k in ("noise_after_filter", "noise_easy", "noise_hard",
                                                        "noise_random_subset", "bald_flipped_kept",
                                                        "bald_clean_kept")})
        s[str(rho)] = d
    return s


def figure(summary: dict, results: list[dict], noise: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    filters = [("upo", "UPO filter (MC-dropout vote)", "C3"), ("point", "estimator, dropout off", "C1"),
               ("random", "random, same drop rate", "C7")]
    w = 0.25
    ax = axes[0]
    for j, (f, label, col) in enumerate(filters):
        for i, rho in enumerate(noise):
            for k, metric in enumerate(("precision", "recall")):
                x = i * 2.4 + k * 1.0 + (j - 1) * w
                m, sd = summary[str(rho)][f"{f}/{metric}"]
                ax.bar(x, m, w, yerr=sd, capsize=2, color=col, label=label if (i, k) == (0, 0) else None)
                ax.scatter([x] * len(results), [r["noise"][str(rho)][f][metric] for r in results], s=6, color="k",
                           zorder=3)
    ax.set_xticks([i * 2.4 + k for i in range(len(noise)) for k in (0, 1)])
    ax.set_xticklabels([f"{m}\n{rho:.0%} flipped" for rho in noise for m in ("precision", "recall")])
    ax.set_ylim(0, 1)
    ax.set_title(f"catching flipped judge labels (mean ± std, dots: {len(results)} seeds)")
    ax.legend(fontsize=8)
    ax = axes[1]
    sets = [("noise_random_subset", "random subset", "C7"), ("noise_after_filter", "after the filter", "C0"),
            ("noise_easy", "easy (1 - BALD)", "C2"), ("noise_hard", "hard (BALD)", "C4")]
    for j, (k, label, col) in enumerate(sets):
        for i, rho in enumerate(noise):
            m, sd = summary[str(rho)][k]
            ax.bar(i + (j - 1.5) * 0.2, m, 0.2, yerr=sd, capsize=2, color=col, label=label if i == 0 else None)
    ax.set_xticks(range(len(noise)))
    ax.set_xticklabels([f"{rho:.0%} flipped" for rho in noise])
    ax.set_ylabel("share of wrong labels in the set")
    ax.set_title("wrong labels left in the pairs UPO keeps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sort", help="arena task (default: sort)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.4], help="shares of flipped judge labels")
    p.add_argument("--seed-prompts", type=int, default=1024, help="prompts for the estimator's seed pairs")
    p.add_argument("--pool-prompts", type=int, default=512, help="prompts of the judged pool")
    p.add_argument("--dropout", type=float, default=0.1, help="the estimator's dropout (default: 0.1, the authors')")
    p.add_argument("--passes", type=int, default=10, help="MC-dropout passes T (default: 10, the authors')")
    p.add_argument("--steps", type=int, default=60, help="estimator training steps (default: 60)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", default=str(ROOT / "runs" / "upo-filter"), help="output directory")
    p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "upo-filter.png"), help="figure path")
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
        print(f"seed {seed}: {r['pool_pairs']} pool pairs, estimator accuracy {r['estimator_accuracy_vote']:.3f} "
              f"(vote) {r['estimator_accuracy_point']:.3f} (point); "
              + "; ".join(f"rho {k}: UPO precision {v['upo']['precision']:.3f} recall {v['upo']['recall']:.3f} "
                          f"(random {v['random']['precision']:.3f}/{v['random']['recall']:.3f})"
                          for k, v in r["noise"].items()) + f" [{r['seconds']:.0f} s]", file=sys.stderr, flush=True)
    summary = summarize(results, args.noise)
    total = time.perf_counter() - t0
    from preftune.io import write_json

    write_json(out / "results.json", {"args": vars(args), "summary": summary, "per_seed": results, "seconds": total})
    figure(summary, results, args.noise, Path(args.figure))
    f = lambda t: f"{t[0]:.3f} ± {t[1]:.3f}"  # noqa: E731
    print(f"\nP54 (UPO) filter in the arena: task {args.task}, seeds 0..{args.seeds - 1}, T = {args.passes}, "
          f"dropout {args.dropout}, {total:.0f} s")
    print(f"pool pairs {f(summary['pool_pairs'])}; estimator accuracy vs the true reward: vote "
          f"{f(summary['estimator_accuracy_vote'])}, point {f(summary['estimator_accuracy_point'])}; AUROC of BALD "
          f"for the vote's errors {f(summary['bald_auroc_estimator_errors'])}, mean BALD {f(summary['bald_mean'])}")
    for rho in args.noise:
        s = summary[str(rho)]
        print(f"\n{rho:.0%} flipped judge labels     drop rate        precision        recall")
        for k, name in (("upo", "UPO (MC-dropout vote)"), ("point", "estimator, dropout off"),
                        ("random", "random, same drop rate")):
            print(f"  {name:<25} {f(s[k + '/drop_rate'])}  {f(s[k + '/precision'])}  {f(s[k + '/recall'])}")
        print(f"  wrong labels: random subset {f(s['noise_random_subset'])}, after the filter "
              f"{f(s['noise_after_filter'])}, easy {f(s['noise_easy'])}, hard {f(s['noise_hard'])}")
        print(f"  BALD of kept pairs: flipped {f(s['bald_flipped_kept'])}, clean {f(s['bald_clean_kept'])}")
    print(f"\nresults: {out / 'results.json'}; figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
