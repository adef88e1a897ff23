"""Preference dissection: which properties of a response a judge's preferences reward, by Bayesian logistic
regression of the label on property-wise comparison features (P30).

>>> import torch
>>> from preftune.reward.dissect import comparison_features, dissect            # needs the [dissect] extra
>>> props_a, props_b = torch.rand(500, 3), torch.rand(500, 3)                     # e.g. correctness, clarity, length
>>> x = comparison_features(props_a, props_b)                                     # [500, 3] in {-1, 0, +1}
>>> y = (torch.rand(500) < torch.sigmoid(x @ torch.tensor([2.0, 1.0, -0.5]))).float()
>>> d = dissect(x, y, names=["correct", "clear", "long"], method="nuts", seed=0)   # doctest: +SKIP
>>> d.mean, d.lower, d.upper                                                       # doctest: +SKIP

Paper: Junlong Li, Fan Zhou, Shichao Sun, Yikai Zhang, Hai Zhao, Pengfei Liu, "Dissecting Human and LLM
Preferences" (arXiv:2402.11296). Each response pair (A, B) is annotated with properties (harmlessness, clarity,
errors, length, ...); the feature of property k is the comparison ``x_k = +1`` if A has more of it, ``-1`` if B
does, ``0`` if equal (the authors' ``way="comparison"``; ``mode="diff"`` gives the raw difference instead). The label
``y = 1`` when A is preferred. The model (the paper's Bayesian logistic regression, Sec. 3):

    w_k ~ Laplace(0, b),    y | x ~ Bernoulli(sigmoid(x . w))

with no intercept (swapping A and B flips x and y, so an intercept would only measure position bias) and
``b = 0.1`` by default, as the authors call it. The posterior mean of ``w_k`` says how much, and in which direction,
property k moves the preference; ``sigmoid(w_k)`` is the probability that a response having more of k alone is
preferred (the paper's figures). Reported: posterior mean, standard deviation and an equal-tailed credible interval
per property.

Inference library: **Pyro** (``pyro-ppl``, the ``[dissect]`` extra), imported only when :func:`dissect` runs.
``method="nuts"`` (default): Pyro's NUTS sampler (``pyro.infer.MCMC`` + ``NUTS``), as the authors do with NumPyro's
NUTS (4 chains, 500 warm-up, 2000 samples there; one chain and fewer samples by default here, which is plenty for a
few dozen weights). ``method="svi"``: stochastic variational inference with a mean-field normal guide
(``AutoNormal``, ``Trace_ELBO``, Adam), faster and approximate (it under-states posterior spread when weights are
correlated). Authors' code: GAIR-NLP/Preference-Dissection, ``visualization/app.py`` (``get_feature``,
``bayesian_logistic_regression``, ``fit_bayes_logistic_regression``) and ``visualization/add_new_model_p3_bayeslr.py``
(10-fold averaging of posterior means, not done here), commit 3b23645826387027569a34a079886b823acd4474.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import ConfigError

METHODS = ("nuts", "svi")


def comparison_features(props_a: torch.Tensor, props_b: torch.Tensor, *, mode: str = "sign") -> torch.Tensor:
    """``[N, P]`` property-wise comparison of response A against B: ``sign(a - b)`` in {-1, 0, +1} (``"sign"``,
    the paper's comparison feature) or ``a - b`` (``"diff"``)."""
    a, b = torch.as_tensor(props_a, dtype=torch.float64), torch.as_tensor(props_b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2:
        raise ConfigError(f"props_a and props_b must both be [N, P], got {tuple(a.shape)} and {tuple(b.shape)}")
    if mode == "sign":
        return torch.sign(a - b)
    if mode == "diff":
        return a - b
    raise ConfigError(f"mode must be 'sign' or 'diff', got {mode!r}")


@dataclass
class Dissection:
    """Posterior summary per property: ``mean``, ``std``, ``lower``/``upper`` (the ``level`` credible interval),
    ``samples[S, P]`` (posterior draws; for SVI, draws from the fitted guide)."""

    names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    level: float
    method: str
    samples: torch.Tensor = field(repr=False)

    def ranking(self) -> list[str]:
        """Property names from the most to the least preferred (by posterior mean)."""
        return [self.names[i] for i in torch.argsort(self.mean, descending=True).tolist()]

    def as_dict(self) -> dict:
        return {n: {"mean": float(m), "std": float(s), "lower": float(lo), "upper": float(hi),
                    "p_preferred": float(torch.sigmoid(m))}
                for n, m, s, lo, hi in zip(self.names, self.mean, self.std, self.lower, self.upper)}


def _pyro():
    try:
        import pyro
        import pyro.distributions as dist
    except ImportError as e:  # the only optional dependency of this module
        raise ImportError("preference dissection needs Pyro: pip install 'preftune[dissect]' "
                          "(the pyro-ppl package, >= 1.9)") from e
    return pyro, dist


def dissect(x: torch.Tensor, y: torch.Tensor, *, names: Sequence[str] | None = None, prior_scale: float = 0.1,
            method: str = "nuts", num_samples: int = 500, warmup: int = 300, svi_steps: int = 1500,
            level: float = 0.95, seed: int = 0) -> Dissection:
    """Bayesian logistic regression of ``y[N]`` (1: A preferred) on comparison features ``x[N, P]`` with a
    ``Laplace(0, prior_scale)`` prior per weight (P30, Sec. 3); posterior by Pyro's NUTS or SVI (see the module
    docstring). Deterministic given ``seed``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.dim() != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ConfigError(f"x must be [N, P] and y [N] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ConfigError("y must hold only 0 and 1 (1: response A preferred)")
    names = list(names) if names is not None else [f"x{k}" for k in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise ConfigError(f"{len(names)} names for {x.shape[1]} features")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not prior_scale > 0:
        raise ConfigError(f"prior_scale must be > 0, got {prior_scale}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if min(num_samples, svi_steps) < 1 or warmup < 0:
        raise ConfigError("num_samples and svi_steps must be >= 1 and warmup >= 0")
    pyro, dist = _pyro()
    p = x.shape[1]

    def model(x, y):
        w = pyro.sample("w", dist.Laplace(torch.zeros(p, dtype=x.dtype), prior_scale * torch.ones(p, dtype=x.dtype))
                        .to_event(1))
        with pyro.plate("pairs", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if method == "nuts":
        from pyro.infer import MCMC, NUTS

        mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=warmup, num_chains=1, disable_progbar=True)
        mcmc.run(x, y)
        samples = mcmc.get_samples()["w"].detach()
    else:
        from pyro.infer import SVI, Predictive, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro.optim import Adam

        guide = AutoNormal(model)
        svi = SVI(model, guide, Adam({"lr": 0.02}), loss=Trace_ELBO())
        for _ in range(svi_steps):
            svi.step(x, y)
        samples = Predictive(model, guide=guide, num_samples=num_samples, return_sites=["w"])(x, y)["w"].detach()
        samples = samples.reshape(num_samples, p)
    alpha = (1 - level) / 2
    q = torch.quantile(samples, torch.tensor([alpha, 1 - alpha], dtype=samples.dtype), dim=0)
    return Dissection(names, samples.mean(0), samples.std(0), q[0], q[1], level, method, samples)


def synthetic_judge(weights: Sequence[float], n: int, *, seed: int = 0, p_equal: float = 0.2
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic judge with known property weights: ``n`` pairs whose comparison features are -1/0/+1
    (0 with probability ``p_equal``), labels ``y ~ Bernoulli(sigmoid(x . weights))``. Returns ``(x, y)``."""
    if n < 1 or not 0 <= p_equal < 1:
        raise ConfigError(f"n must be >= 1 and p_equal in [0, 1), got n={n}, p_equal={p_equal}")
    g = torch.Generator().manual_seed(seed)
    w = torch.as_tensor(weights, dtype=torch.float64)
    sign = torch.where(torch.rand(n, len(w), generator=g) < 0.5, -1.0, 1.0).double()
    x = torch.where(torch.rand(n, len(w), generator=g) < p_equal, 0.0, sign)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w)).double()
    return x, y
