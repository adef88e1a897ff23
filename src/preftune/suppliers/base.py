"""Statistics beyond summed log-probs, supplied on demand by registered suppliers.

An objective lists what it reads in ``Objective.needs``. Some needs the forward fills itself
(``token_logps``, ``chosen_lengths``) and some the batch source (data columns such as ``margin``);
every other need is served by a :class:`Supplier` registered under that name. The trainer never
names a statistic: it asks :func:`suppliers_for` which suppliers an objective needs, refuses the run
before any work when a need has no supplier (or the supplier cannot work with the chosen reference),
lets each supplier ``prepare`` once before training, and calls ``supply`` on every micro-batch.

Adding a statistic is one new module with one registered class::

    from preftune.suppliers import Supplier, register_supplier

    @register_supplier
    class ResponseLengthRatio(Supplier):
        provides = ("length_ratio",)

        def supply(self, stats, step):
            stats.extras["length_ratio"] = stats.chosen_lengths / stats.rejected_lengths
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..errors import ConfigError


@dataclass
class MicroBatch:
    """One micro-batch in flight, and everything a forward or a supplier may read.

    ``items``: the batch's tokenized examples (None when a source has none); ``collate`` turns items
    into a batch of the same layout; ``policy``: the policy's :class:`~preftune.models.logprobs.SeqLogps`
    once the forward has run (``label_states`` kept when a supplier asked for them); ``generator``: the
    step's RNG for suppliers that sample (SPO's degradations), seeded from the run seed and the step."""

    model: Any
    reference: Any
    objective: Any
    batch: Any
    items: Sequence[Any] | None = None
    collate: Callable[[Sequence[Any]], Any] | None = None
    chunk_size: int = 1024
    generator: torch.Generator | None = None
    policy: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)   # the forward's own metrics (e.g. logits/chosen)

    @property
    def pad_id(self) -> int:
        return int(getattr(self.collate, "pad_id", 0))

    def need_items(self, what: str) -> tuple[Sequence[Any], Callable[[Sequence[Any]], Any]]:
        if self.items is None or self.collate is None:
            raise ValueError(f"objective '{self.objective.name}' needs {what}, which is computed from the batch's "
                             "examples: pass items and collate")
        return self.items, self.collate


class Supplier:
    """Computes one or more named statistics for an objective.

    * ``provides``: the need names it serves;
    * ``needs_policy_states``: ask the policy forward to keep the final hidden states that predict each
      label (no second forward);
    * :meth:`check`: raise :class:`~preftune.errors.ConfigError` before training when it cannot work
      (e.g. the reference source has no model);
    * :meth:`prepare`: once, before the first step (e.g. BCO's density ratios); may return a summary dict;
    * :meth:`supply`: per micro-batch, fill ``stats`` (fields or ``stats.extras``) in place.
    """

    provides: ClassVar[tuple[str, ...]] = ()
    needs_policy_states: ClassVar[bool] = False

    def check(self, objective: Any, reference: Any) -> None:
        pass

    def prepare(self, objective: Any, reference: Any, train_items: Sequence[Any], other_items: Sequence[Any],
                pad_id: int, device: Any) -> dict[str, Any] | None:
        return None

    def supply(self, stats: Any, step: MicroBatch) -> None:
        pass


def require_reference_model(objective: Any, reference: Any, method: str, why: str) -> None:
    """Refuse a reference source without ``method`` (a precomputed cache has no model to run)."""
    if not hasattr(reference, method):
        raise ConfigError(f"objective '{objective.name}' {why}; the reference source '{reference.kind}' has no "
                          "model: use --ref model (or adapter under LoRA)")


_SUPPLIERS: dict[str, Supplier] = {}


def register_supplier(cls: type[Supplier]) -> type[Supplier]:
    """Class decorator: register an instance of ``cls`` for every name in ``cls.provides``."""
    if not cls.provides:
        raise ValueError(f"supplier {cls.__name__} provides nothing")
    inst = cls()
    for name in cls.provides:
        old = _SUPPLIERS.get(name)
        if old is not None and type(old).__qualname__ != cls.__qualname__:
            raise ValueError(f"statistic '{name}' is already supplied by {type(old).__name__}")
        _SUPPLIERS[name] = inst
    return cls


def supplied() -> list[str]:
    """Names of every statistic a registered supplier provides."""
    _load_builtin()
    return sorted(_SUPPLIERS)


def suppliers_for(objective: Any, *, provided: Sequence[str] = (), reference: Any = None,
                  action: str = "`preftune train`") -> list[Supplier]:
    """The suppliers ``objective.needs`` calls for, in registration order, after checking that every need
    is ``provided`` (by the forward or the batch source) or has a supplier, and (given a reference) that each
    supplier can work with it. Raises :class:`ConfigError` otherwise."""
    _load_builtin()
    needs = [n for n in objective.needs if n not in provided]
    missing = sorted(n for n in needs if n not in _SUPPLIERS)
    if missing:
        raise ConfigError(
            f"objective '{objective.name}' needs {', '.join(missing)}, which {action} does not compute yet; "
            "call the objective from your own loop with those stats (see docs/objectives.md), register a "
            "supplier for it (docs/architecture.md), or choose an option of the objective that does not need "
            f"them (see `preftune objectives {objective.name}`)")
    chosen: list[Supplier] = []
    for sup in dict.fromkeys(_SUPPLIERS.values()):  # registration order, each once
        if any(n in sup.provides for n in needs):
            if reference is not None:
                sup.check(objective, reference)
            chosen.append(sup)
    return chosen


def _load_builtin() -> None:
    from . import _builtin  # noqa: F401
