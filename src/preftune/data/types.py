"""Typed examples, tokenized examples and model batches: the data contract of preftune.

Flow: raw record (dict) -> typed example (``PairExample`` / ``UnpairedExample`` /
``RankedExample``) -> tokenized (``TokenizedPair`` / ...) -> ``SequenceBatch`` for the model.

``SequenceBatch`` describes *sequences* independently of how they are laid out in rows, so
one log-prob routine serves every layout:

* padded: ``R = 2B`` rows (chosen rows then rejected rows), ``seq_row = arange(2B)``;
* prefix-shared: ``R = B`` rows of ``prompt + chosen + rejected`` with a block attention mask
  and positions restarting after the prompt; sequences 0..B-1 are the chosen segments and
  B..2B-1 the rejected segments of the same rows;
* packed: ``R = 1`` row with every sequence back to back, no padding.

``seq_mask[s, t]`` is True where token ``t`` of row ``seq_row[s]`` is a response token of
sequence ``s`` (a *label* position: its log-prob is ``log p(x_t | x_<t)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

Message = dict[str, str]
Text = Union[str, list[Message]]

# Optional per-row numeric columns carried through to the objectives.
PAIR_EXTRA_FIELDS = ("score_chosen", "score_rejected", "margin", "weight", "strength", "strength_std")


@dataclass(frozen=True)
class PairExample:
    """One preference pair. ``prompt``/``chosen``/``rejected`` are strings, or lists of chat
    messages for conversational data (prompt = the messages before the answer)."""

    prompt: Text
    chosen: Text
    rejected: Text
    row: int = -1
    source: str = ""
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


@dataclass(frozen=True)
class UnpairedExample:
    """One completion with a desirable (True) / undesirable (False) label. ``origin``: the field
    the completion was read from, when not ``completion`` (``chosen``/``rejected`` of a pair split
    in two), so that errors name the field in the file; it takes no part in equality."""

    prompt: Text
    completion: Text
    label: bool
    row: int = -1
    source: str = ""
    extras: dict[str, float] = field(default_factory=dict)
    origin: str = field(default="completion", compare=False, repr=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.completion, list)


@dataclass(frozen=True)
class RankedExample:
    """K completions of one prompt with scores (higher is better). ``steps``: for completions given as
    lists of reasoning-step strings (TPO's adaptive step rewards), per completion the character offset
    where each step ends in the joined completion text; None when the completions are plain."""

    prompt: Text
    completions: tuple[Text, ...]
    scores: tuple[float, ...]
    row: int = -1
    source: str = ""
    extras: dict[str, float] = field(default_factory=dict)
    steps: tuple[tuple[int, ...], ...] | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.completions[0], list)


Example = Union[PairExample, UnpairedExample, RankedExample]


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    row: int = -1
    extras: dict[str, float] = field(default_factory=dict)
    truncated: bool = False


@dataclass
class TokenizedUnpaired:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    row: int = -1
    extras: dict[str, float] = field(default_factory=dict)
    truncated: bool = False


@dataclass
class TokenizedRanked:
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    scores: list[float]
    row: int = -1
    extras: dict[str, float] = field(default_factory=dict)
    truncated: bool = False
    step_ids: list[list[int]] | None = None  # per completion token: its reasoning step (0, 1, ...); None: no steps


@dataclass
class SequenceBatch:
    """What the model sees, plus where each sequence's response tokens are.

    ``attention_mask`` is either a 2D ``[R, T]`` padding mask (1 = real token) or a 4D
    ``[R, 1, T, T]`` boolean mask (True = may attend) for block layouts; ``position_ids``
    is ``[R, T]`` or None (then positions are 0..T-1).
    ``kind`` names the :class:`preftune.kinds.DataKind` that made the batch, which says how sequences
    group (pairs: S = 2B, chosen then rejected; unpaired: S = B; lists: S = B*K, row-major by example).
    ``rows`` holds one row id per example.
    ``extras`` holds per-example float tensors ``[B]`` (score_chosen, margin, weight, label, ...).
    """

    input_ids: Tensor
    attention_mask: Tensor
    seq_row: Tensor
    seq_mask: Tensor
    position_ids: Tensor | None = None
    kind: str = "pair"
    extras: dict[str, Tensor] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)
    list_size: int = 0

    @property
    def num_sequences(self) -> int:
        return int(self.seq_row.shape[0])

    @property
    def num_examples(self) -> int:
        """Examples in the batch: one row id each (every collator records them)."""
        return len(self.rows)

    def by_example(self, x: Tensor) -> Tensor:
        """``[S, ...]`` per-sequence values -> ``[B, K, ...]`` per example (the data kind knows the order)."""
        from ..kinds import get_kind

        return get_kind(self.kind).by_example(x, self.num_examples)

    def by_sequence(self, x: Tensor) -> Tensor:
        """``[B, K, ...]`` -> ``[S, ...]`` in this batch's sequence order."""
        from ..kinds import get_kind

        return get_kind(self.kind).by_sequence(x)

    def response_tokens(self) -> int:
        return int(self.seq_mask.sum())

    def to(self, device: torch.device | str) -> "SequenceBatch":
        def mv(x: Any) -> Any:
            return x.to(device) if isinstance(x, Tensor) else x
        return SequenceBatch(mv(self.input_ids), mv(self.attention_mask), mv(self.seq_row), mv(self.seq_mask),
                             mv(self.position_ids), self.kind, {k: mv(v) for k, v in self.extras.items()},
                             list(self.rows), self.list_size)
