"""``preftune`` entry point: dispatches to one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)`` (registering its own options, each
documented in ``--help``) and ``run(args) -> int``. Errors that preftune raises for the user
(``PreftuneError``: bad data, bad config, bad checkpoint) print as one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import PreftuneError

# Subcommand name -> module under preftune.cli.
SUBCOMMANDS = {
    "train": "train",
    "objectives": "objectives",
    "diagnose": "diagnose",
    "demo": "demo",
    "arena": "arena",
    "data": "data",
    "rm": "rm",
    "online": "online",
    "ranking": "ranking",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preftune", description="Preference optimization for language models.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"preftune {__version__}")
    parser.add_argument("--no-progress", dest="global_no_progress", action="store_true",
                        help="no progress bars, whatever the command (preftune --no-progress train ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"preftune.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _apply_global_options(args)
    _quiet_other_ranks()
    try:
        return int(args.func(args) or 0)
    except PreftuneError as e:
        print(f"preftune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"preftune {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_other_ranks() -> None:
    """Under torchrun / accelerate launch only rank 0 reports (errors, on stderr, still come from every rank), and
    each process takes its own GPU before anything is loaded (a reward model loaded before training would
    otherwise land on cuda:0 in every process)."""
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def _apply_global_options(args: argparse.Namespace) -> None:
    """Hand the global options to the subcommand, in its own spelling: ``train``, ``online`` and ``rm
    train`` take a ``progress`` option (a TrainConfig field), the others a ``no_progress`` switch."""
    quiet = vars(args).pop("global_no_progress", False)
    if not quiet:
        return
    if args.command in ("train", "online") or (args.command == "rm" and getattr(args, "rm_command", "") == "train"):
        args.progress = False  # the commands that take every TrainConfig option
    else:
        args.no_progress = True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
