"""``preftune data``: check a preference dataset, or filter it by a diagnostic.

``preftune data validate FILE`` loads and validates every row (format detection, the same
checks as training) and reports counts; with ``--model`` it also tokenizes and reports
truncation. ``preftune data filter`` drops the worst pairs by a per-pair score (CHES, P16).
"""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate or filter preference data",
                       description="Validate a preference dataset, or filter it by a per-pair diagnostic.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    v = dsub.add_parser("validate", help="check every row; report format, counts and bad rows",
                        description="Load and validate a dataset exactly as `preftune train` would.")
    v.add_argument("data", help="data file, datasets directory or hub name")
    v.add_argument("--split", default="train", help="split for datasets directories / hub names (default: train)")
    v.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error: stop at the first bad row (default); skip: count bad rows by reason")
    v.add_argument("--model", help="also tokenize with this model's tokenizer and report truncation")
    v.add_argument("--max-length", type=int, default=1024, help="with --model: max prompt+response tokens")
    v.add_argument("--max-prompt-length", type=int, default=512, help="with --model: max prompt tokens")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--no-progress", action="store_true", help="no progress bars (tokenizing, model loading)")
    v.set_defaults(func=run_validate)

    f = dsub.add_parser("filter", help="drop the top fraction of pairs by a diagnostic score",
                        description="Drop the pairs most likely to cause likelihood displacement: the top "
                                    "--drop fraction by CHES score (P16). Writes the kept rows as JSONL.")
    f.add_argument("data", help="input data")
    f.add_argument("--model", required=True, help="model whose hidden embeddings define CHES")
    f.add_argument("--output", required=True, help="output JSONL with the kept rows (written atomically)")
    f.add_argument("--by", choices=("ches", "ln_ches"), default="ches",
                   help="score: ches, or its length-normalised variant ln_ches (default: ches)")
    f.add_argument("--drop", type=float, default=0.05,
                   help="fraction of pairs to drop, at least 0 and below 1 (default: 0.05)")
    f.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error: stop at the first bad row (default); skip: leave bad rows out and count them")
    f.add_argument("--no-progress", action="store_true", help="no progress bars (model loading)")
    f.set_defaults(func=run_filter)


def run_validate(args: argparse.Namespace) -> int:
    from .diagnose import progress_bars

    with progress_bars(not args.no_progress):
        return _validate(args)


def _validate(args: argparse.Namespace) -> int:
    from ..data import load_examples, tokenize_examples

    res = load_examples(args.data, split=args.split, on_bad_row=args.on_bad_row)
    report = {"source": res.source, "kind": res.kind, "format": res.format, "rows": res.total_rows,
              "valid": len(res.examples), "skipped": res.skipped}
    if args.model:
        from ..models.loading import load_tokenizer

        tres = tokenize_examples(res.examples, load_tokenizer(args.model), max_length=args.max_length,
                                 max_prompt_length=args.max_prompt_length, on_bad_row=args.on_bad_row,
                                 progress=not args.no_progress)
        report.update(tokenized=len(tres.items), truncated=tres.truncated, tokenize_skipped=tres.skipped)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['source']}: {report['valid']} valid of {report['rows']} rows; kind {report['kind']}, "
              f"format {report['format']}")
        counts = dict(report["skipped"])
        for k, n in report.get("tokenize_skipped", {}).items():  # a reason of both stages: their sum
            counts[k] = counts.get(k, 0) + n
        for k, n in sorted(counts.items()):
            print(f"  skipped {n} row(s): {k}")
        if args.model:
            print(f"  {report['truncated']} row(s) truncated at max_length={args.max_length}, "
                  f"max_prompt_length={args.max_prompt_length}")
    return 0


def run_filter(args: argparse.Namespace) -> int:
    """Score, then write the kept rows to ``--output`` atomically (``filter_file`` writes through
    ``preftune.io.write_text``: a temporary file renamed into place), so a failure leaves no
    partial output and an existing output file as it was."""
    import math

    from ..errors import ConfigError
    from .diagnose import progress_bars

    # Checked before any model is loaded: --drop 1 would drop every pair (and NaN none of them).
    if not (math.isfinite(args.drop) and 0.0 <= args.drop < 1.0):
        raise ConfigError(f"--drop must be a fraction at least 0 and below 1, got {args.drop:g}")
    with progress_bars(not args.no_progress):
        from ..diagnostics import filter_file

        report = filter_file(args.model, args.data, args.output, by=args.by, drop=args.drop,
                             on_bad_row=args.on_bad_row)
    print(json.dumps(report, indent=2, default=str))
    return 0
