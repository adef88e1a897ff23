"""RSO's rejection-sampled pairs against random pairs at an equal number of reward calls (P34, issue 17).

Both arms start from the same SFT model of the arena's ``sort`` task (true reward: the fraction of digits in the
right place) and train DPO in rounds with :func:`preftune.online.train_online`:

* ``rso``: ``--algo rso``: per prompt K candidates from the round's policy, every one scored by the reward, two
  accepted by statistical rejection sampling towards ``pi exp(r / beta)`` (P34 Algorithm 1), the better one chosen;
* ``random``: ``--algo iterative_dpo --num-generations 2``: two samples per prompt, both scored, the better chosen
  (a random pair: no choice among candidates). To spend the same number of reward calls it gets K/2 times as many
  prompts per round: ``prompts_rso * K == prompts_random * 2`` each round, the same rounds.

Both arms take the same optimizer steps per round with the same batch size, learning rate and beta; a prompt whose
two (accepted) samples tie is dropped in both arms. After training, the true reward of each final policy is measured
on held-out prompts (samples at temperature 1, a fixed seed; and greedy answers). Seeds change the SFT model, the
prompts and the sampling.

    .venv/bin/python benchmarks/rso_vs_random.py                          # 3 seeds (docs/online-rso.md)
    .venv/bin/python benchmarks/rso_vs_random.py --seeds 0 --rounds 1     # a quick look
"""
from __future__ import annotations

import argparse
import json
import random
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

import torch

SFT = dict(demos=2000, steps=400, batch_size=32, hidden_size=48, num_layers=2, num_heads=4)


def true_reward(model_dir, prompts: list[str], *, samples: int, seed: int) -> dict[str, float]:
    """Mean true reward over ``prompts``: ``samples`` answers each at temperature 1, and the greedy answer."""
    from preftune.arena.models import decode, encode, load_sft, sample
    from preftune.arena.tasks import SortTask
    from preftune.models.generate import generate

    task = SortTask()
    model, tok = load_sft(model_dir)
    out = sample(model, tok, prompts, samples, seed=seed, max_new_tokens=task.max_new_tokens)
    sampled = [task.reward(p, s.response) for p, row in zip(prompts, out) for s in row]
    gens = generate(model, tok, [encode(tok, p)[0] for p in prompts], n=1, max_new_tokens=task.max_new_tokens,
                    do_sample=False, batch_size=256, bucket_by_length=True)
    greedy = [task.reward(p, decode(tok, g.response_ids)) for p, g in zip(prompts, gens)]
    return {"sampled": sum(sampled) / len(sampled), "greedy": sum(greedy) / len(greedy),
            "exact_greedy": sum(g == 1.0 for g in greedy) / len(greedy)}


def run_arm(arm: str, sft: Path, out: Path, seed: int, args) -> dict:
    from preftune.arena.tasks import SortTask
    from preftune.online import OnlineConfig, train_online
    from preftune.train import TrainConfig

    k = args.k if arm == "rso" else 2
    n_prompts = args.prompts if arm == "rso" else args.prompts * args.k // 2
    # the RSO arm's prompts are the first of the random arm's: same draw, the random arm sees more of it
    pool = SortTask().sample_prompts(args.prompts * args.k // 2, random.Random(f"rso-bench-{seed}"))
    rows = [{"prompt": p} for p in pool[:n_prompts]]
    budget = {"epochs": args.epochs} if args.epochs else {"max_steps": args.steps}
    cfg = TrainConfig(model=str(sft), output=str(out), **budget, batch_size=args.batch_size, lr=args.lr, beta=args.beta, progress=False, save_every=0, seed=seed)
    online = OnlineConfig(algo="rso" if arm == "rso" else "iterative_dpo", prompts=rows, task="sort",
                          num_generations=k, max_new_tokens=SortTask.max_new_tokens, rounds=args.rounds,
                          rso_beta=args.rso_beta)
    t0 = time.perf_counter()
    train_online(cfg, online)
    secs = time.perf_counter() - t0
    rounds = json.loads((out / "rounds.json").read_text())
    return {"arm": arm, "seed": seed, "k": k, "prompts_per_round": n_prompts,
            "reward_calls": n_prompts * k * args.rounds, "pairs": [r.get("pairs") for r in rounds],
            "seconds": round(secs, 1), "final": out / "final"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=8, help="RSO's candidates per prompt")
    ap.add_argument("--prompts", type=int, default=32, help="RSO's prompts per round (random: prompts * k / 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per round (both arms)")
    ap.add_argument("--epochs", type=float, default=0.0,
                    help="instead of --steps: passes over each round's pairs (the random arm, with more pairs, "
                         "then takes more steps)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.1, help="DPO's beta (both arms)")
    ap.add_argument("--rso-beta", type=float, default=0.5, help="the rejection sampler's temperature")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--out", default="", help="work directory (default: a temporary one)")
    ap.add_argument("--json", default="", help="write the rows here")
    args = ap.parse_args(argv)
    if args.k < 2 or args.k % 2:
        raise SystemExit("--k must be even and >= 2 (the random arm gets k/2 times the prompts)")

    from preftune.arena.models import SFTConfig, sft_model_dir
    from preftune.arena.tasks import SortTask

    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="rso-vs-random-"))
    eval_prompts = SortTask().sample_prompts(args.eval_prompts, random.Random("rso-bench-eval"))
    rows = []
    for seed in args.seeds:
        sft, _ = sft_model_dir(SortTask(), seed, SFTConfig(**SFT), work / "sft")
        base = true_reward(sft, eval_prompts, samples=args.eval_samples, seed=1234)
        rows.append({"arm": "sft", "seed": seed, **base})
        print(json.dumps(rows[-1]), flush=True)
        for arm in ("rso", "random"):
            info = run_arm(arm, sft, work / f"{arm}-s{seed}", seed, args)
            final = info.pop("final")
            rows.append({**info, **true_reward(final, eval_prompts, samples=args.eval_samples, seed=1234)})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\ntrue reward on {args.eval_prompts} held-out prompts, mean ± std over seeds {args.seeds}")
    for arm in ("sft", "rso", "random"):
        rs = [r for r in rows if r["arm"] == arm]

        def ms(key):
            xs = [r[key] for r in rs]
            return f"{st.mean(xs):.3f} ± {st.stdev(xs) if len(xs) > 1 else 0:.3f}"

        calls = f", reward calls {rs[0]['reward_calls']}" if "reward_calls" in rs[0] else ""
        print(f"{arm:>7}: sampled {ms('sampled')}, greedy {ms('greedy')}, exact (greedy) {ms('exact_greedy')}{calls}")
    gaps = [next(r["sampled"] for r in rows if r["arm"] == "rso" and r["seed"] == s)
            - next(r["sampled"] for r in rows if r["arm"] == "random" and r["seed"] == s) for s in args.seeds]
    print(f"rso - random (sampled), per seed: {[round(g, 3) for g in gaps]}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    sys.exit(main())
