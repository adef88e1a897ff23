"""Reference-free pair objectives: SimPO, CPO, ORPO, ASFT, MaPO (LM form).

All use the policy's own log-probs; ``needs_reference = False`` so the trainer can skip the reference
forward. ``ā = log pi(y|x) / |y|`` is the per-token average log-likelihood; the log-odds of a response
is ``o(y) = ā - log(1 - exp(ā))`` (ORPO's odds of the geometric-mean token probability).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (Objective, ObjectiveOutput, PairStats, apply_weight, hp, register, require, require_extras,
                   reward_metrics)


def avg_logps(stats: PairStats, name: str) -> tuple[Tensor, Tensor]:
    """Per-token average log-likelihood of chosen and rejected."""
    require(stats, name, "chosen_lengths", "rejected_lengths")
    dt = stats.policy_chosen_logps.dtype
    nc = stats.chosen_lengths.to(dt).clamp(min=1)  # type: ignore[union-attr]
    nr = stats.rejected_lengths.to(dt).clamp(min=1)  # type: ignore[union-attr]
    return stats.policy_chosen_logps / nc, stats.policy_rejected_logps / nr


def log_odds(avg_logp: Tensor) -> Tensor:
    """``log(p / (1 - p))`` for ``p = exp(avg_logp)``; ``avg_logp`` is clamped just below 0 for stability."""
    a = avg_logp.clamp(max=-1e-6)
    return a - torch.log(-torch.expm1(a))


NLL_AVERAGES = ("batch_tokens", "sequence")
NLL_TOKENS = ("completion", "prompt_and_completion")


def chosen_nll(stats: PairStats, name: str, average: str, tokens: str = "completion") -> Tensor:
    """NLL of the chosen responses as a per-example ``[B]`` tensor whose batch mean is the NLL term.

    ``average='sequence'``: each response's own per-token mean, ``-log pi(y_w)/|y_w|`` (mean over pairs).
    ``average='batch_tokens'``: the mean over all chosen tokens of the batch, ``-sum_i log pi(y_w,i) /
    sum_i |y_w,i|``, the same value in every row (TRL's ``nn.CrossEntropyLoss`` over the batch; long
    responses weigh more). ``tokens='prompt_and_completion'`` adds the prompt tokens (TRL's ORPOTrainer
    scores the whole chosen sequence): the stats' extras must carry ``chosen_prompt_logps`` (summed
    log-probs of the prompt tokens after the first) and ``chosen_prompt_lengths`` (their count).
    """
    require(stats, name, "chosen_lengths")
    dt = stats.policy_chosen_logps.dtype
    logp, n = stats.policy_chosen_logps, stats.chosen_lengths.to(dt)  # type: ignore[union-attr]
    if tokens == "prompt_and_completion":
        require_extras(stats, name, "chosen_prompt_logps", "chosen_prompt_lengths")
        logp = logp + stats.extras["chosen_prompt_logps"].to(dt)
        n = n + stats.extras["chosen_prompt_lengths"].to(dt)
    if average == "sequence":
        return -logp / n.clamp(min=1)
    return (-logp.sum() / n.sum().clamp(min=1)).expand(logp.shape[0])


@dataclass
class _RefFree(Objective):
    needs_reference = False

    def out(self, loss: Tensor, stats: PairStats, rc: Tensor, rr: Tensor, **extra: Tensor) -> ObjectiveOutput:
        m = reward_metrics(rc, rr, stats)
        m.update({k: v.detach().float().mean() for k, v in extra.items()})
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)


@register
@dataclass
class SimPO(_RefFree):
    """SimPO (Meng et al. 2024, eq. 6): ``-log sigmoid(beta ā_w - beta ā_l - gamma)``. Reward = ``beta ā``."""

    name = "simpo"
    paper = "Meng et al. 2024 (SimPO), eq. 6"
    beta: float = hp(2.0, "scale of the length-normalized reward (paper: 2.0-2.5)", low=0.0, low_open=True)
    gamma: float = hp(1.0, "target reward margin (paper: gamma/beta about 0.5)", low=0.0)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        ac, ar = avg_logps(stats, self.name)
        rc, rr = self.beta * ac, self.beta * ar
        return self.out(-F.logsigmoid(rc - rr - self.gamma), stats, rc, rr)


@register
@dataclass
class CPO(_RefFree):
    """CPO (Xu et al. 2024, eq. 3-4): ``-log sigmoid(beta (log pi(y_w) - log pi(y_l))) + alpha * NLL(y_w)``,
    log-probs summed over tokens. ``nll_average='sequence'`` (default, unchanged numerics): NLL is each chosen
    response's per-token mean; ``'batch_tokens'``: the mean over all chosen tokens of the batch, as TRL's
    ``CPOTrainer`` (``cpo_alpha``; equal to it on the same ids)."""

    name = "cpo"
    paper = "Xu et al. 2024 (CPO), eq. 3-4"
    beta: float = hp(0.1, "inverse temperature of the preference term", low=0.0, low_open=True)
    alpha: float = hp(1.0, "weight of the NLL term on the chosen response", low=0.0)
    nll_average: str = hp("sequence", "how the NLL averages: per response ('sequence') or over all chosen "
                          "tokens of the batch ('batch_tokens', TRL)", choices=NLL_AVERAGES)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "chosen_lengths", "rejected_lengths")
        rc, rr = self.beta * stats.policy_chosen_logps, self.beta * stats.policy_rejected_logps
        nll = chosen_nll(stats, self.name, self.nll_average)
        return self.out(-F.logsigmoid(rc - rr) + self.alpha * nll, stats, rc, rr, **{"nll/chosen": nll})


@register
@dataclass
class ORPO(_RefFree):
    """ORPO (Hong et al. 2024, eq. 6-7): ``NLL(y_w) - lambda log sigmoid(o(y_w) - o(y_l))`` with ``o`` the
    log-odds of the per-token average likelihood. Reward (metrics) = ``lambda ā``, as TRL's ORPOTrainer.

    The NLL term averages as TRL's ``ORPOTrainer`` by default: over all chosen tokens of the batch
    (``nll_average='batch_tokens'``); ``'sequence'`` is each response's own per-token mean, averaged over
    pairs (preftune's earlier default). TRL also scores the *prompt* tokens in that NLL
    (``ORPOTrainer.concatenated_forward``, TRL 1.16: ``nn.CrossEntropyLoss`` over every non-padding token of
    the chosen sequences after the first, one mean over the batch); set ``nll_tokens='prompt_and_completion'``
    to do the same: ``preftune train`` then runs the ``prompt_logps`` supplier, which fills the extras
    ``chosen_prompt_logps`` and ``chosen_prompt_lengths`` (:func:`chosen_nll`), and the loss equals TRL's on the
    same ids (first-step parity test). The default scores completion tokens only, as the paper's eq. 6 (the
    SFT loss on the chosen response). The odds-ratio term uses completion tokens only, as TRL and the paper do.
    """

    name = "orpo"
    paper = "Hong et al. 2024 (ORPO), eq. 6-7"
    lam: float = hp(0.1, "weight lambda of the odds-ratio term", low=0.0)
    nll_average: str = hp("batch_tokens", "how the NLL averages: over all chosen tokens of the batch "
                          "('batch_tokens', TRL) or per response ('sequence')", choices=NLL_AVERAGES)
    nll_tokens: str = hp("completion", "tokens the NLL scores: the completion, or prompt and completion "
                         "as TRL's ORPOTrainer (needs extras chosen_prompt_logps/lengths)", choices=NLL_TOKENS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nll_tokens == "prompt_and_completion":
            self.needs = ("prompt_logps",)  # type: ignore[misc]  # the trainer must fill the two extras

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        ac, ar = avg_logps(stats, self.name)
        ratio = F.logsigmoid(log_odds(ac) - log_odds(ar))
        nll = chosen_nll(stats, self.name, self.nll_average, self.nll_tokens)
        return self.out(nll - self.lam * ratio, stats, self.lam * ac, self.lam * ar,
                        **{"nll/chosen": nll, "log_odds_ratio": ratio})


@register
@dataclass
class ASFT(_RefFree):
    """ASFT (P26, Wang et al. 2024, eq. 7-8 as restated): ``NLL(y_w) + lambda * L_align`` with the
    absolute-likelihood alignment term ``L_align = -log sigmoid(o(y_w)) - log sigmoid(-o(y_l))``, one
    binary classification per response instead of a Bradley-Terry comparison. Since
    ``sigmoid(o(y)) = exp(ā)``, ``L_align = -ā_w - log(1 - exp(ā_l))``.

    Verified against a third-party restatement, not P26 itself: Gorbatovski et al. 2025 (arXiv 2502.01237)
    sec. 2.4 gives exactly this loss with length-normalised probabilities (their App. A.1, Table 4) and, in
    App. C, the binary cross-entropy form above. P26's body was not readable here (arXiv 2409.10571:
    abstract only) and no authors' code was found. The default ``lam = 0.1`` is ORPO's, not a value read in
    P26; the restating paper found lambda = 1 best among {0.1, 0.2, 0.5, 1} for one-stage ASFT."""

    name = "asft"
    paper = "P26 (ASFT) eq. 7-8"
    lam: float = hp(0.1, "weight lambda of the absolute-likelihood alignment term", low=0.0)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        ac, ar = avg_logps(stats, self.name)
        align = -F.logsigmoid(log_odds(ac)) - F.logsigmoid(-log_odds(ar))
        return self.out(-ac + self.lam * align, stats, ac, ar, **{"nll/chosen": -ac, "align": align})


@register
@dataclass
class MaPO(_RefFree):
    """MaPO in language-model form (P39, Hong et al. 2024, eq. 9-10, with the diffusion loss replaced by
    the token NLL): ``NLL(y_w) + gamma * -log sigmoid(beta (o(y_w) - o(y_l)))`` -- the likelihood of the
    preferred set plus a margin on log-odds, no reference. With beta = 1 it coincides with
    ``orpo(lam=gamma, nll_average="sequence")``: MaPO is ORPO's authors' transfer of the same idea to
    diffusion; the temperature ``beta`` is MaPO's addition."""

    name = "mapo"
    paper = "P39 (MaPO) eq. 9-10, LM form"
    beta: float = hp(1.0, "temperature of the log-odds margin", low=0.0, low_open=True)
    gamma: float = hp(0.1, "weight of the margin term", low=0.0)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        ac, ar = avg_logps(stats, self.name)
        margin = -F.logsigmoid(self.beta * (log_odds(ac) - log_odds(ar)))
        return self.out(-ac + self.gamma * margin, stats, ac, ar, **{"nll/chosen": -ac, "margin_loss": margin})
