"""Training callbacks (``preftune.callbacks``): the trainer calls these hooks; diagnostics monitors, loggers and
progress bars implement them. A hook may return a dict of extra metrics, which the trainer
adds to that step's record in ``metrics.jsonl``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """What a callback may read. ``model`` is the policy being trained (possibly a peft
    model); ``reference`` a :class:`preftune.reference.ReferenceSource`; ``objective`` the
    objective; ``probe`` a few tokenized training examples for cheap monitors."""

    config: Any
    model: Any
    tokenizer: Any
    reference: Any
    objective: Any
    output_dir: Path
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    probe: list = field(default_factory=list)
    collate: Any = None
    is_main: bool = True   # False on the other processes of a distributed run (only rank 0 writes)


class Callback:
    def on_train_start(self, state: TrainState) -> dict[str, float] | None:
        return None

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> dict[str, float] | None:
        return None

    def on_evaluate(self, state: TrainState, metrics: dict[str, float]) -> dict[str, float] | None:
        return None

    def on_train_end(self, state: TrainState) -> dict[str, float] | None:
        return None
