"""The reward model's forward: one scalar score per sequence (the model's head on the last real token), in the
padded layout, as TRL's RewardTrainer scores chosen and rejected sequences."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..suppliers.base import MicroBatch
from ..train.forward import Forward


@dataclass
class PairScores:
    """Scores ``[B]`` of the chosen and the rejected response of each pair, with the pair's optional ``margin``
    (TRL's ``margin`` column) and ``weight``."""

    chosen_scores: Tensor
    rejected_scores: Tensor
    margin: Tensor | None = None
    weight: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.chosen_scores.shape[0]


class ScoreForward(Forward):
    """``model(input_ids, attention_mask).logits[:, 0]`` for every sequence of a padded pair batch (chosen rows
    first, then rejected): the score of a sequence-classification model with one label."""

    provides = ("scores",)
    layouts = ("padded",)

    def __call__(self, step: MicroBatch, *, keep_states: bool = False) -> PairScores:
        b = step.batch
        out = step.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        logits = out.logits
        if logits.dim() != 2 or logits.shape[-1] != 1:
            raise ValueError(f"a reward model scores each sequence with one number; this model gives "
                             f"{tuple(logits.shape[1:])} per sequence (load it with num_labels=1)")
        scores = logits[:, 0].float()[b.seq_row]
        B = b.num_examples
        ex = dict(b.extras)
        return PairScores(scores[:B], scores[B:], margin=ex.pop("margin", None), weight=ex.pop("weight", None),
                          extras=ex)
