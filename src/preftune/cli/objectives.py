"""``preftune objectives``: list the registered objectives and their hyperparameters."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("objectives", help="list the objectives the registry knows, with their hyperparameters",
                       description="List every registered objective: data kind, whether it needs a reference "
                                   "model, its paper and equation, and its hyperparameters with defaults. "
                                   "TRL loss_type names that mean the same objective (sigmoid = dpo, robust = "
                                   "rdpo, ...) are accepted wherever an objective is named; they are listed "
                                   "at the end.")
    p.add_argument("name", nargs="?", help="show only this objective (a TRL name such as 'sigmoid' works too)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def aliases_of(name: str) -> list[str]:
    """The other names (TRL's) under which objective ``name`` is found."""
    from ..objectives import base

    return sorted(a for a, t in base.ALIASES.items() if t == name and a not in base._REGISTRY)


def describe(name: str) -> dict:
    from ..objectives import objective_class

    cls = objective_class(name)
    doc = (cls.__doc__ or "").strip().splitlines()
    return {"name": cls.name, "aliases": aliases_of(cls.name), "kind": cls.kind, "reference": cls.needs_reference,
            "paper": cls.paper, "summary": doc[0] if doc else "", "hyperparameters": cls.hyperparameters()}


def run(args: argparse.Namespace) -> int:
    from ..objectives import available

    names = [args.name] if args.name else available()
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        ref = "reference" if r["reference"] else "reference-free"
        also = f"  (TRL name: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']:<16} {r['kind']:<9} {ref:<15} {r['paper']}{also}")
        for hname, h in r["hyperparameters"].items():
            print(f"    --{hname.replace('_', '-'):<20} default {h['default']!r:<10} {h['allowed']}: {h['help']}")
    if not args.name:
        pairs = [(a, t) for t in available() for a in aliases_of(t)]
        if pairs:
            print("\nTRL loss_type names accepted as aliases: " + ", ".join(f"{a} = {t}" for a, t in pairs))
    return 0
