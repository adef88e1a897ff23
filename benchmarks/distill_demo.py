"""Preference distillation (P60: DCKD, ADPA) on the arena's ``sort`` task, whose true reward is known.

Per seed:

1. a *teacher* (the arena's default SFT model: hidden 64, 2 layers, 1200 steps) and a smaller *student*
   (hidden 32, 2 layers, 300 steps) are fitted to the task's imperfect demonstrations (arena SFT, cached in
   the arena's cache; same demonstrations, hence the same character-level tokenizer);
2. the teacher is aligned by DPO on best/worst-of-4 pairs of its own samples, labelled by the true reward;
   its SFT model is its reference ``pi_ref``;
3. each student variant starts from the student SFT model and trains the same number of steps on the
   same prompts:

   * ``sft_on_teacher``: SFT on the aligned teacher's samples alone (one per prompt) -- the issue's baseline;
   * ``dpo``: student DPO on the teacher's preference pairs;
   * ``dckd``: ``sft:1,dckd:1`` on those pairs (forward KL from the aligned teacher on chosen and rejected);
   * ``adpa``: ``sft:1,adpa:1`` on pairs whose rejected side is the student's own sample (the authors'
     construction), with the teacher's advantage against its SFT reference;
   * ``adpa_plus``: ``adpa`` started from the ``dckd`` student (ADPA+), for the same total steps split in two.

4. true reward of 2 samples per held-out prompt (temperature 1), and of the student SFT model and the teacher.

    # the run in docs/distill.md (3 seeds, ~7 min on a shared 2-core machine; writes docs/figures/distill-sort.png)
    .venv/bin/python benchmarks/distill_demo.py --prompts 256 --eval-prompts 128 --teacher-steps 100 --steps 60
    .venv/bin/python benchmarks/distill_demo.py --seeds 0 --methods sft_on_teacher adpa    # a quick look
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from preftune.arena.models import SFTConfig, load_sft, sample, sft_model_dir  # noqa: E402
from preftune.arena.tasks import get_task  # noqa: E402
from preftune.data.types import PairExample  # noqa: E402
from preftune.train import TrainConfig, train  # noqa: E402

METHODS = ("sft_on_teacher", "dpo", "dckd", "adpa", "adpa_plus")


def true_reward(task, model, tok, prompts, seed, n=2):
    rows = sample(model, tok, prompts, n, seed=seed, max_new_tokens=task.max_new_tokens)
    return statistics.fmean(task.reward(s.prompt, s.response) for row in rows for s in row)


def fit(path, pairs, out, loss, steps, lr, batch, seed, **params):
    cfg = TrainConfig(model=str(path), data="", output=str(out), loss=loss, loss_params=params, max_steps=steps,
                      batch_size=batch, lr=lr, seed=seed, progress=False, save_every=0)
    res = train(cfg, train_examples=pairs)
    return Path(out) / "final", res


def run_seed(task, seed, args, work):
    # the arena's SFT models (cached in the arena's cache; built once when absent): the arena's default
    # model as the teacher, a quarter of its width-squared and a quarter of its steps as the student
    teacher_cfg = SFTConfig()
    student_cfg = SFTConfig(steps=args.student_sft_steps, hidden_size=32, num_layers=2, num_heads=4)
    t_sft, _ = sft_model_dir(task, seed, teacher_cfg, args.cache_dir)
    s_sft, _ = sft_model_dir(task, seed, student_cfg, args.cache_dir)
    rng = random.Random(f"distill-{seed}")
    prompts = task.sample_prompts(args.prompts, rng)
    held = [p for p in task.sample_prompts(4 * args.eval_prompts, rng) if p not in set(prompts)][:args.eval_prompts]

    # 2. the aligned teacher: DPO on best/worst of 4 of its own samples, labelled by the true reward
    tm, tok = load_sft(t_sft)
    pairs = []
    for i, row in enumerate(sample(tm, tok, prompts, 4, seed=seed, max_new_tokens=task.max_new_tokens)):
        scored = sorted(row, key=lambda s: task.reward(s.prompt, s.response))
        lo, hi = scored[0], scored[-1]
        if task.reward(hi.prompt, hi.response) > task.reward(lo.prompt, lo.response):
            pairs.append(PairExample(hi.prompt, hi.response, lo.response, row=len(pairs)))
    teacher, _ = fit(t_sft, pairs, work / f"s{seed}-teacher", "dpo", args.teacher_steps, args.teacher_lr, 32, seed,
                     beta=args.dpo_beta)
    tdpo, _ = load_sft(teacher)
    out = {"pairs": len(pairs), "teacher_sft": true_reward(task, tm, tok, held, seed + 100),
           "teacher_dpo": true_reward(task, tdpo, tok, held, seed + 100)}
    sm, stok = load_sft(s_sft)
    out["student_sft"] = true_reward(task, sm, stok, held, seed + 100)

    # 3. the students
    teach_samples = sample(tdpo, tok, prompts, 1, seed=seed + 1, max_new_tokens=task.max_new_tokens)
    own = sample(sm, stok, prompts, 1, seed=seed + 2, max_new_tokens=task.max_new_tokens)
    sft_pairs = [PairExample(p, t[0].response, o[0].response, row=i)   # rejected: unused by sft
                 for i, (p, t, o) in enumerate(zip(prompts, teach_samples, own))]
    chosen = {p.prompt: p.chosen for p in pairs}
    adpa_pairs = [PairExample(p, chosen.get(p, t[0].response), o[0].response, row=i)
                  for i, (p, t, o) in enumerate(zip(prompts, teach_samples, own))]
    teachers = {"teacher_model": str(teacher), "teacher_ref_model": str(t_sft)}
    steps, lr, b = args.steps, args.lr, 32
    runs = {
        "sft_on_teacher": lambda d: fit(s_sft, sft_pairs, d, "sft", steps, lr, b, seed),
        "dpo": lambda d: fit(s_sft, pairs, d, "dpo", steps, lr, b, seed, beta=args.dpo_beta),
        "dckd": lambda d: fit(s_sft, pairs, d, "sft:1,dckd:1", steps, lr, b, seed, teacher_model=str(teacher)),
        "adpa": lambda d: fit(s_sft, adpa_pairs, d, "sft:1,adpa:1", steps, lr, b, seed, beta=args.adpa_beta,
                              **teachers),
    }
    for name in args.methods:
        t0 = time.time()
        if name == "adpa_plus":
            first, _ = fit(s_sft, pairs, work / f"s{seed}-adpa_plus-dckd", "sft:1,dckd:1", steps // 2, lr, b, seed,
                           teacher_model=str(teacher))
            final, _ = fit(first, adpa_pairs, work / f"s{seed}-adpa_plus", "sft:1,adpa:1", steps - steps // 2, lr, b,
                           seed, beta=args.adpa_beta, **teachers)
        else:
            final, _ = runs[name](work / f"s{seed}-{name}")
        m, _ = load_sft(final)
        out[name] = true_reward(task, m, stok, held, seed + 100)
        print(f"  seed {seed} {name}: true reward {out[name]:.3f} ({time.time() - t0:.0f}s)", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--student-sft-steps", type=int, default=300)
    ap.add_argument("--cache-dir", default=None, help="arena SFT cache (default: the arena's, ~/.cache/preftune/arena)")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--teacher-lr", type=float, default=5e-5)
    ap.add_argument("--dpo-beta", type=float, default=0.5, help="the teacher's (and student DPO's) beta; the arena's")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--adpa-beta", type=float, default=1.0)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--json", default="", help="also write every number to this JSON file")
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "distill-sort.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    task = get_task("sort")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            t0 = time.time()
            results.append(run_seed(task, seed, args, Path(tmp)))
            print(f"seed {seed}: {json.dumps({k: round(v, 4) for k, v in results[-1].items()})} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    names = ["student_sft", *args.methods, "teacher_sft", "teacher_dpo"]
    print("\n| model | true reward (mean ± sd over seeds " + ", ".join(map(str, args.seeds)) + ") | per seed |")
    print("|---|---|---|")
    summary = {}
    for n in names:
        vals = [r[n] for r in results]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary[n] = {"mean": statistics.fmean(vals), "sd": sd, "per_seed": vals}
        print(f"| {n} | {summary[n]['mean']:.3f} ± {sd:.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")
    if args.json:
        from preftune.io import write_json

        write_json(args.json, {"args": vars(args), "results": results, "summary": summary})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(names)), [summary[n]["mean"] for n in names], yerr=[summary[n]["sd"] for n in names],
           color=["#999"] + ["#4a7"] * len(args.methods) + ["#47a", "#47a"], capsize=3)
    for i, n in enumerate(names):
        ax.scatter([i] * len(results), summary[n]["per_seed"], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("true reward (sort)")
    ax.set_ylim(min(summary[n]["mean"] for n in names) - 0.1, max(summary[n]["mean"] for n in names) + 0.08)
    ax.set_title(f"P60 distillation on 'sort', seeds {args.seeds} (mean ± sd, dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=120)
    print(f"wrote {args.figure}" + (f" and {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
