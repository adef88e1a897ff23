"""The padded layout: every sequence in its own right-padded row (TRL's layout).

Pairs give ``2B`` rows, chosen rows first then rejected rows; unpaired examples ``B`` rows;
ranked lists ``B*K`` rows. Other layouts (prefix-shared, packed) live in their own modules
and must give the same per-sequence log-probs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .types import (PAIR_EXTRA_FIELDS, SequenceBatch, TokenizedPair, TokenizedRanked, TokenizedUnpaired)


def _pad_rows(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
              pad_to_multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    T = max(lengths) if lengths else 0
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    n = len(lengths)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    attn = torch.zeros((n, T), dtype=torch.long)
    resp = torch.zeros((n, T), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        L = len(p) + len(r)
        ids[i, :L] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :L] = 1
        resp[i, len(p):L] = True
    return ids, attn, resp


def _extras(examples: Sequence, names: Sequence[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        vals = [ex.extras.get(name) for ex in examples]
        if all(v is not None for v in vals):
            out[name] = torch.tensor(vals, dtype=torch.float32)
        elif any(v is not None for v in vals):
            missing = [ex.row for ex, v in zip(examples, vals) if v is None]
            raise ValueError(f"column '{name}' is present in some rows but missing in rows {missing[:5]}")
    return out


def collate_pairs(examples: Sequence[TokenizedPair], pad_id: int,
                  pad_to_multiple_of: int | None = None) -> SequenceBatch:
    prompts = [e.prompt_ids for e in examples] * 2
    responses = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    ids, attn, resp = _pad_rows(prompts, responses, pad_id, pad_to_multiple_of)
    return SequenceBatch(ids, attn, torch.arange(ids.shape[0]), resp, None, "pair",
                         _extras(examples, PAIR_EXTRA_FIELDS), [e.row for e in examples])


def collate_unpaired(examples: Sequence[TokenizedUnpaired], pad_id: int,
                     pad_to_multiple_of: int | None = None) -> SequenceBatch:
    ids, attn, resp = _pad_rows([e.prompt_ids for e in examples], [e.completion_ids for e in examples],
                                pad_id, pad_to_multiple_of)
    extras = _extras(examples, ("weight", "density_ratio"))
    extras["label"] = torch.tensor([float(e.label) for e in examples])
    return SequenceBatch(ids, attn, torch.arange(ids.shape[0]), resp, None, "unpaired", extras,
                         [e.row for e in examples])


def ranked_lists(examples: Sequence[TokenizedRanked]) -> tuple[int, list[list[int]], list[float], list[bool]]:
    """Lists padded to the longest with empty entries: ``(K, responses, scores, valid)``, example-major
    (sequence ``b * K + k`` is completion k of example b)."""
    K = max(len(e.completion_ids) for e in examples)
    responses, scores, valid = [], [], []
    for e in examples:
        for k in range(K):
            ok = k < len(e.completion_ids)
            responses.append(e.completion_ids[k] if ok else [])
            scores.append(e.scores[k] if ok else 0.0)
            valid.append(ok)
    return K, responses, scores, valid


def ranked_extras(examples: Sequence[TokenizedRanked], K: int, scores: list[float], valid: list[bool],
                  seq_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A list batch's extras, whatever the layout: ``scores`` and ``valid`` ``[B, K]``, ``weight``, and, when
    completions come as reasoning steps, ``step_ids`` ``[B*K, T]``: each response token's step at the positions
    ``seq_mask`` gives the sequence, -1 elsewhere."""
    extras = _extras(examples, ("weight",))
    extras["scores"] = torch.tensor(scores, dtype=torch.float32).view(len(examples), K)
    extras["valid"] = torch.tensor(valid).view(len(examples), K)
    if examples and all(getattr(e, "step_ids", None) is not None for e in examples):
        steps = torch.full(seq_mask.shape, -1, dtype=torch.long)
        for i, e in enumerate(examples):
            for k, sid in enumerate(e.step_ids):
                where = seq_mask[i * K + k].nonzero().squeeze(-1)
                steps[i * K + k, where] = torch.tensor(sid, dtype=torch.long)[:len(where)]
        extras["step_ids"] = steps
    return extras


def collate_ranked(examples: Sequence[TokenizedRanked], pad_id: int,
                   pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Lists are padded to the longest list with empty entries, masked by ``extras['valid']``. Completions
    given as reasoning steps add ``extras['step_ids']`` ``[B*K, T]``: each response token's step, -1 elsewhere."""
    K, responses, scores, valid = ranked_lists(examples)
    prompts = [e.prompt_ids for e in examples for _ in range(K)]
    ids, attn, resp = _pad_rows(prompts, responses, pad_id, pad_to_multiple_of)
    return SequenceBatch(ids, attn, torch.arange(ids.shape[0]), resp, None, "list",
                         ranked_extras(examples, K, scores, valid, resp),
                         [e.row for e in examples], list_size=K)
