"""``preftune ranking``: the ranking family (``preftune.ranking``). ``list`` prints every method with its paper,
inputs and hyperparameters; ``bench`` runs the benchmarks of benchmarks/ranking/ (each method against the loss
it replaces, a table with mean ± spread over seeds and seconds per epoch; from a source checkout)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# benchmark name -> script; a method's name where it differs from its benchmark's
BENCH_SCRIPTS = ("part1.py", "part2.py")
BENCH_ALIASES = {"ranknet": "ranklist", "listnet": "ranklist", "kd": "pld", "ldr_kl": "ldr", "aldr_kl": "ldr",
                 "tolerance": "uniformity", "dual_head_kd": "dhkd", "bpr": "denoise", "infonce": "mw",
                 "nt_xent": "isogclr"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ranking", help="ranking, contrastive and distillation losses: list them, benchmark them",
                       description="The ranking family (docs/ranking.md): losses for rankers, retrievers, "
                                   "recommenders, classifiers and representations, each usable in any PyTorch loop "
                                   "via preftune.ranking.get(name, **hyperparameters).")
    rsub = p.add_subparsers(dest="ranking_command", metavar="RANKING_COMMAND")
    rsub.required = True
    ls = rsub.add_parser("list", help="every method: paper, inputs, hyperparameters",
                         description="Print each ranking method with its paper ID, tensor inputs and "
                                     "hyperparameters (defaults).")
    ls.add_argument("name", nargs="?", help="one method only")
    ls.set_defaults(func=run_list)
    b = rsub.add_parser("bench", help="run the benchmarks (each method against the loss it replaces)",
                        description="Run benchmarks/ranking/part1.py and part2.py (synthetic data built from a "
                                    "seed): a table of method, baseline, metric, mean ± spread over seeds and seconds "
                                    "per epoch.",
                        epilog="example: preftune ranking bench --method ldr --quick")
    b.add_argument("--method", action="append", help="run only this method's benchmark (repeatable; default: all)")
    b.add_argument("--quick", action="store_true", help="3 seeds and shorter training (minutes)")
    b.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3 with --quick, else 5)")
    b.set_defaults(func=run_bench)


def run_list(args: argparse.Namespace) -> int:
    from ..ranking import available, describe

    for name in ([args.name] if args.name else available()):
        d = describe(name)
        from ..ranking.registry import REQUIRED

        hp = ", ".join(f"{k} (required)" if v == REQUIRED else f"{k}={v!r}" for k, v in d["hyperparameters"].items())
        print(f"{name:13s} {d['paper']}")
        print(f"{'':13s}   inputs: {d['inputs']} ({d['kind']})")
        print(f"{'':13s}   hyperparameters: {hp or 'none'}" + (f"; replaces: {d['replaces']}" if d["replaces"] else ""))
    return 0


def bench_dir() -> Path:
    from ..errors import ConfigError

    d = Path(__file__).resolve().parents[3] / "benchmarks" / "ranking"
    if not all((d / s).is_file() for s in BENCH_SCRIPTS):
        raise ConfigError(f"the ranking benchmarks are scripts of the source checkout ({d} not found): run "
                          "preftune ranking bench from a clone of the repository")
    return d


def run_bench(args: argparse.Namespace) -> int:
    import importlib.util

    from ..errors import ConfigError
    from ..ranking import available

    d = bench_dir()
    scripts = []
    for s in BENCH_SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"preftune_ranking_bench_{s[:-3]}", d / s)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)  # our own benchmark script, from the checkout
        scripts.append(mod)
    wanted = [BENCH_ALIASES.get(m, m) for m in (args.method or [])]
    known = {n for mod in scripts for n in mod.BENCHES}
    bad = [m for m in wanted if m not in known]
    if bad:
        raise ConfigError(f"no benchmark for '{bad[0]}'; benchmarks: {', '.join(sorted(known))} "
                          f"(methods: {', '.join(available())})")
    for mod in scripts:
        mine = [m for m in wanted if m in mod.BENCHES] if wanted else list(mod.BENCHES)
        if not mine:
            continue
        argv = [x for m in mine for x in ("--method", m)] + (["--quick"] if args.quick else [])
        argv += ["--seeds", str(args.seeds)] if args.seeds else []
        mod.main(argv)
    return 0
