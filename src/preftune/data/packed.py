"""The packed layout: no padding between sequences; rows filled back to back.

Units (for pairs: a prompt with both responses, prefix-shared as in
:mod:`preftune.data.prefix_shared`, or one prompt + response per unit when
``share_prompt=False``; for ranked lists: a prompt with its K completions) are binned first-fit-decreasing into rows of at most
``max_row_tokens`` tokens (default: the longest unit, so attention, whose cost grows with the
square of the row length, does no more work than in the prefix-shared layout). Positions
restart in every unit and a block-diagonal causal mask keeps units apart, so every sequence
gets the same log-probs as in the padded layout. Padding only fills the tail of short rows.

On CPU, SDPA has no variable-length kernel that skips masked blocks; with one (flash-attn
varlen on GPU) a single row would do. Here, several rows of the longest unit's length are
the cheaper choice.
"""
from __future__ import annotations

from typing import Sequence

from .collate import _extras
from .prefix_shared import Unit, pair_units, ranked_batch, ranked_units, unit_length, units_to_rows
from .types import PAIR_EXTRA_FIELDS, SequenceBatch, TokenizedPair, TokenizedRanked, TokenizedUnpaired


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bins of indices whose lengths sum to at most ``capacity``
    (an item longer than ``capacity`` gets a row alone). Rows keep their items in index order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def _pack(units: list[Unit], num_sequences: int, pad_id: int, max_row_tokens: int | None,
          pad_to_multiple_of: int | None):
    lengths = [unit_length(u) for u in units]
    capacity = max(max(lengths, default=0), max_row_tokens or 0)
    return units_to_rows(units, pack_rows(lengths, capacity), num_sequences, pad_id, pad_to_multiple_of)


def collate_pairs_packed(examples: Sequence[TokenizedPair], pad_id: int, *, max_row_tokens: int | None = None,
                         share_prompt: bool = True, pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Pairs packed into as few rows as fit ``max_row_tokens`` (default: the longest pair)."""
    ids, mask, pos, seq_row, seq_mask = _pack(pair_units(examples, share_prompt), 2 * len(examples), pad_id,
                                              max_row_tokens, pad_to_multiple_of)
    return SequenceBatch(ids, mask, seq_row, seq_mask, pos, "pair",
                         _extras(examples, PAIR_EXTRA_FIELDS), [e.row for e in examples])


def collate_unpaired_packed(examples: Sequence[TokenizedUnpaired], pad_id: int, *,
                            max_row_tokens: int | None = None,
                            pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Unpaired examples (prompt + completion each) packed back to back."""
    import torch

    units = [(e.prompt_ids, [(i, e.completion_ids)]) for i, e in enumerate(examples)]
    ids, mask, pos, seq_row, seq_mask = _pack(units, len(examples), pad_id, max_row_tokens, pad_to_multiple_of)
    extras = _extras(examples, ("weight", "density_ratio"))
    extras["label"] = torch.tensor([float(e.label) for e in examples])
    return SequenceBatch(ids, mask, seq_row, seq_mask, pos, "unpaired", extras, [e.row for e in examples])


def collate_ranked_packed(examples: Sequence[TokenizedRanked], pad_id: int, *, max_row_tokens: int | None = None,
                          pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Ranked lists (a prompt with its K completions, prefix-shared) packed into as few rows as fit
    ``max_row_tokens`` (default: the longest list)."""
    units, K, scores, valid = ranked_units(examples)
    return ranked_batch(examples, _pack(units, len(examples) * K, pad_id, max_row_tokens, pad_to_multiple_of), K,
                        scores, valid)
