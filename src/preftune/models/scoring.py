"""Scoring responses without gradients: summed response log-probs of ``(prompt, response)``
token lists and of preference pairs, in batches, from a model or a reference source.

Used by the arena (KL, ranking accuracy), the diagnostics and the online loops (generate ->
score -> pair). A *model* is put in eval mode while it is scored and its train/eval mode is
restored after; a *reference source* (anything with ``logps(batch, per_token=...)``, e.g.
:class:`preftune.reference.FrozenModel`) is asked as it is and may answer None (no reference).

:func:`eval_mode` and :func:`model_device` are the two model-state helpers that scoring and
:mod:`preftune.models.generate` share.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from ..data.collate import collate_pairs, collate_unpaired
from ..data.types import SequenceBatch, TokenizedPair, TokenizedUnpaired
from .logprobs import DEFAULT_CHUNK, SeqLogps, sequence_logps


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless object)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """Dropout off while measuring; each model's train/eval state is restored afterwards.
    Arguments that are not ``torch.nn.Module`` (None, reference sources) are ignored."""
    mods = [m for m in models if isinstance(m, torch.nn.Module)]
    was = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(mods, was):
            m.train(w)


def is_reference_source(ref: Any) -> bool:
    """A ReferenceSource (``logps(batch, per_token=...)``) rather than a model."""
    return ref is not None and not isinstance(ref, torch.nn.Module) and callable(getattr(ref, "logps", None))


def batch_logps(model_or_source: Any, batch: SequenceBatch, device: Any = None, *,
                chunk_size: int = DEFAULT_CHUNK) -> SeqLogps | None:
    """Summed response log-probs of one batch, without gradients. A reference source gets the
    batch on ``device`` (e.g. the policy's; as it is when None), a model on its own device."""
    with torch.no_grad():
        if is_reference_source(model_or_source):
            return model_or_source.logps(batch.to(device) if device is not None else batch, per_token=False)
        return sequence_logps(model_or_source, batch.to(model_device(model_or_source)), chunk_size=chunk_size)


def pair_batches(pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int) -> Iterator[SequenceBatch]:
    """``pairs`` in padded pair batches of ``batch_size`` pairs (chosen rows, then rejected rows)."""
    for i in range(0, len(pairs), batch_size):
        yield collate_pairs(pairs[i:i + batch_size], pad_id)


def _score(model_or_source: Any, batches: Iterator[SequenceBatch], device: Any, chunk_size: int
           ) -> list[tuple[SequenceBatch, SeqLogps]] | None:
    out = []
    with eval_mode(model_or_source):
        for batch in batches:
            lp = batch_logps(model_or_source, batch, device, chunk_size=chunk_size)
            if lp is None:
                return None
            out.append((batch, lp))
    return out


def response_logps(model_or_source: Any, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int,
                   batch_size: int = 64, device: Any = None, chunk_size: int = DEFAULT_CHUNK) -> Tensor | None:
    """Summed log-prob ``[N]`` (float32, CPU) of each ``(prompt_ids, response_ids)`` response, one
    right-padded row per item, ``batch_size`` items per forward pass. None when a reference source
    gives no log-probs. An empty ``items`` gives an empty tensor."""
    def chunks() -> Iterator[SequenceBatch]:
        for s in range(0, len(items), batch_size):
            ex = [TokenizedUnpaired(list(p), list(r), True) for p, r in items[s:s + batch_size]]
            yield collate_unpaired(ex, pad_id)

    scored = _score(model_or_source, chunks(), device, chunk_size)
    if scored is None:
        return None
    return torch.cat([lp.sums.detach().cpu() for _, lp in scored]) if scored else torch.zeros(0)


class PairLogps(NamedTuple):
    """Per pair ``[N]`` (CPU): summed log-probs of the chosen and of the rejected response, and their
    token counts."""

    chosen: Tensor
    rejected: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor


def pair_logps(model_or_source: Any, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
               device: Any = None, *, chunk_size: int = DEFAULT_CHUNK) -> PairLogps | None:
    """Summed log-probs and lengths of the chosen and rejected responses of ``pairs``, in padded
    pair batches of ``batch_size`` pairs; None when a reference source gives none (reference-free)."""
    scored = _score(model_or_source, pair_batches(pairs, pad_id, batch_size), device, chunk_size)
    if scored is None:
        return None
    parts: list[list[Tensor]] = [[], [], [], []]
    for batch, lp in scored:
        B = batch.num_examples
        s, n = lp.sums.detach().cpu(), lp.lengths.detach().cpu()
        for acc, x in zip(parts, (s[:B], s[B:], n[:B], n[B:])):
            acc.append(x)
    if not parts[0]:
        empty = torch.zeros(0)
        return PairLogps(empty, empty, empty, empty)
    return PairLogps(*(torch.cat(p) for p in parts))


__all__ = ["PairLogps", "batch_logps", "eval_mode", "is_reference_source", "model_device", "pair_batches",
           "pair_logps", "response_logps"]
