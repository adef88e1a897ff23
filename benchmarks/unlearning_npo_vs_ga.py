"""NPO (P06) against gradient ascent on a forget set, in the arena (``preftune.arena.unlearning``).

    python benchmarks/unlearning_npo_vs_ga.py                      # GA vs NPO, seeds 0-2, 80 steps
    python benchmarks/unlearning_npo_vs_ga.py --retain 256         # adds GD (GA + retain NLL) and NPO+RT
    python benchmarks/unlearning_npo_vs_ga.py --seeds 0 --steps 50 --eval-at 25,50   # quick look

Prints one table row per objective and evaluation step (mean ± std over seeds) and writes every number
to ``<output>/unlearning.json``. Uses the arena's cached ``sort`` SFT models (built on first use).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from preftune.arena.unlearning import UnlearningConfig, run_unlearning, summary_rows
from preftune.io import write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-at", default="10,20,40,80")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.1, help="NPO's beta")
    ap.add_argument("--retain", type=int, default=0, help="retained training prompts; > 0 adds GD and NPO+RT")
    ap.add_argument("--forget", type=int, default=128)
    ap.add_argument("--eval-prompts", type=int, default=96)
    ap.add_argument("--output", default="runs/unlearning")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    objectives = {"ga": ("grad_ascent", {}), "npo": ("npo", {"beta": a.beta})}
    if a.retain:
        objectives.update({"gd": ("grad_ascent", {"retain_weight": 1.0}), "npo_rt": ("npo_rt", {"beta": a.beta})})
    cfg = UnlearningConfig(objectives=objectives, seeds=tuple(int(s) for s in a.seeds.split(",")),
                           forget_prompts=a.forget, retain_prompts=a.retain, eval_prompts=a.eval_prompts,
                           steps=a.steps, eval_at=tuple(int(s) for s in a.eval_at.split(",")), lr=a.lr, batch_size=a.batch_size,
                           cache_dir=a.cache_dir)
    res = run_unlearning(cfg, a.output, progress=lambda m: print(m, file=sys.stderr))
    names = ("forget_reward", "retain_reward", "retain_malformed", "forget_nll", "retain_nll")
    lines = ["| objective | step | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for name, step, m in summary_rows(res, names):
        lines.append(f"| {name} | {step} | " + " | ".join(f"{m[k][0]:.3f} ± {m[k][1]:.3f}" for k in names) + " |")
    lines.append(f"\nseeds {list(cfg.seeds)}; wall time {res['seconds']:.0f} s")
    print("\n".join(lines))
    Path(a.output).mkdir(parents=True, exist_ok=True)
    write_text(Path(a.output) / "unlearning.json", json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
