"""RankList (P22): a listwise generalisation of RankNet with a log-sum-exp form and skip-wise comparisons,
plus the two losses it is compared with (RankNet, ListNet) and NDCG@k.

Scores and relevance labels are ``[Q, n]`` (queries x candidates), as torch's own losses take them; higher
relevance is better; ``mask`` (``[Q, n]`` bool) marks real candidates in padded lists.

Source: P22, Naini, Diaz, Busso, "RankList -- A Listwise Preference Learning Framework for Predicting Subjective
Preferences" (arXiv 2508.09826). No public code found: searched GitHub (code search for "RankList listwise
preference", "skip-wise", the authors' names) and the paper pages; only the abstract was reachable offline, so
the equations below are our reading of it, not checked against the paper's numbered equations:

* RankNet's pair probability ``P(i > j) = sigmoid(s_i - s_j)``; RankList asks each item to beat *every* item
  ranked below it within a window: ``P_i = prod_{j in W(i)} sigmoid(s_i - s_j)``, where ``W(i)`` are the items
  at most ``max_skip`` positions below ``i`` (in the order by relevance) with strictly lower relevance. The
  exact loss is ``-sum_i log P_i = sum_i sum_{j in W(i)} softplus(s_j - s_i)``.
* The log-sum-exp approximation replaces the product by one smooth maximum over the window:
  ``-log P_i ~= log(1 + sum_{j in W(i)} exp(s_j - s_i))`` -- one log-sum-exp per item instead of ``|W(i)|``
  softplus terms; with ``max_skip = n - 1`` it equals ListMLE's Plackett-Luce term.
* Skip-wise comparisons: ``max_skip = 1`` compares neighbours only (local constraints); larger skips add the
  non-local ones. :func:`progressive_skip` grows the window over training ("progressive exposure").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

_REDUCTIONS = ("mean", "sum", "none")


def _check(scores: Tensor, labels: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ConfigError(f"scores and labels must both be [queries, candidates]; got {tuple(scores.shape)} "
                          f"and {tuple(labels.shape)}")
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ConfigError(f"mask must have the shape of scores {tuple(scores.shape)}; got {tuple(mask.shape)}")
    return mask.bool()


def _reduce(per_query: Tensor, reduction: str) -> Tensor:
    return per_query.mean() if reduction == "mean" else per_query.sum() if reduction == "sum" else per_query


def ranklist_loss(scores: Tensor, labels: Tensor, *, max_skip: int | None = None, approx: str = "lse",
                  mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """RankList loss per list (P22; see the module docstring for the equations).

    ``approx="lse"``: ``sum_i log(1 + sum_{j in W(i)} exp(s_j - s_i))`` (the log-sum-exp form);
    ``approx="exact"``: ``sum_i sum_{j in W(i)} softplus(s_j - s_i)`` (the product of RankNet probabilities).
    ``max_skip``: how many positions below ``i`` (in the order by relevance) ``W(i)`` reaches; ``None`` = the
    whole list. Returns ``[Q]`` with ``reduction="none"``.
    """
    m = _check(scores, labels, mask, reduction)
    n = scores.shape[1]
    if max_skip is None:
        max_skip = max(n - 1, 1)
    if not isinstance(max_skip, int) or max_skip < 1:
        raise ConfigError(f"max_skip must be an integer >= 1 (1 = neighbours only); got {max_skip!r}")
    if approx not in ("lse", "exact"):
        raise ConfigError(f"approx must be 'lse' (log-sum-exp) or 'exact' (product of pair sigmoids); got {approx!r}")
    # order by relevance (padding last); ties keep input order, and tied items are never compared below
    key = labels.float().masked_fill(~m, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    s, rel, v = scores.gather(1, order), labels.float().gather(1, order), m.gather(1, order)
    pos = torch.arange(n, device=scores.device)
    gap = pos[None, :] - pos[:, None]                      # [i, j]: j - i
    pair = (gap >= 1) & (gap <= max_skip)
    pair = pair[None] & (rel[:, :, None] > rel[:, None, :]) & v[:, :, None] & v[:, None, :]
    diff = s[:, None, :] - s[:, :, None]                   # [q, i, j] = s_j - s_i
    if approx == "exact":
        per_query = torch.where(pair, F.softplus(diff), torch.zeros_like(diff)).sum((1, 2))
    else:
        # a zero column inside the log-sum-exp gives log(1 + sum exp(.)) and keeps empty windows at 0 (no NaN)
        d = diff.masked_fill(~pair, float("-inf"))
        d = torch.cat([torch.zeros_like(d[..., :1]), d], dim=-1)
        per_query = torch.logsumexp(d, dim=-1).sum(1)
    return _reduce(per_query, reduction)


def progressive_skip(step: int, total_steps: int, list_size: int, *, start: int = 1) -> int:
    """Skip window for training step ``step`` of ``total_steps``: grows linearly from ``start`` (local
    comparisons) to ``list_size - 1`` (all comparisons), the curriculum of P22's skip-wise extension."""
    if total_steps < 1 or not 0 <= step:
        raise ConfigError(f"need total_steps >= 1 and step >= 0; got step={step}, total_steps={total_steps}")
    if list_size < 2 or not 1 <= start <= list_size - 1:
        raise ConfigError(f"need list_size >= 2 and 1 <= start <= list_size - 1; got {list_size}, {start}")
    frac = min(step / max(total_steps - 1, 1), 1.0)
    return start + int(round(frac * (list_size - 1 - start)))


def ranknet_loss(scores: Tensor, labels: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """RankNet (Burges et al. 2005), the baseline: mean over pairs with ``rel_i > rel_j`` of
    ``softplus(s_j - s_i) = -log sigmoid(s_i - s_j)``, per list."""
    m = _check(scores, labels, mask, reduction)
    rel = labels.float()
    pair = (rel[:, :, None] > rel[:, None, :]) & m[:, :, None] & m[:, None, :]
    diff = scores[:, None, :] - scores[:, :, None]
    tot = torch.where(pair, F.softplus(diff), torch.zeros_like(diff)).sum((1, 2))
    return _reduce(tot / pair.sum((1, 2)).clamp(min=1), reduction)


def listnet_loss(scores: Tensor, labels: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """ListNet top-one (Cao et al. 2007), the baseline: ``-sum_j softmax(rel)_j log softmax(s)_j``."""
    m = _check(scores, labels, mask, reduction)
    target = torch.softmax(labels.to(scores.dtype).masked_fill(~m, float("-inf")), dim=1)
    logp = torch.log_softmax(scores.masked_fill(~m, float("-inf")), dim=1)
    per_query = -(target * logp.masked_fill(~m, 0.0)).sum(1)
    return _reduce(per_query, reduction)


def ndcg_at_k(scores: Tensor, labels: Tensor, k: int | None = None, *, mask: Tensor | None = None) -> Tensor:
    """NDCG@k per list ``[Q]`` with gain ``2^rel - 1`` and discount ``1 / log2(1 + rank)``; lists with no
    relevant item score 1 (nothing to get wrong). Ties in ``scores`` are broken by input order."""
    m = _check(scores, labels, mask, "none")
    n = scores.shape[1]
    k = n if k is None else k
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}")
    gain = torch.where(m, 2.0 ** labels.float() - 1.0, torch.zeros_like(scores, dtype=torch.float))
    disc = 1.0 / torch.log2(torch.arange(n, device=scores.device, dtype=torch.float) + 2.0)
    disc = torch.where(torch.arange(n, device=scores.device) < k, disc, torch.zeros_like(disc))
    pred = torch.sort(scores.detach().float().masked_fill(~m, float("-inf")), dim=1, descending=True,
                      stable=True).indices
    dcg = (gain.gather(1, pred) * disc).sum(1)
    ideal = (torch.sort(gain, dim=1, descending=True).values * disc).sum(1)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=math.ulp(1.0)), torch.ones_like(dcg))
