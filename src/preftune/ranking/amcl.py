"""Adaptive multi-head contrastive learning (P41, AMCL) for SimCLR-style two-view training: several projection
heads, each pair's similarity divided by its own adaptive temperature, with a regulariser that keeps the
temperatures from degenerate solutions.

Source: P41, Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning" (arXiv 2310.05615).
Verified against the authors' code: LeiWangR/cl, ``amcl/losses.py``, ``AMCLNTXentLoss`` with
``TemperatureHead`` and ``omega``, commit 755799dbee4260d2d2efc891e9e4d2c13ea2cfe4 (the paper's text was not
reachable offline; the equation numbers are those the code cites). Per head ``c`` and anchor ``i`` with
positive ``i+`` and the ``k`` most similar negatives ``N_k(i)`` (the paper's Top-k approximation, eq. 5):

    l_ic = - s_{i,i+} / tau_{i,i+} + 1/k sum_{j in N_k(i)} s_ij / tau_ij
           + beta * Omega(tau_{i,i+}) - beta * sum_{j in N_k(i)} (log tau_ij + 1 / tau_ij)
    Omega(tau) = d/2 log tau + 1/tau                                   (eq. 2.1-2.3, d = head dimension)
    tau_ij = tau_min + (tau_max - tau_min) * sigmoid(-phi(z_i)^T phi(z_j))     (eq. 3; phi shared by heads)

``s`` is the cosine similarity of the head's features. ``L = sum_c mean_i (l_ic)``, each head's term averaged
over the two directions (view 1 -> view 2 and back); negatives are the ``2B - 2`` other views in the batch.
The maximum-likelihood view: a similarity measured with a large temperature is trusted less, and
``Omega`` keeps that from being free. The code also has an older ``src/amcl_components/adaptive_temperature.py``
(one MLP on concatenated features per head); we follow ``amcl/losses.py``, the version the code's tests use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def omega(tau: Tensor, dim: int) -> Tensor:
    """``d/2 log tau + 1/tau`` (P41)."""
    return 0.5 * dim * torch.log(tau) + 1.0 / tau


class AMCLLoss(nn.Module):
    """AMCL loss over two views ``z1, z2`` ``[B, heads, dim]`` (equation in the module docstring). The module
    owns the temperature network ``phi``; give its parameters to the optimiser with the encoder's."""

    def __init__(self, dim: int, num_heads: int = 3, *, beta: float = 0.01, tau_min: float = 1e-5,
                 tau_max: float = 2.0, topk: int = 100, hidden_dim: int | None = None):
        super().__init__()
        if dim < 1 or num_heads < 1:
            raise ConfigError(f"dim and num_heads must be >= 1; got {dim}, {num_heads}")
        if not 0 < tau_min < tau_max:
            raise ConfigError(f"need 0 < tau_min < tau_max; got {tau_min}, {tau_max}")
        if beta < 0:
            raise ConfigError(f"beta (the temperature regulariser weight) must be >= 0; got {beta}")
        if topk < 1:
            raise ConfigError(f"topk (hardest negatives kept per anchor) must be >= 1; got {topk}")
        self.dim, self.num_heads, self.beta = int(dim), int(num_heads), float(beta)
        self.tau_min, self.tau_max, self.topk = float(tau_min), float(tau_max), int(topk)
        hidden = dim if hidden_dim is None else int(hidden_dim)
        self.phi = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def temperature(self, a: Tensor, b: Tensor) -> Tensor:
        """``tau`` for pairs ``a[..., d]``, ``b[..., d]`` (broadcast): eq. 3 of P41."""
        score = (self.phi(a) * self.phi(b)).sum(-1)
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(-score)

    def _head(self, a: Tensor, p: Tensor) -> Tensor:
        """``mean`` of ``l_i`` over the ``2B`` anchors of one head (both directions at once): ``a``, ``p``
        ``[B, d]`` unit vectors. ``phi`` is applied once per vector; the pair temperatures are a matrix."""
        b = a.shape[0]
        z = torch.cat([a, p])                                        # [2B, d]
        phi = self.phi(z)
        sim = z @ z.T
        tau = self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(-(phi @ phi.T))
        idx = torch.arange(2 * b, device=z.device)
        partner = (idx + b) % (2 * b)
        s_pos, tau_pos = sim[idx, partner], tau[idx, partner]
        neg = torch.ones(2 * b, 2 * b, dtype=torch.bool, device=z.device)
        neg[idx, idx] = False
        neg[idx, partner] = False
        k = min(self.topk, 2 * b - 2)
        vals, top = sim.masked_fill(~neg, float("-inf")).topk(k, dim=1)
        tau_neg = tau.gather(1, top)
        loss = (-s_pos / tau_pos + (vals / tau_neg).mean(1) + self.beta * omega(tau_pos, self.dim)
                - self.beta * (torch.log(tau_neg) + 1.0 / tau_neg).sum(1))
        return loss.mean()

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.shape != z2.shape or z1.dim() != 3:
            raise ConfigError(f"z1 and z2 must both be [batch, heads, dim]; got {tuple(z1.shape)}, {tuple(z2.shape)}")
        b, h, d = z1.shape
        if h != self.num_heads or d != self.dim or b < 2:
            raise ConfigError(f"expected [batch >= 2, {self.num_heads}, {self.dim}]; got {tuple(z1.shape)}")
        z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        return sum((self._head(z1[:, c], z2[:, c]) for c in range(h)), z1.new_zeros(()))
