"""Dual-head knowledge distillation: a logit-level loss on an auxiliary head (P17).

Implements P17 (Yang et al., "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an
Auxiliary Head", arXiv 2411.08937). A logit-level loss (BinaryKL: a per-class Bernoulli KL on sigmoids of the
logits) keeps information that the softmax removes, but added to the probability-level loss on the *same*
linear classifier their gradients conflict in that classifier and it collapses. DHKD gives the student two
linear heads on one backbone: the main head g1 takes the probability-level loss and is used at inference;
the auxiliary head g2 takes the logit-level loss. The backbone receives both gradients:

    BinaryKL(z_s, z_t)      = T^2 / N sum_i sum_c KL( Ber(sig(z_t,ic / T)) || Ber(sig(z_s,ic / T)) )
    BinaryKL-Norm(z_s, z_t) = T^2 / N sum_i sum_c KL( Ber(1/2) || Ber(sig((z_s,ic - z_t,ic) / T)) )
    L_DHKD = gamma CE(g1(h), y) + beta KL_T(p_t || p_s(g1(h))) + alpha BinaryKL-Norm(g2(h), z_t)

BinaryKL-Norm (the stabilised form) is zero exactly when the auxiliary logits equal the teacher's.
``beta = 0`` is the released DHKD recipe (``--distill dhkd``: CE on head 0, BinaryKL-Norm on head 1);
``beta > 0`` adds Hinton's KD on the main head.

Verified against: penghui-yang/DHKD, distiller_zoo/BinaryKL.py (``BinaryKL.forward``),
distiller_zoo/BinaryKLNorm.py (``BinaryKLNorm.forward``), helper/loops.py (``train_distill``),
train_student.py (defaults BinaryKL_T = 2, kd_T = 4), commit c088f51eaecbf79bc5c8775b07e840ce14332829.
The optional gradient-alignment optimizer (``--ga``) of that repository is not implemented here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _check_t(temperature: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"dual_head_kd: temperature must be > 0, got {temperature}")


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's probability-level KD: ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean."""
    _check_t(temperature)
    log_ps = F.log_softmax(student_logits / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=-1)
    return temperature ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def _bernoulli_kl(p: Tensor, log_q: Tensor, log_1mq: Tensor) -> Tensor:
    # KL(Ber(p) || Ber(q)) with 0 log 0 = 0
    return torch.xlogy(p, p) - p * log_q + torch.xlogy(1 - p, 1 - p) - (1 - p) * log_1mq


def binary_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Logit-level BinaryKL (P17): per-class Bernoulli KL between ``sig(z_t/T)`` and ``sig(z_s/T)``,
    summed over classes, batch mean, times ``T^2``."""
    _check_t(temperature)
    p = torch.sigmoid(teacher_logits / temperature)
    zs = student_logits / temperature
    kl = _bernoulli_kl(p, F.logsigmoid(zs), F.logsigmoid(-zs))
    return temperature ** 2 * kl.sum(-1).mean()


def binary_kl_norm(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """BinaryKL-Norm (P17): ``T^2 / N sum KL(Ber(1/2) || Ber(sig((z_s - z_t)/T)))``; 0 iff ``z_s = z_t``."""
    _check_t(temperature)
    d = (student_logits - teacher_logits) / temperature
    half = torch.full_like(d, 0.5)
    return temperature ** 2 * _bernoulli_kl(half, F.logsigmoid(d), F.logsigmoid(-d)).sum(-1).mean()


class DualHead(nn.Module):
    """Two linear heads on one feature vector (P17): ``forward(h) -> (main_logits, aux_logits)``.
    Use ``main_logits`` for predictions; ``aux_logits`` only feed the logit-level loss."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        if dim < 1 or classes < 2:
            raise ConfigError(f"dual_head_kd: need dim >= 1 and classes >= 2, got dim={dim}, classes={classes}")
        self.main = nn.Linear(dim, classes)
        self.aux = nn.Linear(dim, classes)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.main(h), self.aux(h)


class DualHeadKDLoss(nn.Module):
    """``L = gamma CE(main, y) + beta KD_KL(main, teacher; kd_temperature)
    + alpha BinaryKL-Norm(aux, teacher; binary_temperature)`` (P17). Call with
    ``(main_logits, aux_logits, teacher_logits, labels)``; the teacher logits are detached here."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, gamma: float = 1.0, *,
                 binary_temperature: float = 2.0, kd_temperature: float = 4.0, normalized: bool = True):
        super().__init__()
        for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if v < 0:
                raise ConfigError(f"dual_head_kd: {name} must be >= 0, got {v}")
        _check_t(binary_temperature)
        _check_t(kd_temperature)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.binary_temperature, self.kd_temperature = binary_temperature, kd_temperature
        self.logit_loss = binary_kl_norm if normalized else binary_kl

    def forward(self, main_logits: Tensor, aux_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        t = teacher_logits.detach()
        loss = self.gamma * F.cross_entropy(main_logits, labels)
        if self.beta:
            loss = loss + self.beta * kd_kl(main_logits, t, self.kd_temperature)
        return loss + self.alpha * self.logit_loss(aux_logits, t, self.binary_temperature)
