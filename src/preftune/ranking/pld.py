"""Plackett-Luce distillation (P45, PLD) and the loss it replaces, cross-entropy + KL distillation (Hinton 2015).

Source: P45, Bassam, Zhu, Bian, "PLD: A Choice-Theoretic List-Wise Knowledge Distillation" (arXiv 2506.12542,
NeurIPS 2025), Sec. 3 (the PLD loss). No public code found: searched GitHub code for "Plackett-Luce
Distillation", "PLD" + "teacher-optimal", the authors' names; the loss below is written from the paper's
description (abstract and Sec. 3 as summarised in its public pages):

* the teacher-optimal permutation ``pi``: the true label first, then the other classes by descending teacher
  logit;
* the Plackett-Luce log-likelihood of ``pi`` under the student's logits ``s`` (worths ``exp(s)``), with the
  choice at position ``k`` weighted by the teacher's confidence in that class,
  ``alpha_k = softmax(t / T)_{pi_k}``:

      L_PLD(s; t, y) = sum_{k=1}^{C} alpha_k * ( log sum_{l >= k} exp(s_{pi_l}) - s_{pi_k} )

  The ``k = 1`` term is ``alpha_1 * CE(s, y)``: PLD contains a (teacher-)weighted cross-entropy, so it needs no
  separate CE term or mixing weight. It is convex in ``s`` and invariant to adding a constant to ``s``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def _check(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, reduction: str) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student and teacher logits must both be [batch, classes]; got "
                          f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if labels.shape != student_logits.shape[:1]:
        raise ConfigError(f"labels must be [batch] class indices; got {tuple(labels.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be one of mean, sum, none; got {reduction!r}")


def teacher_optimal_permutation(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """``[B, C]`` class indices: the true label first, then the rest by descending teacher logit (P45)."""
    key = teacher_logits.detach().float().scatter(1, labels.long()[:, None], float("inf"))
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def pld_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float = 1.0,
             reduction: str = "mean") -> Tensor:
    """PLD loss (P45, Sec. 3; equation in the module docstring). ``temperature`` softens the teacher's
    confidence weights ``alpha``; the teacher gets no gradient."""
    _check(student_logits, teacher_logits, labels, reduction)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    pi = teacher_optimal_permutation(teacher_logits, labels)
    s = student_logits.gather(1, pi)
    alpha = torch.softmax(teacher_logits.detach().to(s.dtype) / temperature, dim=1).gather(1, pi)
    tail_lse = torch.logcumsumexp(s.flip(1), dim=1).flip(1)  # log sum_{l >= k} exp s_l
    per_example = (alpha * (tail_lse - s)).sum(1)
    return per_example.mean() if reduction == "mean" else per_example.sum() if reduction == "sum" else per_example


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, alpha: float = 0.5,
            temperature: float = 4.0, reduction: str = "mean") -> Tensor:
    """The baseline PLD replaces (Hinton et al. 2015): ``(1 - alpha) * CE(s, y) + alpha * T^2 *
    KL(softmax(t/T) || softmax(s/T))``."""
    _check(student_logits, teacher_logits, labels, reduction)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha (weight of the KL term) must be in [0, 1]; got {alpha}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    ce = F.cross_entropy(student_logits, labels.long(), reduction="none")
    logq = torch.log_softmax(student_logits / temperature, dim=1)
    logp = torch.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = (logp.exp() * (logp - logq)).sum(1)
    per_example = (1 - alpha) * ce + alpha * temperature ** 2 * kl
    return per_example.mean() if reduction == "mean" else per_example.sum() if reduction == "sum" else per_example
