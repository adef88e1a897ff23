"""Shared plumbing of the diagnostics: data in, batches out, pair log-probs as float64 arrays,
statistics. The model helpers they use (batches, pair log-probs, decoder hidden states, the LM
head, eval mode) are :mod:`preftune.models`' own, imported here under the diagnostics' names."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.types import PairExample, SequenceBatch, TokenizedPair
from ..models import scoring
from ..models.generate import pad_id_of
from ..models.hidden import decoder_hidden
from ..models.logprobs import head_fn, label_positions
from ..models.scoring import eval_mode, is_reference_source, model_device
from ..models.scoring import pair_batches as batches


def as_pairs(data: Sequence[Any], tokenizer: Any = None, *, max_length: int | None = 1024,
             max_prompt_length: int | None = 512) -> list[TokenizedPair]:
    """``data`` as a list of :class:`TokenizedPair`: tokenized pairs pass through; typed
    :class:`PairExample` objects are tokenized with ``preftune.data.tokenize_examples``."""
    items = list(data)
    if not items:
        raise ValueError("no pairs to diagnose: the data is empty")
    if all(isinstance(x, TokenizedPair) for x in items):
        return items
    if all(isinstance(x, PairExample) for x in items):
        if tokenizer is None:
            raise ValueError("PairExample data needs a tokenizer (tokenizer=...) to be tokenized")
        from ..data import tokenize_examples  # written by the data owner

        return list(tokenize_examples(items, tokenizer, max_length=max_length,
                                      max_prompt_length=max_prompt_length).items)
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"diagnostics take TokenizedPair or PairExample items, got {', '.join(kinds)}")


def pair_logps(model_or_source: Any, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
               device: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`preftune.models.scoring.pair_logps` as float64 arrays (chosen sums, rejected sums,
    chosen lengths, rejected lengths), or None when the source gives none (reference-free)."""
    lp = scoring.pair_logps(model_or_source, pairs, pad_id, batch_size, device)
    return None if lp is None else tuple(x.double().numpy() for x in lp)  # type: ignore[return-value]


def predictor_mask(batch: SequenceBatch) -> Tensor:
    """``[S, T]`` bool: True at position ``t-1`` when token ``t`` is a response label of sequence
    ``s`` -- the positions whose hidden state predicts a response token. Position 0 is never a
    label (no context), as in :func:`preftune.models.logprobs.label_positions`."""
    m = batch.seq_mask.clone()
    m[:, 0] = False
    out = torch.zeros_like(m)
    out[:, :-1] = m[:, 1:]
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or fewer than 3 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return pearson(_rank(x[ok]), _rank(y[ok]))


def _rank(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(a.size, dtype=np.float64)
    for v in np.unique(a):  # average ties
        idx = a == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return ranks


def floats(x: Any) -> list[float]:
    """A per-pair array as a JSON-friendly list (NaN -> None)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, dtype=np.float64).ravel()]


def mean(x: Any) -> float | None:
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


__all__ = ["as_pairs", "batches", "decoder_hidden", "eval_mode", "floats", "head_fn", "is_reference_source",
           "label_positions", "mean", "model_device", "pad_id_of", "pair_logps", "pearson", "predictor_mask",
           "spearman"]
