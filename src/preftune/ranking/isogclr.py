"""iSogCLR (P36): the robust global contrastive loss with an individual, learned temperature per training
example, and its stochastic algorithm (moving estimates of each anchor's inner expectation, momentum updates
of each temperature).

Source: P36, Qiu, Hu, Yuan, Zhou, Zhang, Yang, "Not All Semantics are Created Equal: Contrastive
Self-supervised Learning with Automatic Temperature Individualization" (ICML 2023, arXiv 2305.11965).
Verified against the authors' library: Optimization-AI/LibAUC, ``libauc/losses/contrastive.py``,
``GCLoss_v1`` (``enable_isogclr=True``), commit 812f98f7bf020894f370ed48da2a23cd4e995235 (the authors'
experiment repo is zhqiu/contrastive-learning-iSogCLR).

The robust contrastive objective (the "RGCL" of LibAUC's docstring; rho of its eq. 6), per anchor ``x_i``:

    F(w, tau) = 1/n sum_i [ tau_i log E_{z in S_i^-} exp(h_i(z) / tau_i) + tau_i rho ],
    h_i(z) = sim(A(x_i), z) - sim(A(x_i), A'(x_i))

The DRO view: ``tau_i`` is the multiplier of a KL-ball constraint of radius ``rho`` on the weights over the
negatives, so each anchor gets the temperature its own negatives call for. Stochastic algorithm, per batch,
for each anchor ``i`` (both views; ``B`` anchors, ``2B - 2`` negatives each):

    g_i   = mean_z exp(h_i(z) / tau_i)                          (mini-batch estimate)
    u_i  <- (1 - gamma) u_i + gamma g_i                          (moving estimate; gamma = 1 on the first visit)
    model gradient of  mean_z sg[exp(h_i(z)/tau_i) / u_i] * h_i(z)      (= grad of tau_i log E exp(h/tau_i))
    d_i   = log u_i + rho - mean_z exp(h_i(z)/tau_i) / u_i * h_i(z)/tau_i      (d F / d tau_i)
    m_i  <- (1 - beta) m_i + beta d_i ;  tau_i <- clip(tau_i - eta m_i, tau_min, tau_max)

As in ``GCLoss_v1``, ``u`` and ``m`` are one value per example (the two views' estimates are averaged;
both views' weights then use that average, where LibAUC weights each view with its own update).
Deviation from LibAUC, towards the paper: LibAUC exponentiates the raw similarities ``sim(A(x_i), z)`` and
drops the positive's term, which shifts ``u_i`` by ``exp(sim_pos / tau_i)``; we keep the paper's ``h_i(z)``,
which makes ``d_i`` exactly the derivative above. The returned value is the surrogate whose gradient is the
model gradient (as in LibAUC); ``last_objective`` holds the objective ``F`` itself for logging.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class ISogCLRLoss(nn.Module):
    """iSogCLR for two views ``z1, z2`` ``[B, D]`` of the examples ``index`` ``[B]`` (dataset indices in
    ``[0, num_samples)``). ``tau`` (the learned temperatures), ``u`` and ``tau_grad`` are buffers."""

    def __init__(self, num_samples: int, *, tau_init: float = 0.1, tau_min: float = 0.05, tau_max: float = 0.7,
                 rho: float = 0.3, eta: float = 0.01, beta: float = 0.9, gamma: float = 0.9,
                 learn_tau: bool = True):
        super().__init__()
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1 (the training-set size); got {num_samples}")
        if not 0 < tau_min <= tau_init <= tau_max:
            raise ConfigError(f"need 0 < tau_min <= tau_init <= tau_max; got {tau_min}, {tau_init}, {tau_max}")
        if rho < 0:
            raise ConfigError(f"rho (the KL radius) must be >= 0; got {rho}")
        if eta < 0:
            raise ConfigError(f"eta (the temperature step size) must be >= 0; got {eta}")
        for name, v in (("beta", beta), ("gamma", gamma)):
            if not 0 < v <= 1:
                raise ConfigError(f"{name} must be in (0, 1]; got {v}")
        self.tau_min, self.tau_max, self.rho, self.eta = float(tau_min), float(tau_max), float(rho), float(eta)
        self.beta, self.gamma, self.learn_tau = float(beta), float(gamma), bool(learn_tau)
        self.register_buffer("tau", torch.full((num_samples,), float(tau_init)))
        self.register_buffer("u", torch.zeros(num_samples))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("tau_grad", torch.zeros(num_samples))
        self.last_objective: Tensor | None = None

    def _gaps(self, z1: Tensor, z2: Tensor) -> Tensor:
        """``h`` ``[2, B, 2B - 2]``: for each view's anchors, negative minus positive similarity."""
        b = z1.shape[0]
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        off = ~torch.eye(b, dtype=torch.bool, device=z1.device)
        out = []
        for a, p in ((z1, z2), (z2, z1)):
            pos = (a * p).sum(1, keepdim=True)
            neg = torch.cat([(a @ p.T)[off].view(b, b - 1), (a @ a.T)[off].view(b, b - 1)], dim=1)
            out.append(neg - pos)
        return torch.stack(out)

    def forward(self, z1: Tensor, z2: Tensor, index: Tensor) -> Tensor:
        if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
            raise ConfigError(f"z1 and z2 must both be [batch >= 2, dim]; got {tuple(z1.shape)}, {tuple(z2.shape)}")
        if index.shape != z1.shape[:1]:
            raise ConfigError(f"index must be [batch] dataset indices; got {tuple(index.shape)}")
        h = self._gaps(z1, z2)                                   # [2, B, N]
        tau = self.tau[index].to(h.dtype)[None, :, None]         # [1, B, 1]
        e = torch.exp(h.detach() / tau)
        g = e.mean(2).mean(0)                                    # [B], the two views averaged as in LibAUC
        with torch.no_grad():
            seen = self.seen[index]
            u = torch.where(seen, (1 - self.gamma) * self.u[index].to(g.dtype) + self.gamma * g, g)
            self.u[index], self.seen[index] = u.to(self.u.dtype), True
        w = e / u[None, :, None]                                 # stop-gradient weights
        surrogate = (w * h).mean(2).mean(0)                      # [B]
        with torch.no_grad():
            t = tau.squeeze()
            self.last_objective = (t * torch.log(u) + t * self.rho).mean()
            if self.learn_tau and self.eta > 0:
                d = torch.log(u) + self.rho - (w * h.detach() / tau).mean(2).mean(0)
                m = (1 - self.beta) * self.tau_grad[index].to(d.dtype) + self.beta * d
                self.tau_grad[index] = m.to(self.tau_grad.dtype)
                self.tau[index] = (self.tau[index] - self.eta * m.to(self.tau.dtype)).clamp(self.tau_min,
                                                                                            self.tau_max)
        return surrogate.mean()
