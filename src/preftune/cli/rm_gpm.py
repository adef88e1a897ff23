"""``preftune rm gpm-demo``: the P31 demonstration -- a Bradley-Terry model and a GPM trained on the same cyclic
(rock-paper-scissors) preference pairs, over several seeds, with a figure."""
from __future__ import annotations

import argparse
import sys


def add_parser(rsub: argparse._SubParsersAction) -> None:
    from ..reward.gpm_cyclic import CyclicConfig

    d = CyclicConfig()
    p = rsub.add_parser(
        "gpm-demo", help="GPM vs Bradley-Terry on cyclic (rock-paper-scissors) preferences (P31)",
        description="Train a Bradley-Terry scalar scorer and a General Preference embedding Model (P31) on the same "
                    "synthetic pairs: cyclic pairs (type A > B > C > A) and transitive ones (higher quality wins "
                    "within a type). Prints test pair accuracy on each kind, mean ± std over seeds; writes the "
                    "per-seed results as JSON and a figure. Tiny models on the CPU: seconds per seed.",
        epilog="example: preftune rm gpm-demo --seeds 0 1 2 3 4 --output runs/gpm-demo/results.json "
               "--figure docs/figures/gpm-cyclic.png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds to run (default: 0 1 2 3 4)")
    p.add_argument("--output", help="write the per-seed results and the summary as JSON here")
    p.add_argument("--figure", help="write the figure (PNG) here")
    p.add_argument("--types", type=int, default=d.n_types,
                   help=f"response types in the cycle, odd and >= 3 (default: {d.n_types})")
    p.add_argument("--p-cyclic", type=float, default=d.p_cyclic,
                   help=f"share of pairs between two types (the rest compare quality within a type; "
                        f"default: {d.p_cyclic})")
    p.add_argument("--flip", type=float, default=d.flip, help=f"share of labels flipped at random (default: {d.flip})")
    p.add_argument("--train-pairs", type=int, default=d.train_pairs, help=f"training pairs (default: {d.train_pairs})")
    p.add_argument("--test-pairs", type=int, default=d.test_pairs, help=f"test pairs (default: {d.test_pairs})")
    p.add_argument("--k", type=int, default=d.k, help=f"2x2 blocks of the GPM operator; embeddings have 2k "
                                                      f"dimensions (default: {d.k})")
    p.add_argument("--no-gate", action="store_true",
                   help="fix every eigenvalue lambda_l = 1 (no prompt-dependent gate; the authors' no_moe setting)")
    p.add_argument("--no-normalize", action="store_true",
                   help="use raw embeddings v instead of unit-length ones (the authors' no_l2 setting)")
    p.add_argument("--tau", type=float, default=d.tau, help=f"GPM temperature in sigmoid(s/tau) (default: {d.tau})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps per model (default: {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default: {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per step (default: {d.batch_size})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; the models are tiny, more threads only contend)")
    p.set_defaults(func=run_gpm_demo)


def run_gpm_demo(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ConfigError
    from ..io import write_json
    from ..reward.gpm_cyclic import CyclicConfig, format_summary, plot_demo, run_cyclic_demo

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    cfg = CyclicConfig(n_types=args.types, p_cyclic=args.p_cyclic, flip=args.flip, train_pairs=args.train_pairs,
                       test_pairs=args.test_pairs, k=args.k, gate=not args.no_gate,
                       normalize=not args.no_normalize, tau=args.tau, steps=args.steps, lr=args.lr,
                       batch_size=args.batch_size)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run_cyclic_demo(args.seeds, cfg)
    finally:
        torch.set_num_threads(before)  # called in-process (tests), leave the caller's setting as it was
    sys.stdout.write(format_summary(result))
    if args.output:
        write_json(args.output, result)
        print(f"preftune: results -> {args.output}", file=sys.stderr)
    if args.figure:
        plot_demo(result, args.figure)
        print(f"preftune: figure -> {args.figure}", file=sys.stderr)
    return 0
