"""GroCo: group ordering loss through a differentiable sorting network (P68).

Implements P68 (Shvetsova et al., "Learning by Sorting: Self-supervised Learning with Group Ordering
Constraints", ICCV 2023), sec. 3: for each query, the scores of its P positives and its k hardest negatives
are pre-ordered (negatives ascending, then positives ascending) and sorted by a monotonic differentiable
sorting network (odd-even transposition network with the Cauchy relaxation of Petersen et al. 2022). The
network returns a doubly-stochastic matrix ``Q[i, j]`` = weight of input i at sorted (ascending) position j.
The group constraint asks every negative to land in the bottom k positions and every positive in the top P:

    q_neg(i) = sum_{j < k} Q[i, j],   q_pos(i) = sum_{j >= k} Q[i, j] = 1 - q_neg(i)
    L = 1/2 [ BCE(q_pos, 1[i is positive]) + BCE(q_neg, 1[i is negative]) ]   (mean over queries and inputs)

Only positives ranked below a negative (groups out of order) cost much; the order *inside* a group is free.

Verified against: ninatu/learning_by_sorting, learning_by_sorting/losses/groco.py, ``GroCo.compute_loss``,
commit 108f50181fef2b1b6719eada7d27bc854c31d6a0 (defaults there: odd-even network, Cauchy interpolation,
steepness 1, topk_neg 10). The authors call the ``diffsort`` package; the sorting network here is preftune's
own torch implementation of the same network (``odd_even`` layers, Cauchy swap probability
``alpha = 1/2 + atan(steepness * (b - a)) / pi``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def diff_sort(x: Tensor, steepness: float = 1.0) -> tuple[Tensor, Tensor]:
    """Differentiable ascending sort of the rows of ``x`` [B, n] (odd-even transposition network, n layers).

    Each comparator on positions (j, j+1) with values a, b uses the Cauchy swap weight
    ``alpha = 1/2 + atan(steepness (b - a)) / pi``: ``min = alpha a + (1 - alpha) b``,
    ``max = (1 - alpha) a + alpha b``. Returns ``(sorted [B, n], Q [B, n, n])`` with ``Q[b, i, j]`` the weight of
    input i at output position j (columns and rows sum to 1); ``x @ Q`` reproduces the relaxed sorted values.
    """
    if steepness <= 0:
        raise ConfigError(f"diff_sort: steepness must be > 0, got {steepness}")
    B, n = x.shape
    v = x
    Q = torch.eye(n, dtype=x.dtype, device=x.device).expand(B, n, n)
    for layer in range(n):
        lo = torch.arange(layer % 2, n - 1, 2, device=x.device)
        if lo.numel() == 0:
            continue
        hi = lo + 1
        a, b = v[:, lo], v[:, hi]
        alpha = 0.5 + torch.atan(steepness * (b - a)) / math.pi
        v = v.clone()
        v[:, lo] = alpha * a + (1 - alpha) * b
        v[:, hi] = (1 - alpha) * a + alpha * b
        qa, qb = Q[:, :, lo], Q[:, :, hi]
        al = alpha.unsqueeze(1)
        Q = Q.clone()
        Q[:, :, lo] = al * qa + (1 - al) * qb
        Q[:, :, hi] = (1 - al) * qa + al * qb
    return v, Q


def groco_loss(scores: Tensor, labels: Tensor, *, steepness: float = 1.0, topk_neg: int | None = 10) -> Tensor:
    """GroCo loss (P68 sec. 3) on ``scores`` [Q, C] (higher = more relevant) and binary ``labels`` [Q, C].

    Every row must hold the same number P >= 1 of positives and at least ``topk_neg`` negatives (all negatives
    when ``topk_neg`` is None). Returns the scalar mean loss, which falls towards 0 as the margin between the
    lowest positive and the highest negative grows (slowly: the Cauchy relaxation has heavy tails).
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ConfigError(f"groco: scores and labels must both be [queries, candidates], got "
                          f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    pos_mask = labels > 0
    n_pos = pos_mask.sum(-1)
    if (n_pos != n_pos[0]).any() or int(n_pos[0]) < 1:
        raise ConfigError("groco: every query needs the same number (>= 1) of positive candidates")
    P = int(n_pos[0])
    n_neg = scores.shape[1] - P
    k = n_neg if topk_neg is None else int(topk_neg)
    if k < 1 or k > n_neg:
        raise ConfigError(f"groco: topk_neg must be in [1, {n_neg}] (negatives per query), got {topk_neg}")
    neg_inf = torch.finfo(scores.dtype).min
    # pre-ordering (P68 sec. 3.2): the k hardest negatives and all positives, each group ascending
    pos = scores.masked_fill(~pos_mask, neg_inf).topk(P, dim=-1).values.flip(-1)
    neg = scores.masked_fill(pos_mask, neg_inf).topk(k, dim=-1).values.flip(-1)
    x = torch.cat([neg, pos], dim=-1)
    _, Q = diff_sort(x, steepness)
    q_neg = Q[:, :, :k].sum(-1).clamp(0, 1)  # numerical drift can push sums a hair past 1
    q_pos = Q[:, :, k:].sum(-1).clamp(0, 1)
    is_neg = torch.zeros_like(q_neg)
    is_neg[:, :k] = 1.0
    return 0.5 * (F.binary_cross_entropy(q_pos, 1 - is_neg) + F.binary_cross_entropy(q_neg, is_neg))


class GroCoLoss(nn.Module):
    """``nn.Module`` form of :func:`groco_loss` (P68): ``GroCoLoss(steepness, topk_neg)(scores, labels)``."""

    def __init__(self, steepness: float = 1.0, topk_neg: int | None = 10):
        super().__init__()
        if steepness <= 0:
            raise ConfigError(f"groco: steepness must be > 0, got {steepness}")
        if topk_neg is not None and topk_neg < 1:
            raise ConfigError(f"groco: topk_neg must be >= 1 or None, got {topk_neg}")
        self.steepness, self.topk_neg = float(steepness), topk_neg

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        return groco_loss(scores, labels, steepness=self.steepness, topk_neg=self.topk_neg)
