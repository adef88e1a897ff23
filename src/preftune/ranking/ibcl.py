"""IBCL: a knowledge base of parameter distributions (a convex hull) and zero-shot models for a requested
trade-off between tasks (P75).

Implements P75 (Lu et al., "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning",
Imprecise Bayesian Continual Learning, arXiv 2305.14782), sec. 4: the knowledge-base (FGCS) update and the
zero-shot preference-addressing model. For each new task i, m diagonal-Gaussian posteriors q_{i,1..m} are learned by
variational inference, each from its own prior (m different prior widths on the first task, the previous
task's j-th posterior afterwards). They are the extreme points of a finitely generated credal set (FGCS): the
knowledge base is their convex hull. A new extreme point within distance d of a stored one is not stored; the
stored one stands in for it (sub-linear buffer growth):

    dist(q, q') = ||mu - mu'||_2 / n + ||sigma - sigma'||_2 / n                       (n parameters)
    for a preference w on the simplex over tasks 1..i:
        q_w = sum_k sum_j (w_k / m) q_{k,j}     (combined per parameter: mu_w = sum c mu, sigma_w = sum c sigma)
        HDR_{1-alpha}(q_w) = [mu_w + sigma_w Phi^-1(alpha/2), mu_w + sigma_w Phi^-1(1 - alpha/2)]
        a preference-addressing model: parameters drawn in the HDR (or its centre, mu_w)

No training happens for a new preference: the cost is m VI fits per task, whatever the number of
preferences.

Verified against: ibcl-anon/ibcl, fgcs_update.py (``fgcs_update``, ``fgcs_update_main_sublinear``: the
distance and the discard rule), zero_shot_model_locate.py (``pref_convex_combination``, ``compute_hdr``,
``sample_hdr``), commit fe7787b0addf069fefd35c12326272be8ce54469 (prior stds 0.2 / 0.25 / 0.3, m = 3).
Where code and paper differ this follows the paper: ``compute_hdr`` there takes the quantiles
``(1 - alpha)/2 .. 1 - (1 - alpha)/2``, a region of mass alpha, while the paper's HDR has mass 1 - alpha;
``sample_hdr`` there draws one uniform number per tensor, here one per parameter entry (or the centre).
The authors fit the posteriors with Pyro's SVI; :func:`fit_posterior` is a torch-only reparameterised
mean-field VI (Bayes by backprop) with the same objective (expected NLL + KL(q || prior)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError


@dataclass
class DiagGaussian:
    """A mean-field Gaussian over a model's named parameters: ``mu[name]``, ``sigma[name]`` (same shapes)."""

    mu: dict[str, Tensor]
    sigma: dict[str, Tensor]

    def flat(self) -> tuple[Tensor, Tensor]:
        return (torch.cat([v.reshape(-1) for v in self.mu.values()]),
                torch.cat([v.reshape(-1) for v in self.sigma.values()]))

    def distance(self, other: "DiagGaussian") -> float:
        """P75's extreme-point distance ``||dmu||/n + ||dsigma||/n``."""
        m1, s1 = self.flat()
        m2, s2 = other.flat()
        n = m1.numel()
        return float((m1 - m2).norm() / n + (s1 - s2).norm() / n)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {k: self.mu[k] + self.sigma[k] * torch.randn(self.mu[k].shape, generator=generator).to(self.mu[k].device)
                for k in self.mu}


def gaussian_prior(model: nn.Module, std: float) -> DiagGaussian:
    """``N(0, std^2)`` on every parameter of ``model`` (P75's first-task priors)."""
    if std <= 0:
        raise ConfigError(f"ibcl: prior std must be > 0, got {std}")
    named = dict(model.named_parameters())
    return DiagGaussian({k: torch.zeros_like(v.detach()) for k, v in named.items()},
                        {k: torch.full_like(v.detach(), std) for k, v in named.items()})


def kl_diag(q: DiagGaussian, p: DiagGaussian) -> Tensor:
    """``KL(q || p)`` between two mean-field Gaussians (summed over all parameters)."""
    total = 0.0
    for k in q.mu:
        sq, sp = q.sigma[k], p.sigma[k]
        total = total + (torch.log(sp / sq) + (sq ** 2 + (q.mu[k] - p.mu[k]) ** 2) / (2 * sp ** 2) - 0.5).sum()
    return total


def fit_posterior(model: nn.Module, x: Tensor, y: Tensor, nll: Callable[[Tensor, Tensor], Tensor],
                  prior: DiagGaussian, *, steps: int = 300, lr: float = 1e-2, batch_size: int = 128,
                  init: DiagGaussian | None = None, init_sigma: float = 1e-2,
                  generator: torch.Generator | None = None) -> DiagGaussian:
    """Mean-field VI for one extreme point: minimise ``E_q[nll(model_w(x_b), y_b)] + KL(q || prior) / N``
    with one reparameterised sample per step (``nll`` returns the batch-mean negative log-likelihood).
    Starts at ``init`` (default: the prior's mean) with standard deviation ``init_sigma``."""
    if steps < 1 or lr <= 0 or batch_size < 1 or init_sigma <= 0:
        raise ConfigError(f"ibcl: need steps >= 1, lr > 0, batch_size >= 1, init_sigma > 0; got {steps}, "
                          f"{lr}, {batch_size}, {init_sigma}")
    start = init or prior
    mu = {k: v.detach().clone().requires_grad_(True) for k, v in start.mu.items()}
    # sigma = softplus(rho) keeps it positive without a constraint
    rho0 = math.log(math.expm1(init_sigma))
    rho = {k: torch.full_like(v, rho0).requires_grad_(True) for k, v in mu.items()}
    opt = torch.optim.Adam(list(mu.values()) + list(rho.values()), lr=lr)
    n = x.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        sigma = {k: nn.functional.softplus(r) for k, r in rho.items()}
        w = {k: mu[k] + sigma[k] * torch.randn(mu[k].shape, generator=generator).to(mu[k].device) for k in mu}
        loss = nll(functional_call(model, w, (x[idx],)), y[idx]) + kl_diag(DiagGaussian(mu, sigma), prior) / n
        opt.zero_grad()
        loss.backward()
        opt.step()
    return DiagGaussian({k: v.detach().clone() for k, v in mu.items()},
                        {k: nn.functional.softplus(r).detach().clone() for k, r in rho.items()})


def convex_combination(dists: Sequence[DiagGaussian], weights: Sequence[float]) -> DiagGaussian:
    """Per-parameter ``mu = sum c mu_i``, ``sigma = sum c sigma_i`` (P75's combination of extreme points)."""
    w = [float(c) for c in weights]
    if len(w) != len(dists) or not dists:
        raise ConfigError(f"ibcl: need one weight per distribution, got {len(w)} for {len(dists)}")
    if min(w) < 0 or abs(sum(w) - 1) > 1e-6:
        raise ConfigError(f"ibcl: weights must be >= 0 and sum to 1, got {w}")
    mu = {k: sum(c * d.mu[k] for c, d in zip(w, dists)) for k in dists[0].mu}
    sigma = {k: sum(c * d.sigma[k] for c, d in zip(w, dists)) for k in dists[0].sigma}
    return DiagGaussian(mu, sigma)


def hdr(dist: DiagGaussian, alpha: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The (1 - alpha) highest-density region of a diagonal Gaussian, per parameter: ``(low, high)``."""
    if not 0 < alpha < 1:
        raise ConfigError(f"ibcl: alpha must be in (0, 1), got {alpha}")
    z = math.sqrt(2) * float(torch.special.erfinv(torch.tensor(1 - alpha)))  # Phi^-1(1 - alpha/2)
    return ({k: dist.mu[k] - z * dist.sigma[k] for k in dist.mu},
            {k: dist.mu[k] + z * dist.sigma[k] for k in dist.mu})


class KnowledgeBase:
    """IBCL's FGCS knowledge base (P75): extreme points per task, with reuse of near-duplicates.

    ``add_task(posteriors)`` stores the task's m posteriors (or points to a stored one within ``threshold``);
    ``priors()`` gives the priors for the next task; ``zero_shot(w)`` returns parameters for the trade-off
    ``w`` (one weight per task seen so far), to load with ``model.load_state_dict(..., strict=False)`` or
    ``torch.func.functional_call``."""

    def __init__(self, threshold: float = 0.0):
        if threshold < 0:
            raise ConfigError(f"ibcl: threshold (discard distance d) must be >= 0, got {threshold}")
        self.threshold = threshold
        self.extremes: list[DiagGaussian] = []
        self.tasks: list[list[int]] = []  # per task, the index in `extremes` of each of its m points

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def add_task(self, posteriors: Sequence[DiagGaussian]) -> list[int]:
        if not posteriors:
            raise ConfigError("ibcl: a task needs at least one posterior")
        if self.tasks and len(posteriors) != len(self.tasks[0]):
            raise ConfigError(f"ibcl: every task needs the same number of posteriors ({len(self.tasks[0])}), "
                              f"got {len(posteriors)}")
        members = []
        for q in posteriors:
            if self.extremes:
                dists = [q.distance(e) for e in self.extremes]
                best = min(range(len(dists)), key=dists.__getitem__)
                if dists[best] <= self.threshold:
                    members.append(best)
                    continue
            self.extremes.append(q)
            members.append(len(self.extremes) - 1)
        self.tasks.append(members)
        return members

    def priors(self) -> list[DiagGaussian]:
        """The last task's (possibly reused) posteriors: the next task's priors."""
        if not self.tasks:
            raise ConfigError("ibcl: the knowledge base is empty; use gaussian_prior for the first task")
        return [self.extremes[i] for i in self.tasks[-1]]

    def combine(self, preference: Sequence[float]) -> DiagGaussian:
        w = [float(c) for c in preference]
        if len(w) != self.n_tasks:
            raise ConfigError(f"ibcl: preference needs one weight per task seen ({self.n_tasks}), got {len(w)}")
        if min(w) < 0 or abs(sum(w) - 1) > 1e-6:
            raise ConfigError(f"ibcl: preference must be >= 0 and sum to 1, got {w}")
        dists, coefs = [], []
        for wk, members in zip(w, self.tasks):
            for i in members:
                dists.append(self.extremes[i])
                coefs.append(wk / len(members))
        return convex_combination(dists, coefs)

    def zero_shot(self, preference: Sequence[float], *, alpha: float = 0.1, mode: str = "center",
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Parameters for the trade-off ``preference``: the HDR centre (``mode='center'``, = mu_w) or a draw
        uniform in the (1 - alpha) HDR box (``mode='sample'``)."""
        if mode not in ("center", "sample"):
            raise ConfigError(f"ibcl: mode must be 'center' or 'sample', got {mode!r}")
        q = self.combine(preference)
        if mode == "center":
            hdr(q, alpha)  # validates alpha
            return {k: v.clone() for k, v in q.mu.items()}
        low, high = hdr(q, alpha)
        return {k: low[k] + torch.rand(low[k].shape, generator=generator).to(low[k].device) * (high[k] - low[k])
                for k in low}
