"""SAF: sharpness-aware training for free, through the trajectory loss (P62).

Implements P62 (Du et al., "Sharpness-Aware Training for Free", NeurIPS 2022), sec. 4. SAM needs a second
forward/backward pass per step to estimate sharpness. SAF replaces SAM's sharpness term with a trajectory loss
that penalises a sudden drop of the loss along the weight trajectory: the KL divergence between the outputs
recorded for the same sample E~ epochs ago and the current outputs, both softened by a temperature tau:

    L_tra = lambda tau^2 / |B| sum_{i in B} KL( softmax(y^(e - E~)_i / tau) || softmax(f_theta(x_i) / tau) )
    L     = L_CE + L_tra          (for E_start <= e < E_end; plain L_CE before)

The past outputs are stored per training sample (memory N x C x (E~ + 1)), so the extra cost per step is
one softmax and one KL on logits already computed: one forward and one backward pass, as plain SGD.

Verified against: AngusDujw/SAF, SAF_train.py (``train_one_epoch``: ``train_logits[indices, epoch %
(minus_epoch + 1)]`` records, the reference is slot ``(epoch - minus_epoch) % (minus_epoch + 1)``, the KL is
``kl_div(log_softmax(out/T), softmax(past/T)).sum(-1).mean() * T^2 * reinforce``) and README.md (defaults
lambda 0.3 / 0.8, tau 5, E_start 5, E~ 2 / 3), commit 6e856004c59f9a8497d48e4a5d545e59f7b87d3e. The released
code applies the loss for ``epoch > kl_start_epoch``; here it applies from ``start_epoch`` on (pass
``start_epoch + 1`` to match). MESA (the EMA-teacher variant in the same paper) is not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def trajectory_loss(logits: Tensor, past_logits: Tensor, temperature: float = 5.0) -> Tensor:
    """``tau^2 / B sum_i KL(softmax(past_i / tau) || softmax(logits_i / tau))`` (P62); ``past`` is detached."""
    if temperature <= 0:
        raise ConfigError(f"saf: temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(logits / temperature, dim=-1)
    log_p = F.log_softmax(past_logits.detach().to(logits.dtype) / temperature, dim=-1)
    return temperature ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


class TrajectoryBuffer:
    """Outputs of every training sample over the last ``lag + 1`` epochs (a ring over epochs, P62).

    ``record(indices, logits, epoch)`` stores detached logits in slot ``epoch % (lag + 1)``;
    ``reference(indices, epoch)`` returns ``(logits from epoch - lag, valid mask)``; a sample is valid only
    if it was recorded in exactly that epoch (the slot also remembers which epoch wrote it)."""

    def __init__(self, n_samples: int, n_classes: int, lag: int = 3, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if n_samples < 1 or n_classes < 2:
            raise ConfigError(f"saf: need n_samples >= 1 and n_classes >= 2, got {n_samples}, {n_classes}")
        if lag < 1:
            raise ConfigError(f"saf: lag (E~, epochs back) must be >= 1, got {lag}")
        self.lag = lag
        self.logits = torch.zeros(lag + 1, n_samples, n_classes, device=device, dtype=dtype)
        self.stamp = torch.full((lag + 1, n_samples), -1, dtype=torch.long, device=device)

    def record(self, indices: Tensor, logits: Tensor, epoch: int) -> None:
        slot = epoch % (self.lag + 1)
        idx = indices.to(self.logits.device)
        self.logits[slot, idx] = logits.detach().to(self.logits)
        self.stamp[slot, idx] = epoch

    def reference(self, indices: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        past = epoch - self.lag
        slot = past % (self.lag + 1)
        idx = indices.to(self.logits.device)
        # past < 0 would match the -1 of never-written slots
        return self.logits[slot, idx], (self.stamp[slot, idx] == past) & (past >= 0)


class SAF:
    """The SAF trajectory term as a callable for any classification loop (P62)::

        saf = SAF(n_samples=len(train_set), n_classes=C)
        for epoch ...: for indices, x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y) + saf(logits, indices, epoch)

    Returns ``lambda * L_tra`` over the samples that have a reference (0 before ``start_epoch``, after
    ``end_epoch``, or when none has); always records the current logits first."""

    def __init__(self, n_samples: int, n_classes: int, *, lam: float = 0.3, temperature: float = 5.0,
                 lag: int = 3, start_epoch: int = 5, end_epoch: int | None = None,
                 device: torch.device | str = "cpu"):
        if lam < 0:
            raise ConfigError(f"saf: lam (trajectory-loss weight) must be >= 0, got {lam}")
        if temperature <= 0:
            raise ConfigError(f"saf: temperature must be > 0, got {temperature}")
        if start_epoch < lag:
            raise ConfigError(f"saf: start_epoch ({start_epoch}) must be >= lag ({lag}): no outputs exist "
                              f"{lag} epochs before it")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ConfigError(f"saf: end_epoch ({end_epoch}) must be > start_epoch ({start_epoch})")
        self.lam, self.temperature, self.start_epoch, self.end_epoch = lam, temperature, start_epoch, end_epoch
        self.buffer = TrajectoryBuffer(n_samples, n_classes, lag, device=device)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def __call__(self, logits: Tensor, indices: Tensor, epoch: int) -> Tensor:
        self.buffer.record(indices, logits, epoch)
        if not self.active(epoch) or self.lam == 0:
            return logits.new_zeros(())
        past, valid = self.buffer.reference(indices, epoch)
        if not bool(valid.any()):
            return logits.new_zeros(())
        valid = valid.to(logits.device)
        return self.lam * trajectory_loss(logits[valid], past.to(logits.device)[valid], self.temperature)
