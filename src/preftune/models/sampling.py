"""Drawing the next token inside transformers' ``generate`` by the inverse of the cumulative distribution.

``generate(do_sample=True)`` draws each token with ``torch.multinomial``, which on CPU turns every row of
probabilities into exponential random numbers: one random draw per vocabulary entry. At 16 rows x 4k tokens that
took 2 ms a step, 8% of an online GRPO step of the benchmark (docs/benchmarks.md). :class:`InverseCDFSampler` draws
the same distribution with one uniform number per row: ``u ~ U[0, 1)``, the token is the first whose cumulative
probability exceeds ``u`` times the total (float64 cumulative sums). It runs as a logits processor -- transformers'
documented extension point -- in *greedy* mode: it applies the sampling warpers (temperature, top-k, top-p, by
transformers' own classes, in transformers' order), draws, and returns scores that are 0 at the drawn token and
``-inf`` elsewhere, so ``generate``'s argmax takes it. The distribution is exactly the one ``do_sample=True``
samples; the individual draws for a seed differ from ``torch.multinomial``'s. :func:`preftune.models.generate.generate`
uses it on CPU only: on a GPU ``torch.multinomial`` is fast and the sampler's extra kernels cost more (measured on an
H200, docs/benchmarks.md).

:func:`inverse_cdf_supported` says when the swap is exact: the model's ``generation_config`` must not ask for other
sampling warpers (min-p, typical-p, epsilon/eta cut-offs, top-h), a watermark or renormalisation, and decoding must
be single-beam sampling.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.generation.logits_process import LogitsProcessor


def inverse_cdf_supported(model: Any) -> bool:
    """Whether the model's generation config leaves sampling to temperature, top-k and top-p only."""
    from .loading import unwrap

    gc = getattr(unwrap(model), "generation_config", None)
    if gc is None:
        return True

    def unset(name: str, *neutral: Any) -> bool:
        return getattr(gc, name, None) in (None, *neutral)

    return (unset("min_p") and unset("typical_p", 1.0) and unset("epsilon_cutoff", 0.0) and unset("eta_cutoff", 0.0)
            and unset("top_h") and unset("watermarking_config") and unset("renormalize_logits", False)
            and unset("num_beams", 1) and unset("guidance_scale", 1.0))


def draw_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` ``[B, V]`` (non-negative, any positive total), by inverse-CDF sampling;
    a zero-probability entry is never drawn."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("probability tensor contains either `inf`, `nan` or element < 0 (or sums to 0)")
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    idx = torch.searchsorted(cdf, u * total, right=True)
    # u * total can round up to total: then no entry exceeds it; take the last entry with positive probability
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1, keepdim=True)
    return torch.minimum(idx, last).squeeze(-1)


class InverseCDFSampler(LogitsProcessor):
    """A transformers logits processor that samples (see the module docstring); use with ``do_sample=False``."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        self.warpers: list[Any] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for w in self.warpers:
            scores = w(input_ids, scores)
        tok = draw_inverse_cdf(torch.softmax(scores.float(), dim=-1))
        return torch.full_like(scores, float("-inf")).scatter_(1, tok.unsqueeze(-1), 0.0)


__all__ = ["InverseCDFSampler", "draw_inverse_cdf", "inverse_cdf_supported"]
