"""The Mann-Whitney (AUC) loss for dual-encoder retrievers (P43, "MW loss"), and the threshold-free diagnostics
the paper promotes: ROC AUC (the Mann-Whitney U statistic) and, for calibration, expected calibration error.

Source: P43, Sheikholeslami et al., "Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval"
(arXiv 2510.00137). No public code found: searched GitHub code for "MW loss", "Mann-Whitney" + retriever,
the authors' names. Written from the paper's abstract and Fig. 2 description: the loss is binary
cross-entropy over positive-minus-negative score differences,

    L_MW = 1/|P||N| sum_{p in P} sum_{n in N} -log sigmoid((s_p - s_n) / T),

an upper bound (up to 1/log 2) of the area over the ROC curve, ``1 - AUC = 1/|P||N| sum 1[s_p <= s_n]``.
``scope="global"`` (default) pairs every positive (query, document) score in the batch with every negative one
-- the many extra comparisons of P43's Fig. 2 at no extra similarity cost, and what makes one threshold work
across queries; ``scope="query"`` pairs only within each query (a per-query AUC surrogate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def mw_loss(scores: Tensor, labels: Tensor, *, temperature: float = 1.0, scope: str = "global",
            mask: Tensor | None = None) -> Tensor:
    """MW loss (P43; equation in the module docstring). ``scores`` ``[Q, C]`` similarities of queries and
    candidates (e.g. the in-batch matrix ``q @ d.T``); ``labels`` ``[Q, C]`` with 1 = relevant, 0 = not."""
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ConfigError(f"scores and labels must both be [queries, candidates]; got {tuple(scores.shape)} "
                          f"and {tuple(labels.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    if scope not in ("global", "query"):
        raise ConfigError(f"scope must be 'global' (all pairs in the batch) or 'query' (within a query); got {scope!r}")
    m = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.bool()
    pos, neg = (labels > 0) & m, (labels <= 0) & m
    if scope == "global":
        sp, sn = scores[pos], scores[neg]
        if sp.numel() == 0 or sn.numel() == 0:
            raise ConfigError("the MW loss needs at least one positive and one negative in the batch")
        return F.softplus(-(sp[:, None] - sn[None, :]) / temperature).mean()
    pair = pos[:, :, None] & neg[:, None, :]               # [q, p, n]
    if not pair.any():
        raise ConfigError("the MW loss needs a query with at least one positive and one negative")
    diff = (scores[:, :, None] - scores[:, None, :]) / temperature
    return F.softplus(-diff)[pair].mean()


def roc_auc(scores: Tensor, labels: Tensor) -> Tensor:
    """ROC AUC = Mann-Whitney ``U / (|P||N|)`` over all entries (ties count 1/2), from average ranks: O(n log n)."""
    s, y = scores.detach().flatten().double(), labels.detach().flatten() > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("AUC needs at least one positive and one negative")
    sorted_s, order = torch.sort(s)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts                  # 0-based first rank of each tie group
    avg_rank = (first + (counts + 1) / 2.0).double()          # 1-based average rank
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Binary ECE: ``sum_b |B_b|/n * |mean(y in B_b) - mean(p in B_b)|`` over ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1; got {n_bins}")
    p, y = probs.detach().flatten().double(), (labels.detach().flatten() > 0).double()
    if p.numel() == 0 or (p < 0).any() or (p > 1).any():
        raise ConfigError("probs must be a non-empty tensor of values in [0, 1]")
    b = (p * n_bins).long().clamp(max=n_bins - 1)
    conf = torch.zeros(n_bins, dtype=torch.double).index_add_(0, b, p)
    acc = torch.zeros(n_bins, dtype=torch.double).index_add_(0, b, y)
    return ((acc - conf).abs() / p.numel()).sum()
