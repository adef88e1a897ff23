"""``prompt_logps`` (ORPO with ``nll_tokens='prompt_and_completion'``): the policy's summed log-probs of each
chosen sequence's *prompt* tokens after the first, with gradient, and their count --
``extras['chosen_prompt_logps']`` and ``extras['chosen_prompt_lengths']``, ``[B]``.

Why: TRL 1.16's ``ORPOTrainer.concatenated_forward`` takes its NLL as ``nn.CrossEntropyLoss`` over every
non-padding token of the chosen sequences -- prompt included ("orpo chosen nll loss is computed over the
full prompt and response"), one mean over all those tokens of the batch -- while preftune's forward scores
response tokens only. A prompt token's log-prob depends on the prompt before it alone (causal attention),
so one extra forward over the prompts gives them exactly; they are added to the chosen response's in
:func:`preftune.objectives.reference_free.chosen_nll`. The first prompt token has no context and is not
scored, as in TRL (its labels shift by one).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.collate import collate_unpaired
from ..data.types import SequenceBatch, TokenizedUnpaired
from ..models.logprobs import sequence_logps
from .base import MicroBatch, Supplier, register_supplier


def prompt_batch(items: Sequence[Any], pad_id: int) -> SequenceBatch:
    """Each item's prompt as one sequence whose scored part is every prompt token after the first."""
    return collate_unpaired([TokenizedUnpaired(list(it.prompt_ids[:1]), list(it.prompt_ids[1:]), True, it.row)
                             for it in items], pad_id)


def prompt_logps(model: Any, items: Sequence[Any], pad_id: int, device: Any = None,
                 chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums [B], lengths [B])``: the policy's summed log-probs of each prompt's tokens after the first
    (with gradient when enabled) and how many there are."""
    if all(len(it.prompt_ids) < 2 for it in items):  # nothing to score (and no sequence to run)
        zeros = torch.zeros(len(items), device=device)
        return zeros, zeros.clone()
    batch = prompt_batch(items, pad_id)
    if device is not None:
        batch = batch.to(device)
    out = sequence_logps(model, batch, chunk_size=chunk_size)
    return out.sums, out.lengths


@register_supplier
class PromptLogps(Supplier):
    provides = ("prompt_logps",)

    def supply(self, stats: Any, step: MicroBatch) -> None:
        items, _ = step.need_items("the log-probs of the chosen sequences' prompt tokens")
        sums, lengths = prompt_logps(step.model, items, step.pad_id, step.batch.input_ids.device, step.chunk_size)
        stats.extras["chosen_prompt_logps"] = sums
        stats.extras["chosen_prompt_lengths"] = lengths
