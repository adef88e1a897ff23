"""``preftune rm judge-bias``: a judge's self-preference, the DBG score against gold judgments and the naive score
(P58; :mod:`preftune.reward.judge_bias`)."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(rsub: argparse._SubParsersAction) -> None:
    p = rsub.add_parser(
        "judge-bias", help="self-preference of an LLM judge: DBG score against gold judgments, and the naive score",
        description="Reads one row per item: the judge's verdict on its own response against another model's, in "
                    "both presentation orders (own_first: its response shown first; own_second: shown second), "
                    "and the gold judgment (gold: one verdict or a list of votes). A verdict is own, other, tie, or "
                    "a number in [0, 1], the probability that the judge's own response is better. Prints win rates "
                    "(percent), DBG = judge win rate - gold win rate, and naive = judge win rate - (100 - judge win "
                    "rate); per judge too when rows carry a `judge` field.",
        epilog='example row: {"judge": "m1", "own_first": "own", "own_second": "tie", "gold": ["own", "other", '
               '"other"]}\nexample: preftune rm judge-bias --data verdicts.jsonl --output bias.json')
    p.add_argument("--data", required=True, help="JSONL (or JSON/CSV/Parquet) of {own_first, own_second, gold} rows")
    p.add_argument("--group-field", default="judge",
                   help="rows with this field are also scored per value of it (default: judge)")
    p.add_argument("--output", help="also write the report as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.records import read_records, record_fields
    from ..io import write_text
    from ..reward.judge_bias import judge_bias

    name, records = read_records(args.data)
    rows = [record_fields(rec) for rec in records]      # a bad JSON line is a one-line error naming its row
    report = judge_bias(rows, file=name, row_numbers=[rec.row for rec in records], group_field=args.group_field)
    text = json.dumps(report, indent=1)
    if args.output:
        write_text(args.output, text + "\n")
    print(text)
    print(f"preftune: {report['items']} items of {name}: DBG {report['dbg']:+.2f}, naive {report['naive']:+.2f} "
          "(percentage points)", file=sys.stderr)
    return 0
