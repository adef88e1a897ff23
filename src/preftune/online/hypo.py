"""HyPO (P70; Song et al. 2024, "The Importance of Online Data: Understanding Preference Fine-tuning via
Coverage", Algorithm 1): DPO on the offline pairs plus ``lam`` times the reverse KL ``KL(pi || pi_ref)`` estimated
on responses the current policy samples for the same prompts (unlabelled online data: no reward is needed).

The KL term's gradient is the score-function estimator
``E_{y ~ pi}[(log pi(y|x) - log pi_ref(y|x)) grad log pi(y|x)]`` (the exact gradient of the reverse KL; the
pathwise derivative of ``log pi - log pi_ref`` alone has expectation zero): the per-pair term is
``sg(h) log pi(y) - sg(h log pi(y)) + sg(h)``, ``h = log pi(y) - log pi_ref(y)``, whose value is the KL estimate
``h`` and whose gradient is ``h grad log pi(y)``. The samples come from the ``onpolicy_samples`` supplier (seeded
by the step, so a run reproduces and resumes). Authors' code: not found (searched GitHub for HyPO / "importance
of online data"); the estimator is preftune's reading of Algorithm 1's "KL regularization on online samples".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..objectives.base import ObjectiveOutput, PairStats, hp, register
from ..objectives.dpo import DPO


def reverse_kl_surrogate(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per sample: value ``h = logps - ref_logps``, gradient ``h * grad logps`` (score-function estimator of
    ``grad KL(pi || pi_ref)`` on samples of pi)."""
    h = (logps - ref_logps).detach()
    return h * logps - (h * logps).detach() + h


@register
@dataclass
class HyPO(DPO):
    __doc__ = __doc__
    name = "hypo"
    paper = "P70 (Song et al. 2024) Algorithm 1; DPO eq. 7"
    needs: ClassVar[tuple[str, ...]] = ("onpolicy_samples",)
    lam: float = hp(0.1, "weight of the reverse KL on the policy's own samples (the paper's lambda)", low=0.0)
    onpolicy_samples: int = hp(1, "responses sampled per prompt for the KL term (supplier setting)", low=1)
    max_new_tokens: int = hp(32, "generation budget of those samples (supplier setting)", low=1)
    temperature: float = hp(1.0, "sampling temperature of those samples (supplier setting)", low=0.0, low_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        out = super().__call__(stats)
        lp, ref = stats.extras["onpolicy_logps"], stats.extras["onpolicy_ref_logps"]
        kl = reverse_kl_surrogate(lp, ref).mean(-1)
        out.metrics["onpolicy_kl"] = (lp - ref).detach().mean()
        out.metrics["onpolicy_length"] = stats.extras["onpolicy_lengths"].float().mean()
        return ObjectiveOutput(out.loss + self.lam * kl.to(out.loss.dtype), out.metrics)


__all__ = ["HyPO", "reverse_kl_surrogate"]
