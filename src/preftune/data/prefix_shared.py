"""The prefix-shared layout: each prompt once, its responses after it in the same row.

A pair becomes one row ``prompt + chosen + rejected``; a ranked list (or an online group of K samples) one row
``prompt + completion_1 + ... + completion_K``. A 4D boolean mask lets the chosen
tokens attend causally to the prompt and to themselves, and the rejected tokens to the
prompt and to themselves, never to the chosen ones; the rejected positions restart at
``len(prompt)``. Each response therefore sees exactly the context it has in the padded
layout, while the prompt is encoded once instead of twice.

The builder here (``units_to_rows``) is shared with the packed layout: a *unit* is one
prompt with one or more responses; a row holds one or more units back to back.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .collate import _extras, ranked_extras, ranked_lists
from .types import PAIR_EXTRA_FIELDS, SequenceBatch, TokenizedPair, TokenizedRanked

# A unit: (prompt ids, [(sequence index, response ids), ...]).
Unit = tuple[list[int], list[tuple[int, list[int]]]]


def unit_length(unit: Unit) -> int:
    return len(unit[0]) + sum(len(r) for _, r in unit[1])


def block_mask(doc: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """``[R, 1, T, T]`` bool mask from per-token unit ids ``doc`` and segment ids ``seg``
    (0 = the unit's prompt, k > 0 = its k-th response): query q may attend key k iff
    ``k <= q``, both lie in the same unit, and k is in the prompt or in q's own segment.

    Padding carries ``doc = -1`` and attends causally within the padding, so that no query
    row is fully masked (a fully masked row gives NaN in SDPA, and NaN * 0 = NaN in the
    weight gradients)."""
    T = doc.shape[-1]
    idx = torch.arange(T, device=doc.device)
    causal = idx.view(1, T) <= idx.view(T, 1)                       # [q, k]
    same_doc = doc.unsqueeze(-1) == doc.unsqueeze(-2)               # [R, q, k]
    seg_k = seg.unsqueeze(-2)
    visible = (seg_k == 0) | (seg.unsqueeze(-1) == seg_k)
    return (causal & same_doc & visible).unsqueeze(1)


def units_to_rows(units: Sequence[Unit], rows: Sequence[Sequence[int]], num_sequences: int, pad_id: int,
                  pad_to_multiple_of: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out ``units`` as ``rows`` (lists of unit indices). Returns input_ids ``[R, T]``,
    the 4D mask, position_ids ``[R, T]``, seq_row ``[S]`` and seq_mask ``[S, T]``."""
    fill = [sum(unit_length(units[u]) for u in row) for row in rows]
    T = max(fill) if fill else 0
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    R = len(rows)
    ids = torch.full((R, T), pad_id, dtype=torch.long)
    pos = torch.zeros((R, T), dtype=torch.long)
    doc = torch.full((R, T), -1, dtype=torch.long)
    seg = torch.ones((R, T), dtype=torch.long)
    seq_row = torch.zeros(num_sequences, dtype=torch.long)
    spans: list[tuple[int, int, int]] = [(0, 0, 0)] * num_sequences
    for r, row in enumerate(rows):
        t = 0
        for u in row:
            prompt, responses = units[u]
            P = len(prompt)
            ids[r, t:t + P] = torch.tensor(prompt, dtype=torch.long)
            pos[r, t:t + P] = torch.arange(P)
            doc[r, t:t + P] = u
            seg[r, t:t + P] = 0
            t += P
            for k, (s, resp) in enumerate(responses, start=1):
                n = len(resp)
                ids[r, t:t + n] = torch.tensor(resp, dtype=torch.long)
                pos[r, t:t + n] = torch.arange(P, P + n)
                doc[r, t:t + n] = u
                seg[r, t:t + n] = k
                seq_row[s] = r
                spans[s] = (r, t, t + n)
                t += n
    seq_mask = torch.zeros((num_sequences, T), dtype=torch.bool)
    for s, (_, a, b) in enumerate(spans):
        seq_mask[s, a:b] = True
    return ids, block_mask(doc, seg), pos, seq_row, seq_mask


def pair_units(examples: Sequence[TokenizedPair], share_prompt: bool = True) -> list[Unit]:
    """Units for pairs: sequence ``i`` is example i's chosen, ``B + i`` its rejected response."""
    B = len(examples)
    if share_prompt:
        return [(e.prompt_ids, [(i, e.chosen_ids), (B + i, e.rejected_ids)]) for i, e in enumerate(examples)]
    return ([(e.prompt_ids, [(i, e.chosen_ids)]) for i, e in enumerate(examples)]
            + [(e.prompt_ids, [(B + i, e.rejected_ids)]) for i, e in enumerate(examples)])


def collate_pairs_prefix_shared(examples: Sequence[TokenizedPair], pad_id: int,
                                pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """One row per pair, ``prompt + chosen + rejected``; see the module docstring."""
    units = pair_units(examples)
    ids, mask, pos, seq_row, seq_mask = units_to_rows(units, [[i] for i in range(len(units))],
                                                      2 * len(examples), pad_id, pad_to_multiple_of)
    return SequenceBatch(ids, mask, seq_row, seq_mask, pos, "pair",
                         _extras(examples, PAIR_EXTRA_FIELDS), [e.row for e in examples])


def ranked_units(examples: Sequence[TokenizedRanked]) -> tuple[list[Unit], int, list[float], list[bool]]:
    """One unit per list, its prompt once and its K completions after it (sequence ``b * K + k``, example-major as
    in the padded layout; lists shorter than the longest get empty entries, ``valid`` False)."""
    K, responses, scores, valid = ranked_lists(examples)
    units = [(e.prompt_ids, [(b * K + k, responses[b * K + k]) for k in range(K)]) for b, e in enumerate(examples)]
    return units, K, scores, valid


def ranked_batch(examples: Sequence[TokenizedRanked], units_rows: tuple, K: int, scores: list[float],
                 valid: list[bool]) -> SequenceBatch:
    ids, mask, pos, seq_row, seq_mask = units_rows
    return SequenceBatch(ids, mask, seq_row, seq_mask, pos, "list", ranked_extras(examples, K, scores, valid, seq_mask),
                         [e.row for e in examples], list_size=K)


def collate_ranked_prefix_shared(examples: Sequence[TokenizedRanked], pad_id: int,
                                 pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """One row per list, ``prompt + completion_1 + ... + completion_K``: the prompt is computed once, not K times."""
    units, K, scores, valid = ranked_units(examples)
    rows = units_to_rows(units, [[i] for i in range(len(units))], len(examples) * K, pad_id, pad_to_multiple_of)
    return ranked_batch(examples, rows, K, scores, valid)
