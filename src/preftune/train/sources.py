"""Batch sources: where the loop's micro-batches come from.

The loop asks a source for the next micro-batch and never assumes the data exists before training:

* :class:`OfflineSource` -- a fixed, tokenized dataset, shuffled per epoch (deterministic in seed and
  epoch; optionally length-grouped), which also owns what only a fixed dataset allows: the
  precomputed-reference cache and the number of steps in an epoch.

A rollout source (generate -> score -> pair or group, for online and self-play training:
:mod:`preftune.online.rollout`) implements the same three methods: ``next()``, ``state_dict()`` and
``load_state_dict()``, and ``bind(model=, tokenizer=, reference=, device=, config=, objective=)``, which the loop calls
once the policy is built, to sample from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.types import SequenceBatch
from ..errors import ConfigError


@dataclass
class SourceBatch:
    """A micro-batch: the collated batch (on CPU), the tokenized examples it was made from, and the source's
    own metrics of it (a rollout source's reward and completion lengths), averaged into the step's record."""

    batch: SequenceBatch
    items: Sequence[Any]
    metrics: dict[str, float] = field(default_factory=dict)


class BatchSource:
    """The interface the loop uses.

    ``kind``: the :class:`~preftune.kinds.DataKind` of its batches (checked against the objective's);
    ``collate``: items -> batch in the source's layout (suppliers re-collate with it); ``name``: for
    messages; ``provides``: needs the source fills itself (data columns)."""

    name: str = "batch source"
    kind: Any = None
    provides: tuple[str, ...] = ()
    collate: Callable[[Sequence[Any]], SequenceBatch]

    def next(self) -> SourceBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def progress(self) -> float:
        """Epochs (or an equivalent) consumed, for the metrics' ``epoch``."""
        return 0.0

    def describe(self) -> dict[str, Any]:
        return {}


def epoch_batches(items: Sequence[Any], batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                  length: Callable[[Any], int] | None = None) -> list[list[int]]:
    """Batches of indices for one epoch; deterministic in (seed, epoch)."""
    if group_by_length:
        from ..data.sampler import length_grouped_batches
        if length is None:
            from ..kinds import kind_of
            length = kind_of(items).length
        return length_grouped_batches([length(it) for it in items], batch_size, seed=seed, epoch=epoch)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(len(items), generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]


DATA_COLUMNS = ("margin", "score_chosen", "score_rejected", "weight")


class OfflineSource(BatchSource):
    """A fixed dataset of tokenized examples of one data kind."""

    provides = DATA_COLUMNS

    def __init__(self, items: Sequence[Any], kind: Any, collate: Callable[[Sequence[Any]], SequenceBatch], *,
                 batch_size: int, seed: int = 0, group_by_length: bool = False, name: str = "<memory>"):
        self.items, self.kind, self.collate = items, kind, collate
        self.batch_size, self.seed, self.group_by_length, self.name = batch_size, seed, group_by_length, name
        self.epoch, self.batch_in_epoch = 0, 0
        self._order: list[list[int]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def check_columns(self, objective: Any) -> None:
        """Refuse an objective that reads a data column some examples lack."""
        for col in DATA_COLUMNS:
            if col in objective.needs:
                missing = [it.row for it in self.items if col not in it.extras]
                if missing:
                    raise ConfigError(f"objective '{objective.name}' needs the data column '{col}', which "
                                      f"{self.name} lacks (first rows without it: {missing[:5]})")

    def _epoch_order(self) -> list[list[int]]:
        if self._order is None:
            self._order = epoch_batches(self.items, self.batch_size, seed=self.seed, epoch=self.epoch,
                                        group_by_length=self.group_by_length, length=self.kind.length)
        return self._order

    def next(self) -> SourceBatch:
        while self.batch_in_epoch >= len(self._epoch_order()):
            self.epoch, self.batch_in_epoch, self._order = self.epoch + 1, 0, None
        idx = self._epoch_order()[self.batch_in_epoch]
        self.batch_in_epoch += 1
        chunk = [self.items[i] for i in idx]
        return SourceBatch(self.collate(chunk), chunk)

    def skip(self) -> None:
        """Pass over the next micro-batch without collating it (another process trains on it)."""
        while self.batch_in_epoch >= len(self._epoch_order()):
            self.epoch, self.batch_in_epoch, self._order = self.epoch + 1, 0, None
        self.batch_in_epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch, self._order = int(state["epoch"]), int(state["batch_in_epoch"]), None

    def progress(self) -> float:
        return round(self.epoch + self.batch_in_epoch / max(1, self.batches_per_epoch), 4)

    def describe(self) -> dict[str, Any]:
        return {"data_kind": self.kind.name, "train_examples": len(self.items)}

    def precomputed_reference(self, model: Any, *, batch_size: int, cache_dir: str | Path, settings: dict[str, Any],
                              chunk_size: int, progress: bool) -> Any:
        """Reference log-probs of every example, computed once and cached on disk (only a fixed dataset
        can be precomputed)."""
        from ..reference import precompute

        return precompute(model, self.items, self.collate, batch_size=batch_size, cache_dir=cache_dir,
                          settings=settings, chunk_size=chunk_size, progress=progress)
