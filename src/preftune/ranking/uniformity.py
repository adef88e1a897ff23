"""The behaviour of the contrastive loss (P27): the uniformity and tolerance of a representation, and the
hardness-aware weights the temperature puts on negatives -- the quantities of P27's uniformity-tolerance
dilemma. The temperature sweep itself is in ``benchmarks/ranking/part1.py --method uniformity``.

Source: P27, Wang & Liu, "Understanding the Behaviour of Contrastive Loss" (CVPR 2021, arXiv 2012.09740).
No public code from the authors found: searched GitHub code for "uniformity tolerance contrastive", the
title, the authors' names (only third-party re-implementations turned up). Definitions as stated in P27
(the paper's equation numbers were not reachable offline):

* uniformity (P27 adopts Wang & Isola 2020's metric, ``t = 2``), on L2-normalised embeddings; lower is more
  uniform:  ``L_uniformity = log E_{x != y} exp(-t ||f(x) - f(y)||^2)``
* tolerance: the mean similarity of pairs from the same class (label), higher = more tolerant to
  semantically similar samples:  ``T = E_{x != y, l(x) = l(y)} f(x)^T f(y)``. P27 describes it in words as "the
  mean similarities of samples belonging to the same class"; written as an expectation over *all* pairs
  times the indicator ``1[l(x) = l(y)]`` it would differ from ours by the constant factor ``P(l(x) = l(y))``
  of the data set, which leaves comparisons across temperatures on the same data unchanged.
* hardness awareness: the gradient of the contrastive loss w.r.t. the negative similarity ``s_ij`` is
  ``P_ij / T`` with ``P_ij = exp(s_ij/T) / (exp(s_ii/T) + sum_k exp(s_ik/T))``; small ``T`` concentrates the
  penalty on the hardest negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def _check_embeddings(z: Tensor) -> None:
    if z.dim() != 2 or z.shape[0] < 2:
        raise ConfigError(f"embeddings must be [n >= 2, dim]; got {tuple(z.shape)}")


def uniformity(z: Tensor, *, t: float = 2.0, normalize: bool = True) -> Tensor:
    """``log E_{i != j} exp(-t ||z_i - z_j||^2)`` over the distinct pairs of rows of ``z`` (P27)."""
    _check_embeddings(z)
    if not t > 0:
        raise ConfigError(f"t must be > 0; got {t}")
    z = F.normalize(z, dim=1) if normalize else z
    sq = torch.pdist(z, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel()), dtype=sq.dtype))


def tolerance(z: Tensor, labels: Tensor, *, normalize: bool = True) -> Tensor:
    """Mean ``z_i^T z_j`` over distinct pairs with the same label (P27)."""
    _check_embeddings(z)
    if labels.shape != z.shape[:1]:
        raise ConfigError(f"labels must be [n] for embeddings [n, dim]; got {tuple(labels.shape)}")
    z = F.normalize(z, dim=1) if normalize else z
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool, device=z.device)
    if not same.any():
        raise ConfigError("tolerance needs at least two examples with the same label")
    return (z @ z.T)[same].mean()


def negative_penalty_weights(z1: Tensor, z2: Tensor, *, temperature: float) -> Tensor:
    """``[B, B]`` gradient magnitudes ``P_ij / T`` of the InfoNCE loss (anchor ``z1_i``, candidates ``z2``)
    w.r.t. each similarity ``s_ij``; the diagonal (positives) is set to 0. Rows sum to ``(1 - P_ii) / T``."""
    if z1.shape != z2.shape:
        raise ConfigError(f"z1 and z2 must have the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_embeddings(z1)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
    p = torch.softmax(s / temperature, dim=1)
    return (p / temperature).masked_fill(torch.eye(len(s), dtype=torch.bool, device=s.device), 0.0)
