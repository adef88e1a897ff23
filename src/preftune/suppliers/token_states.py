"""``token_states``: the policy's final hidden state predicting each response token, ``[S, T, H]`` per sequence in
the batch's sequence order (zero outside responses), with gradient, in any layout -- for heads that read the
policy's own states (PPO's value head). Taken from the policy's log-prob forward (no second forward)."""
from __future__ import annotations

from typing import Any

from .base import MicroBatch, Supplier, register_supplier
from .label_states import per_sequence_states


@register_supplier
class TokenStates(Supplier):
    provides = ("token_states",)
    needs_policy_states = True

    def supply(self, stats: Any, step: MicroBatch) -> None:
        states = step.policy.label_states if step.policy is not None else None
        stats.extras["token_states"] = per_sequence_states(step.model, step.batch, states)
