"""Label-distributionally robust losses (P44): LDR-KL with a fixed temperature and ALDR-KL with an
instance-adaptive one, for multi-class classification under label noise.

Source: P44, Zhu, Ying, Yang, "Label Distributionally Robust Losses for Multi-class Classification:
Consistency, Robustness and Adaptivity" (ICML 2023, arXiv 2112.14869). Verified against the authors' code:
Optimization-AI/ICML2023_LDR, ``loss.py``, ``LDRLoss_V1`` and ``ALDRLoss_V1``, commit
732fc85dbd8b30b6dd16cd2dfb79d6c325558d71 (the paper's numbered equations were not reachable offline). A
one-off run of that code on CPU gave the same LDR-KL values as ``ldr_kl_loss`` to 1e-15, and, with margin 0, the
same ALDR-KL losses and temperatures over three steps to 2e-5 (the code adds 1e-5 to ``p``).

LDR-KL: the worst case over label distributions ``p`` in the simplex, KL-regularised towards uniform ``u``:

    psi_lam(f, y) = max_p sum_k p_k delta_k - lam * KL(p || u) = lam * log( 1/K sum_k exp(delta_k / lam) ),
    delta_k = f_k - f_y + c * 1[k != y]          (margin c)

``lam -> 0`` gives the Crammer-Singer hinge ``max_k delta_k``; ``lam -> inf`` the mean ``1/K sum_k delta_k``;
``lam = 1, c = 0`` and raw logits give cross-entropy minus ``log K`` -- the temperature-scaled CE family.
Like the authors' code, the scores are normalised first (``normalize``): ``"softplus"`` = softplus then divide
by the row mean (``LDRLoss_V1``), ``"l1"`` = divide by the row's mean absolute value (``ALDRLoss_V1``), which
bounds ``delta`` and gives the robustness to noisy labels.

ALDR-KL adds a per-instance temperature ``lam_i`` in ``[lam0 (1 - 1/alpha), lam0]``, maximised jointly:

    psi(f, y) = max_{lam} max_p sum_k p_k delta_k - lam KL(p || u) - alpha log K / (2 lam0) (lam - lam0)^2

solved by one alternating step per visit (as ``ALDRLoss_V1``): ``p* = softmax(delta / lam_i)`` at the stored
``lam_i``, then ``lam_i <- lam0 (1 - KL(p* || u) / (alpha log K))``, then the loss at the new ``lam_i`` (no
gradient through ``lam_i``). An instance whose label disagrees with the model has a peaked ``p*`` (large KL), so
its temperature drops. Deviation from the code, towards the derivation: ``p*`` is the softmax of ``delta / lam``
(the maximiser above), where ``ALDRLoss_V1`` takes the softmax of the normalised scores without the margin.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

_NORMALIZE = ("softplus", "l1", "none")


def normalize_scores(logits: Tensor, how: str) -> Tensor:
    """The score normalisation of the authors' code (see the module docstring)."""
    if how not in _NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(_NORMALIZE)}; got {how!r}")
    if how == "none":
        return logits
    f = F.softplus(logits) if how == "softplus" else logits
    return f / f.abs().mean(dim=1, keepdim=True).clamp(min=1e-12)


def margin_gaps(f: Tensor, labels: Tensor, margin: float) -> Tensor:
    """``delta_k = f_k - f_y + margin * 1[k != y]`` ``[B, K]``."""
    one_hot = F.one_hot(labels.long(), f.shape[1]).to(f.dtype)
    return f - f.gather(1, labels.long()[:, None]) + margin * (1 - one_hot)


def _check(logits: Tensor, labels: Tensor, margin: float, reduction: str) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ConfigError(f"logits must be [batch, classes] and labels [batch]; got {tuple(logits.shape)} and "
                          f"{tuple(labels.shape)}")
    if margin < 0:
        raise ConfigError(f"margin must be >= 0; got {margin}")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be one of mean, sum, none; got {reduction!r}")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def _kl_lse(delta: Tensor, lam: Tensor) -> Tensor:
    """``lam * log(1/K sum_k exp(delta_k / lam))`` per row; ``lam`` ``[B, 1]`` or a scalar."""
    return lam * (torch.logsumexp(delta / lam, dim=1, keepdim=True) - math.log(delta.shape[1]))


def ldr_kl_loss(logits: Tensor, labels: Tensor, *, lam: float = 1.0, margin: float = 1.0,
                normalize: str = "softplus", reduction: str = "mean") -> Tensor:
    """LDR-KL loss (P44; equation in the module docstring) with a fixed temperature ``lam``."""
    _check(logits, labels, margin, reduction)
    if not lam > 0:
        raise ConfigError(f"lam (the KL temperature) must be > 0; got {lam}")
    delta = margin_gaps(normalize_scores(logits, normalize), labels, margin)
    return _reduce(_kl_lse(delta, torch.as_tensor(lam, dtype=delta.dtype)).squeeze(1), reduction)


class ALDRKLLoss(nn.Module):
    """ALDR-KL (P44): LDR-KL with a per-instance temperature ``lam_i`` kept in a buffer and updated on every
    visit of instance ``i`` (see the module docstring). Call ``loss(logits, labels, index)`` with ``index`` the
    dataset indices of the batch rows, in ``[0, num_samples)``."""

    def __init__(self, num_samples: int, *, lam0: float = 1.0, alpha: float = 2.0, margin: float = 1.0,
                 normalize: str = "l1"):
        super().__init__()
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1 (the training-set size); got {num_samples}")
        if not lam0 > 0:
            raise ConfigError(f"lam0 (the reference temperature) must be > 0; got {lam0}")
        if not alpha > 1:
            raise ConfigError(f"alpha must be > 1 so that every temperature stays positive; got {alpha}")
        if margin < 0:
            raise ConfigError(f"margin must be >= 0; got {margin}")
        normalize_scores(torch.zeros(1, 1), normalize)  # validates the name
        self.lam0, self.alpha, self.margin, self.normalize = float(lam0), float(alpha), float(margin), normalize
        self.register_buffer("lam", torch.full((num_samples,), float(lam0)))

    def forward(self, logits: Tensor, labels: Tensor, index: Tensor) -> Tensor:
        _check(logits, labels, self.margin, "mean")
        if index.shape != labels.shape:
            raise ConfigError(f"index must be [batch] dataset indices; got {tuple(index.shape)}")
        k = logits.shape[1]
        if k < 2:
            raise ConfigError(f"ALDR-KL needs at least 2 classes; got {k}")
        delta = margin_gaps(normalize_scores(logits, self.normalize), labels, self.margin)
        with torch.no_grad():
            lam_old = self.lam[index].to(delta.dtype)[:, None]
            logp = torch.log_softmax(delta / lam_old, dim=1)
            kl = (logp.exp() * (logp + math.log(k))).sum(1, keepdim=True)
            lam_new = self.lam0 * (1 - kl / (self.alpha * math.log(k)))
            self.lam[index] = lam_new.squeeze(1).to(self.lam.dtype)
        extra = -self.alpha * math.log(k) / (2 * self.lam0) * (lam_new - self.lam0) ** 2
        return (_kl_lse(delta, lam_new) + extra).mean()
