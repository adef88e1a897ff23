"""The standard contrastive losses the ranking methods are measured against: InfoNCE over a score matrix
(the dual-encoder retriever's "contrastive loss", P43's baseline) and SimCLR's NT-Xent with one global
temperature (the baseline of P36 iSogCLR, P27's temperature sweep and P41 AMCL).

InfoNCE (van den Oord et al. 2018): ``L = -1/|P| sum_{(q,p) in P} log( exp(s_qp/T) / sum_c exp(s_qc/T) )``.
NT-Xent (Chen et al. 2020, SimCLR eq. 1): for ``2B`` views, anchor ``i`` with positive ``j(i)``,
``l_i = -log( exp(sim(z_i, z_j)/T) / sum_{k != i} exp(sim(z_i, z_k)/T) )``, averaged over the ``2B`` anchors;
``sim`` is the cosine similarity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def info_nce(scores: Tensor, labels: Tensor, *, temperature: float = 0.05) -> Tensor:
    """InfoNCE over ``[Q, C]`` scores; each positive of a query is contrasted with all of the query's candidates."""
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ConfigError(f"scores and labels must both be [queries, candidates]; got {tuple(scores.shape)} "
                          f"and {tuple(labels.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    pos = labels > 0
    if not pos.any():
        raise ConfigError("InfoNCE needs at least one positive")
    logp = torch.log_softmax(scores / temperature, dim=1)
    return -logp[pos].mean()


def nt_xent(z1: Tensor, z2: Tensor, *, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent for two views ``[B, D]`` (equation in the module docstring)."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ConfigError(f"z1 and z2 must both be [batch >= 2, dim]; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z1.device)
    return F.cross_entropy(logits, target)
