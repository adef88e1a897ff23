"""``preftune rm strength``: each pair's preference strength under M reward models (P67, Secrets of RLHF II, eq. 4),
written as columns of the data; optionally the paper's data-side remedies (flip the weakest pairs, the adaptive
margin as the ``margin`` column), which plain ``preftune rm train`` then trains on.

    preftune rm strength --models runs/rm/member-0/final,runs/rm/member-1/final --data pairs.jsonl \\
        --output with_strength.jsonl [--flip-below 0 | --flip-fraction 0.2] [--margin-scale 1]

A row that already has a ``margin`` column is refused when flipping or writing margins (one line naming file, row
and field), as is any row ``preftune train`` would refuse -- both before a model is loaded.

Every input field is kept; added: ``strength`` (the mean margin ``mu``), ``strength_std`` (``sigma``), and with a
flip option ``strength_flipped`` (whether the row's chosen and rejected were swapped; a swapped row's strength is
negated, since it is measured towards the row's label, and its ``score_chosen``/``score_rejected`` swapped).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "strength", help="preference strength of each pair from M reward models (P67); flip / margin the data",
        description="Score every pair with M reward models and add its preference strength (P67 eq. 4): "
                    "`strength`, the mean over models of r(chosen) - r(rejected), and `strength_std`, their "
                    "population std. A negative strength marks a likely wrong label. --flip-below/--flip-fraction "
                    "swap chosen and rejected in the weakest pairs (P67's Flip) and --margin-scale writes the "
                    "adaptive margin (P67 eq. 6) as the `margin` column, so `preftune rm train` (bradley_terry) "
                    "trains P67's Flip + Margin on the written file.",
        epilog="example: preftune rm strength --models runs/rm/member-0/final,runs/rm/member-1/final "
               "--data pairs.jsonl --output with_strength.jsonl --flip-below 0 --margin-scale 1")
    p.add_argument("--models", required=True,
                   help="comma-separated reward-model directories (e.g. RUN/member-i/final), M >= 1; the paper "
                        "trains M = 10 on the same pairs with other seeds and data orders")
    p.add_argument("--data", required=True, help="preference pairs (any pair format preftune train reads)")
    p.add_argument("--output", help="where to write the rows as JSONL (default: stdout)")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip-below", type=float, default=None,
                      help="swap chosen and rejected in pairs whose strength is below this (P67 flips < 0)")
    flip.add_argument("--flip-fraction", type=float, default=None,
                      help="swap chosen and rejected in this share of the pairs, the weakest (e.g. 0.2)")
    p.add_argument("--margin-scale", type=float, default=None,
                   help="write margin = S * strength (towards the written label): P67's adaptive margin, which "
                        "bradley_terry reads as its margin (rows must not have a margin already)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default: 16)")
    p.add_argument("--max-length", type=int, default=1024, help="longest prompt+response in tokens (default: 1024)")
    p.add_argument("--on-bad-row", default="error", choices=("error", "skip"),
                   help="a bad row stops with a one-line error naming file, row and field (error, the default), "
                        "or is left out of the output (skip)")
    p.set_defaults(func=run_strength)


def strength_records(models: Any, data: Any, *, flip_below: float | None = None, flip_fraction: float | None = None,
                     margin_scale: float | None = None, on_bad_row: str = "error", max_length: int | None = 1024,
                     batch_size: int = 16) -> tuple[str, list[dict], dict]:
    """The rows of ``data`` (pairs) with ``strength``, ``strength_std`` (and ``strength_flipped``) added, the flips
    and margins applied; returns ``(name, rows, summary)``. ``models``: what
    :func:`preftune.reward.strength.pair_strength` takes; directories are loaded (with ``max_length`` and
    ``batch_size``) only after the data has been read and checked, so a bad row fails fast."""
    import torch

    from ..data import load_examples
    from ..data.records import read_records
    from ..errors import ConfigError, DataError
    from ..reward.ensemble import RewardEnsemble
    from ..reward.strength import COLUMN, STD_COLUMN, flip_detection_auroc, pair_strength, weakest

    if margin_scale is not None and not margin_scale >= 0:
        raise ConfigError(f"--margin-scale must be >= 0, got {margin_scale}")
    name, records = read_records(data)
    res = load_examples(data, on_bad_row=on_bad_row, kind="pair")
    by_key = {(r.source, r.row): r.value for r in records}
    exs = res.examples
    flipping = flip_below is not None or flip_fraction is not None
    for e in exs:   # before any model is loaded
        if (margin_scale is not None or flipping) and "margin" in by_key[(e.source, e.row)]:
            raise DataError("already has a margin; --margin-scale and flipping write their own (drop the column)",
                            file=e.source or name, row=e.row, field="margin", reason="margin_present")
    if isinstance(models, (list, tuple)) and models and all(isinstance(m, (str, Path)) for m in models):
        models = RewardEnsemble.from_pretrained(list(models), max_length=max_length, batch_size=batch_size)
    s = pair_strength(models, [e.prompt for e in exs], [e.chosen for e in exs], [e.rejected for e in exs])
    flip = weakest(s.mean, below=flip_below, fraction=flip_fraction) if flipping else torch.zeros(len(exs), dtype=bool)
    rows = []
    for i, e in enumerate(exs):
        row = dict(by_key[(e.source, e.row)])
        mu = float(s.mean[i])
        if flip[i]:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            if "score_chosen" in row and "score_rejected" in row:
                row["score_chosen"], row["score_rejected"] = row["score_rejected"], row["score_chosen"]
            mu = -mu
        row[COLUMN], row[STD_COLUMN] = mu, float(s.std[i])
        if flipping:
            row["strength_flipped"] = bool(flip[i])
        if margin_scale is not None:
            row["margin"] = margin_scale * mu
        rows.append(row)
    summary = {"pairs": len(rows), "models": int(s.margins.shape[0]), "negative": int((s.mean < 0).sum()),
               "flipped": int(flip.sum()), "skipped": sum(res.skipped.values()),
               "mean": float(s.mean.mean()) if len(rows) else float("nan")}
    known = [r.get("flipped") for r in rows]
    if rows and all(isinstance(k, bool) for k in known):   # the arena's column: labels known to be flipped
        summary["auroc_flipped"] = flip_detection_auroc(s.mean, known)
    return name, rows, summary


def run_strength(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..io import write_text

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = [m.strip() for m in args.models.split(",") if m.strip()]
    if not paths:
        raise ConfigError("--models needs at least one reward-model directory")
    name, rows, summary = strength_records(paths, args.data, flip_below=args.flip_below,
                                           flip_fraction=args.flip_fraction, margin_scale=args.margin_scale,
                                           on_bad_row=args.on_bad_row, max_length=args.max_length,
                                           batch_size=args.batch_size)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    msg = (f"preftune: strength of {summary['pairs']} pairs of {name} from {summary['models']} reward models: "
           f"mean {summary['mean']:.4g}, {summary['negative']} negative, {summary['flipped']} flipped")
    if "auroc_flipped" in summary:
        msg += f"; AUROC of -strength against the `flipped` column {summary['auroc_flipped']:.4f}"
    if summary["skipped"]:
        msg += f"; skipped {summary['skipped']} bad rows"
    print(msg + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    return 0
