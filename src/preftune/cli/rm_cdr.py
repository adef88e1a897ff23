"""``preftune rm cdr-score``: score prompt/response rows with the density-ratio reward of two causal LMs,
``log pi_strong(y | c + x) - log pi_weak(y | x)`` (P64 CDR; :mod:`preftune.reward.density_ratio`)."""
from __future__ import annotations

import argparse


def add_parser(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "cdr-score", help="score rows with the density ratio of a strong over a weak causal LM (P64 CDR)",
        description="Score a JSONL file of {prompt, response} rows (also `completion` or `chosen` as the response) "
                    "with log pi_strong(y | criteria + x) - log pi_weak(y | x): summed response log-probs (EOS "
                    "included) of two causal LMs, each with its own tokenizer, no training. Writes the rows with a "
                    "`score` field added (and `logp_strong`, `logp_weak` with --components).",
        epilog="example: preftune rm cdr-score --strong runs/dpo/final --weak runs/sft/final --data rows.jsonl "
               "--output scored.jsonl")
    p.add_argument("--strong", required=True, help="the better-aligned causal LM (a directory)")
    p.add_argument("--weak", required=True, help="the less-aligned causal LM (a directory)")
    p.add_argument("--data", required=True, help="JSONL of {prompt, response} rows")
    p.add_argument("--output", help="where to write the scored rows (default: stdout)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--criteria", default="", help="text put before every prompt for the strong model (default: none)")
    g.add_argument("--criteria-file", help="read the criteria text from this file")
    p.add_argument("--criteria-for-weak", action="store_true",
                   help="give the criteria to the weak model too (the public annotation script's variant)")
    p.add_argument("--reduction", default="sum", choices=("sum", "mean"),
                   help="summed log-probs, or each model's per-token mean (default: sum, the paper's)")
    p.add_argument("--components", action="store_true", help="also write each model's summed log-prob")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward (default: 16)")
    p.add_argument("--max-length", type=int, default=1024, help="longest prompt+response in tokens (default: 1024)")
    p.add_argument("--device", default="cpu", help="device of both models (default: cpu)")
    p.set_defaults(func=run_cdr_score)


def run_cdr_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..reward.density_ratio import DensityRatioReward
    from .rm import read_scoring_rows, write_scored_rows

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    criteria = args.criteria
    if args.criteria_file:
        try:
            criteria = Path(args.criteria_file).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{args.criteria_file}: cannot read the criteria ({e.strerror})") from None
    name, rows, prompts, responses = read_scoring_rows(args.data)
    scorer = DensityRatioReward.from_pretrained(args.strong, args.weak, device=args.device, criteria=criteria,
                                                criteria_for_weak=args.criteria_for_weak, reduction=args.reduction,
                                                max_length=args.max_length, batch_size=args.batch_size)
    parts = scorer.components(prompts, responses) if rows else {"reward": [], "strong": [], "weak": []}
    out = []
    for i, r in enumerate(rows):
        extra = {"score": float(parts["reward"][i])}
        if args.components:
            extra.update(logp_strong=float(parts["strong"][i]), logp_weak=float(parts["weak"][i]))
        out.append({**r, **extra})
    write_scored_rows(args.output, name, out)
    return 0
