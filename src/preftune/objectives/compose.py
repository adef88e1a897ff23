"""Composition: weighted sums of objectives, and parsing of ``"dpo:1.0,sft:0.2"`` specs.

RPO (P07) is ``WeightedSum([(1.0, DPO(beta)), (alpha, SFT())])``: a composition, not a branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .base import Objective, ObjectiveOutput, Stats, objective_class


@dataclass
class WeightedSum(Objective):
    """``sum_i w_i * loss_i``. Metrics of every term are kept; a term's own loss is
    reported as ``loss/<name>``. All terms must take the same kind of stats."""

    terms: list[tuple[float, Objective]] = field(default_factory=list)
    name = "weighted_sum"

    def __post_init__(self) -> None:
        if not self.terms:
            raise ConfigError("a weighted sum needs at least one term")
        kinds = {t.kind for _, t in self.terms}
        if len(kinds) > 1:
            raise ConfigError(f"cannot sum objectives over different data kinds: {sorted(kinds)}")
        self.kind = kinds.pop()  # type: ignore[misc]
        self.needs_reference = any(t.needs_reference for _, t in self.terms)  # type: ignore[misc]
        self.needs = tuple(sorted({n for _, t in self.terms for n in t.needs}))  # type: ignore[misc]
        self.name = "+".join(t.name for _, t in self.terms)  # type: ignore[misc]

    def __call__(self, stats: Stats) -> ObjectiveOutput:
        total: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        for w, term in self.terms:
            out = term(stats)
            total = w * out.loss if total is None else total + w * out.loss
            for k, v in out.metrics.items():
                metrics.setdefault(k, v)
            metrics[f"loss/{term.name}"] = out.loss.detach().float().mean()
        assert total is not None
        return ObjectiveOutput(total, metrics)

    def children(self) -> list[Objective]:
        return [t for _, t in self.terms]

    def config(self) -> dict[str, Any]:
        return {"terms": [{"weight": w, "name": t.name, **t.config()} for w, t in self.terms]}


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``"dpo:1.0,sft:0.2"`` -> ``[("dpo", 1.0), ("sft", 0.2)]``; a bare name has weight 1.

    A weight must be a finite number > 0: ``dpo:nan``, ``dpo:inf``, ``sft:0``, ``sft:-1`` and
    ``sft:abc`` are refused, naming the term.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"loss spec must be a string such as 'dpo' or 'dpo:1.0,sft:0.2', got {spec!r}")
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, colon, w = part.partition(":")
        name, w = name.strip(), w.strip()
        if not name:
            raise ConfigError(f"loss spec '{spec}': term '{part}' names no objective")
        if not colon:
            weight = 1.0
        else:
            try:
                weight = float(w)
            except ValueError:
                raise ConfigError(f"loss spec '{spec}': weight '{w}' of '{name}' is not a number "
                                  f"(term '{part}')") from None
            if not math.isfinite(weight) or weight <= 0:
                raise ConfigError(f"loss spec '{spec}': term '{part}' has weight {w}; "
                                  "a weight must be a finite number > 0")
        out.append((name, weight))
    if not out:
        raise ConfigError(f"loss spec '{spec}' names no objective")
    return out


def accepted_hyperparameters(spec: str, hparams: dict[str, Any] | None = None) -> dict[str, dict]:
    """Name -> ``{default, help, allowed}`` of every hyperparameter some term of ``spec`` accepts (a
    wrapper's include those of its base, ``hparams["base"]`` or its default). Checks the spec: its
    weights and that every name is a registered objective (or an alias of one)."""
    hparams = hparams or {}
    out: dict[str, dict] = {}
    for name, _ in parse_spec(spec):
        for k, v in _accepts(objective_class(name), hparams).items():
            out.setdefault(k, v)
    return out


def _accepts(cls: type[Objective], hparams: dict[str, Any]) -> dict[str, dict]:
    from .base import Wrapper

    own = dict(cls.hyperparameters())
    if issubclass(cls, Wrapper):  # a wrapper also takes its base objective's hyperparameters
        base = hparams.get("base", cls.hyperparameters()["base"]["default"])
        if isinstance(base, str):
            for k, v in objective_class(base).hyperparameters().items():
                own.setdefault(k, v)
    return own


def build(spec: str, **hparams: Any) -> Objective:
    """Build an objective from a spec and shared hyperparameters.

    Each hyperparameter goes to every term that declares it; one that no term declares is an
    error listing what the terms accept. A single term with weight 1 is returned unwrapped.
    """
    from .base import get

    parts = parse_spec(spec)
    classes = [(objective_class(n), w) for n, w in parts]
    accepted = {k for cls, _ in classes for k in _accepts(cls, hparams)}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ConfigError(f"loss '{spec}' has no hyperparameter {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(accepted)) or 'none'}")
    built = []
    for cls, w in classes:
        own = {k: v for k, v in hparams.items() if k in _accepts(cls, hparams)}
        built.append((w, get(cls.name, **own)))
    if len(built) == 1 and built[0][0] == 1.0:
        return built[0][1]
    return WeightedSum(built)
