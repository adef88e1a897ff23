"""``preftune rm``: reward models. ``rm train`` trains a Bradley-Terry reward model with the trainer (every
``preftune train`` option applies); ``rm score`` scores a JSONL of prompt/response rows; ``rm eval`` measures pairwise
accuracy (per subset, RewardBench v1/v2 scoring, length bias) of a reward model or a DPO policy."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Further ``preftune rm`` subcommands, one module each under preftune.cli: name -> module. Each module defines
# ``add_parser(rm_subparsers)`` (its own options, each with --help text) and sets ``func`` on its parser.
RM_SUBCOMMANDS: dict[str, str] = {
    "strength": "rm_strength",   # P67 preference strength from M reward models
    "gpm-demo": "rm_gpm",        # P31 GPM vs Bradley-Terry on cyclic preferences
    "scale": "rm_scale",         # P57 WorldPM reward-model scaling grid and power-law fits
    "cdr-score": "rm_cdr",       # P64 CDR density-ratio reward of a strong over a weak LM
    "judge-bias": "rm_judge_bias",  # P58 DBG score of a judge's self-preference against gold judgments
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .train import add_train_options

    p = sub.add_parser("rm", help="reward models: train, score, eval",
                       description="Train and use reward models (sequence classifiers with one score).")
    rsub = p.add_subparsers(dest="rm_command", metavar="RM_COMMAND")
    rsub.required = True
    t = rsub.add_parser(
        "train", help="train a Bradley-Terry reward model on preference pairs",
        description="Train a reward model: AutoModelForSequenceClassification with one label (a causal LM "
                    "checkpoint gets a new score head), the Bradley-Terry loss (--loss bradley_terry, the default) "
                    "with the data's optional `margin` column and --center-rewards-coefficient (TRL's names). "
                    "Every `preftune train` option applies: data formats, LoRA, checkpoints, --resume. "
                    "final/ loads with AutoModelForSequenceClassification.from_pretrained.",
        epilog="example: preftune rm train --model runs/tiny --data pairs.jsonl --output runs/rm --max-steps 200")
    add_train_options(t)
    t.set_defaults(func=run_train)
    s = rsub.add_parser(
        "score", help="score prompt/response rows with a reward model",
        description="Score a JSONL file of {prompt, response} rows (also `completion` or `chosen` as the "
                    "response) with a reward model; writes the rows with a `score` field added.",
        epilog="example: preftune rm score --model runs/rm/final --data rows.jsonl --output scored.jsonl")
    s.add_argument("--model", required=True, help="a reward model directory (e.g. RUN/final)")
    s.add_argument("--data", required=True, help="JSONL of {prompt, response} rows")
    s.add_argument("--output", help="where to write the scored rows (default: stdout)")
    s.add_argument("--batch-size", type=int, default=16, help="rows per forward (default: 16)")
    s.add_argument("--max-length", type=int, default=1024, help="longest prompt+response in tokens (default: 1024)")
    s.set_defaults(func=run_score)
    e = rsub.add_parser(
        "eval", help="accuracy of a reward model (or a DPO policy) on preference pairs; RewardBench v1/v2 scoring",
        description="Pairwise accuracy (chosen scored above rejected; a tie counts 1/2) overall and per subset, "
                    "RewardBench v1 section scores when the subsets carry its names (ties count 0 there, as in "
                    "RewardBench), RewardBench 2 best-of-n scoring (--format rewardbench-v2) and length bias. "
                    "The scorer: a sequence classifier, or a causal LM through DPO's implicit reward "
                    "beta*(log pi - log pi_ref) with --ref-model, or reference-free with --reference-free; "
                    "auto-detected from config.json's architectures.",
        epilog="example: preftune rm eval --model runs/rm/final --data rewardbench.jsonl --output report.json")
    e.add_argument("--model", required=True, help="a reward model, or a causal LM policy, directory")
    e.add_argument("--data", required=True, help="preference pairs (any format preftune train reads) or "
                                                 "RewardBench 2 rows")
    e.add_argument("--subset-column", default="subset", help="the column naming each row's subset "
                                                             "(default: subset; absent: one group)")
    e.add_argument("--format", default="auto", choices=("auto", "pairs", "rewardbench-v2"),
                   help="pairs, or RewardBench 2 rows (chosen/rejected lists); auto: v2 when `rejected` is a list "
                        "of strings (default: auto)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--ref-model", help="score a causal LM by its implicit reward against this reference model")
    g.add_argument("--reference-free", choices=("sum", "average"),
                   help="score a causal LM by its summed or per-token mean response log-prob")
    e.add_argument("--scorer", default="auto", choices=("auto", "classifier", "implicit", "reference-free"),
                   help="override the detected kind of scorer (default: auto, from config.json's architectures)")
    e.add_argument("--beta", type=float, default=1.0,
                   help="the implicit reward's beta: scales every score, changes no ranking (default: 1)")
    e.add_argument("--on-bad-row", default="error", choices=("error", "skip"),
                   help="stop at the first bad row, or skip bad rows (default: error)")
    e.add_argument("--output", help="also write the report as JSON here")
    e.add_argument("--batch-size", type=int, default=16, help="responses per forward (default: 16)")
    e.add_argument("--max-length", type=int, default=1024, help="longest prompt+response in tokens (default: 1024)")
    e.set_defaults(func=run_eval)
    for module in RM_SUBCOMMANDS.values():
        importlib.import_module(f"preftune.cli.{module}").add_parser(rsub)


def run_train(args: argparse.Namespace) -> int:
    from ..reward import train_reward_model
    from .train import config_from_args, report_run

    values = {k: v for k, v in vars(args).items() if k != "rm_command"}
    if "loss" not in values and "loss" not in _recipe_keys(args.config):
        values["loss"] = "bradley_terry"  # before the config checks its hyperparameters against the loss
    result = train_reward_model(config_from_args(argparse.Namespace(**values)))
    return report_run(result, ("loss", "accuracy", "margin"), "reward model")


def _recipe_keys(path: str | None) -> set[str]:
    import yaml

    if not path:
        return set()
    try:
        d = yaml.safe_load(open(path, encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return set()  # the config loader reports it
    return set(d) if isinstance(d, dict) else set()


def read_scoring_rows(path: str) -> tuple[str, list[dict], list[str], list[str]]:
    """(name, rows, prompts, responses) of a JSONL of {prompt, response} rows (``completion`` or ``chosen`` as the
    response); a row without them is a one-line error naming file, row and field."""
    from ..data.records import read_records, record_fields, required_text

    name, records = read_records(path)
    rows, prompts, responses = [], [], []
    for rec in records:
        d = record_fields(rec)
        prompts.append(required_text(rec, "prompt", d.get("prompt")))
        responses.append(required_text(rec, "response",
                                       next((d[k] for k in ("response", "completion", "chosen") if k in d), None)))
        rows.append(d)
    return name, rows, prompts, responses


def write_scored_rows(output: str | None, name: str, rows: list[dict]) -> None:
    """The scored rows as JSONL, to ``output`` (atomically) or stdout."""
    from ..io import write_text

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if output:
        write_text(output, text)
        print(f"preftune: scored {len(rows)} rows of {name} -> {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def run_score(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..reward import RewardModel

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    name, rows, prompts, responses = read_scoring_rows(args.data)
    rm = RewardModel.from_pretrained(args.model, max_length=args.max_length, batch_size=args.batch_size)
    scores = rm.score(prompts, responses).tolist()
    write_scored_rows(args.output, name, [{**r, "score": s} for r, s in zip(rows, scores)])
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..io import write_json
    from ..reward.evaluate import evaluate_reward, format_report

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    report = evaluate_reward(args.model, args.data, subset_column=args.subset_column or None, format=args.format,
                             ref_model=args.ref_model, reference_free=args.reference_free, scorer_kind=args.scorer,
                             beta=args.beta, on_bad_row=args.on_bad_row, max_length=args.max_length,
                             batch_size=args.batch_size)
    sys.stdout.write(format_report(report))
    if args.output:
        write_json(args.output, report)
        print(f"preftune: wrote the report to {args.output}", file=sys.stderr)
    return 0
