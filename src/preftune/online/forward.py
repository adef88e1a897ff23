"""The online forward: the default policy forward, which also hands the batch's per-sequence log-probs back to the
rollout source (on a generation batch's first use they are the sampler's, for the completions log), and the
callback that writes the completions log at the end of each step."""
from __future__ import annotations

from typing import Any

from ..callbacks import Callback, TrainState
from ..suppliers.base import MicroBatch
from ..train.forward import PolicyLogps


class OnlineForward(PolicyLogps):
    def __init__(self, source: Any):
        self.source = source

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> Any:
        stats = super().__call__(step, keep_states=keep_states)
        if step.policy is not None and step.model.training:
            self.source.note_logps(step.policy.sums)
        return stats


class CompletionsLog(Callback):
    """Writes the step's completions to ``completions.jsonl`` (before any checkpoint of that step)."""

    def __init__(self, source: Any):
        self.source = source

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.source.flush(state.step)
        return None
