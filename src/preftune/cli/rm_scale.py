"""``preftune rm scale``: the P57 WorldPM experiment -- Bradley-Terry reward models of several sizes trained on
growing amounts of arena preference data, labelled by an objective and by a style-biased annotator; test loss
against data per size, with a fitted power law ``L(D) = a * D^-b + c`` (:mod:`preftune.reward.scaling`)."""
from __future__ import annotations

import argparse
import sys


def add_parser(rsub: argparse._SubParsersAction) -> None:
    from ..reward.scaling import SIZES, ScalingConfig

    d = ScalingConfig()
    p = rsub.add_parser(
        "scale", help="reward-model scaling: test BT loss vs data per model size, power-law fits (P57 WorldPM)",
        description="Train a grid of Bradley-Terry reward models (tiny Llama-style models of growing width and "
                    "depth, each pretrained on the task's demonstrations, then given a score head) on D preference "
                    "pairs of an arena task, for every D, model size, annotator and seed; measure the BT loss on "
                    "held-out pairs of the same annotator and fit L(D) = a * D^-b + c per model size. Annotators: "
                    "'objective' (the task's true reward) and 'style' ((1-w) * true reward + w * a surface feature "
                    "of the answer). Writes results.json, results.md (a table) and a figure into --output.",
        epilog="example: preftune rm scale --quick --output runs/rm-scale --figure docs/figures/worldpm-quick.png")
    p.add_argument("--output", required=True, help="directory for results.json, results.md and the runs")
    p.add_argument("--from-results", nargs="+", metavar="RESULTS_JSON",
                   help="train nothing: pool the cells of these results.json files (e.g. one run per seed), refit, "
                        "and write the table, results.json and the figure")
    p.add_argument("--figure", help="write the figure (PNG) here (default: OUTPUT/scaling.png)")
    p.add_argument("--quick", action="store_true",
                   help="a small grid that runs in minutes on a CPU (sizes xs s m, D = 64..512, seeds 0 1); "
                        "options given explicitly still apply")
    p.add_argument("--task", default=None, help=f"arena task (default: {d.task})")
    p.add_argument("--sizes", nargs="+", default=None,
                   help="model sizes, from "
                        f"{', '.join(f'{k} ({v.hidden_size}x{v.num_layers})' for k, v in SIZES.items())}"
                        f" (hidden x layers; default: {' '.join(d.sizes)})")
    p.add_argument("--data-sizes", type=int, nargs="+", default=None,
                   help=f"training-set sizes D in pairs (default: {' '.join(map(str, d.data_sizes))})")
    p.add_argument("--annotators", nargs="+", default=None, choices=("objective", "style"),
                   help="which annotators label the pairs (default: objective style)")
    p.add_argument("--style-weight", type=float, default=None,
                   help=f"w of the style annotator, (1-w) * true reward + w * feature (default: {d.style_weight})")
    p.add_argument("--style-feature", default=None, choices=("length", "digits", "first_low"),
                   help=f"the style annotator's surface feature (default: {d.style_feature})")
    p.add_argument("--annotator-temperature", type=float, default=None,
                   help="> 0: sample each label from the annotator's Bradley-Terry model at this temperature "
                        "(default: 0, the higher score wins)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1)")
    p.add_argument("--test-pairs", type=int, default=None,
                   help=f"held-out pairs per annotator (default: {d.test_pairs})")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"passes over the D pairs; steps = max(--min-steps, ceil(epochs * D / batch)) "
                        f"(default: {d.epochs})")
    p.add_argument("--min-steps", type=int, default=None,
                   help=f"fewest optimizer steps per model (default: {d.min_steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"pairs per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default: {d.lr})")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"SFT steps that pretrain each backbone on the demonstrations (default: {d.pretrain_steps})")
    p.add_argument("--pool-steps", type=int, default=None,
                   help=f"SFT steps of the model whose answers are labelled (default: {d.pool_steps}, the arena's)")
    p.add_argument("--cache-dir", help="arena SFT model cache (default: $PREFTUNE_ARENA_CACHE or "
                                       "~/.cache/preftune/arena)")
    p.add_argument("--device", default=None, help="device to train on (default: cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; the models are tiny, more threads only contend)")
    p.set_defaults(func=run_scale)


_FIELDS = ("task", "sizes", "data_sizes", "annotators", "style_weight", "style_feature", "annotator_temperature",
           "seeds", "test_pairs", "epochs", "min_steps", "batch_size", "lr", "pretrain_steps", "pool_steps",
           "cache_dir", "device")


def run_scale(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..errors import ConfigError
    from ..io import write_json, write_text
    from ..reward.scaling import (ScalingConfig, format_table, merge_results, plot_curves, quick_config,
                                  run_scaling_grid)

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.output)
    if args.from_results:
        results = merge_results(args.from_results)
        write_json(out / "results.json", results)
    else:
        given = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
        cfg = quick_config(**given) if args.quick else ScalingConfig(**given)
        before = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            results = run_scaling_grid(cfg, out, progress=lambda m: print(f"preftune: {m}", file=sys.stderr))
        finally:
            torch.set_num_threads(before)
    table = format_table(results)
    write_text(out / "results.md", table)
    fig = plot_curves(results, args.figure or out / "scaling.png")
    sys.stdout.write(table)
    print(f"preftune: wrote {out / 'results.json'}, {out / 'results.md'} and {fig}", file=sys.stderr)
    return 0
