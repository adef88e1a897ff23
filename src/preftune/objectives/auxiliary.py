"""Auxiliary terms added to an alignment loss by composition (``"dpo:1,spo:0.1"``):
SPO's preference-degree loss (P01), preftune's own rejected-likelihood floor (not from a paper), P24's
f-divergence SFT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, logratios, register, require, require_extras
from .dpo import F_DIVERGENCES, f_score
from .listwise import plackett_luce_nll


def degrade(ids: Sequence[int], ratio: float, generator: torch.Generator | None = None,
            protect: int = 0, scores: Sequence[float] | None = None) -> list[int]:
    """SPO's degradation (P01 sec. 3.2): remove ``round(ratio * n)`` tokens of a response (keeping order;
    the first ``protect`` tokens and at least one token are kept).

    Which tokens: with ``scores`` (one per token, higher = more *key*), the highest-scoring ones -- the
    "key content" of P01, for which preftune uses a proxy (see :class:`SPO`); ties keep the earlier token.
    Without ``scores`` (or when their number does not match ``ids``), randomly chosen tokens."""
    ids = list(ids)
    n = len(ids) - protect
    k = min(int(round(ratio * n)), max(n - 1, 0))
    if k <= 0:
        return ids
    if scores is not None and len(scores) == len(ids):
        order = sorted(range(protect, len(ids)), key=lambda i: -float(scores[i]))
        drop = set(order[:k])
    else:
        drop = set((torch.randperm(n, generator=generator)[:k] + protect).tolist())
    return [t for i, t in enumerate(ids) if i not in drop]


def degrade_levels(ids: Sequence[int], ratios: Sequence[float], generator: torch.Generator | None = None,
                   protect: int = 0, scores: Sequence[float] | None = None) -> list[list[int]]:
    """K degraded copies of one response, one per ratio (increasing ratio = more degraded). With ``scores``
    the copies are nested (a more degraded copy lacks every token a less degraded one lacks). The trainer
    scores them with the policy to fill ``extras['degraded_logps']`` and ``['degraded_lengths']`` [B, K]."""
    return [degrade(ids, r, generator, protect, scores) for r in ratios]


class DegreeClassifier(nn.Module):
    """SPO's self-supervised preference-degree classifier (P01): a linear head from the policy's pooled
    final hidden state of a response to ``K + 1`` degree classes (0 = intact, k = k-th degradation).
    Zero-initialised (uniform prediction, no draw from the run's RNG)."""

    def __init__(self, hidden_size: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, classes)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, states: Tensor) -> Tensor:
        return self.proj(states.float())


@register
@dataclass
class SPO(Objective):
    """SPO auxiliary loss (P01, Li et al. 2024, "Self-supervised Preference Optimization", EMNLP Findings):
    from each chosen response build K copies with increasing amounts of *key content* removed; a
    self-supervised *classifier* must tell the degree of each (intact = class 0, copy k = class k); its
    cross-entropy is added to any alignment loss: ``--loss "dpo:1,spo:0.1"`` (the composition weight is
    P01's lambda). Copy k removes a fraction ``k / (K + 1)`` of the response tokens.

    ``mode='classifier'`` (default, P01's design): the objective owns a :class:`DegreeClassifier`
    (``spo_classifier``, built by :meth:`SPO.bind` from the policy's hidden size; the trainer optimises it
    with the policy and checkpoints it). Its input is the policy's final hidden state that predicts each
    response token, averaged over the response (trainer: ``extras['degree_states']`` [B, K+1, H], level 0
    the intact response, with gradient into the policy); loss = mean over the K + 1 versions of the
    cross-entropy against the true degree.

    preftune's own log-prob variants (no classifier, not P01's): ``mode='rank'`` -- Plackett-Luce NLL of
    the order intact > less degraded > more degraded on ``s_k / temperature``, ``s_k`` the per-token
    average policy log-prob; ``'classify'`` -- cross-entropy that picks the intact response out of the
    K + 1 by ``s_k``. They read ``extras['degraded_logps']`` / ``['degraded_lengths']`` [B, K].

    Key content (``key``): P01 removes the response's key content; preftune has no extractor for it and
    uses a documented proxy, ``key='surprisal'``: the tokens the policy itself predicted worst (highest
    ``-log pi(token)``, detached, from this step's forward), i.e. the least predictable, most informative
    tokens; ``key='random'`` removes random tokens.

    Fidelity: the authors' repository (github.com/lijian16/SPO, commit
    1fb96f8e302c1b40ccc4b09e6e918a6e56ebde8a) holds only a LICENSE -- no code to check against, and the
    paper's full text was not available when this was written. Unverified against P01, and so possibly
    different: the key-content extractor (here the surprisal proxy), the classifier's architecture (here
    one linear layer on mean-pooled final hidden states), whether rejected responses are degraded too
    (here only the chosen one), and the degradation fractions (here ``k / (K + 1)``).
    """

    name = "spo"
    paper = "P01 (SPO) sec. 3: self-supervised preference-degree classification"
    needs_reference = False
    needs = ("degraded", "token_logps")
    temperature: float = hp(1.0, "temperature of the log-prob modes (rank, classify) over average log-probs",
                            low=0.0, low_open=True)
    mode: str = hp("classifier", "P01's learned degree classifier on hidden states, or preftune's log-prob "
                   "variants: ranking of all degrees, or classification of the intact one",
                   choices=("classifier", "rank", "classify"))
    levels: int = hp(2, "number K of degraded copies; copy k drops a fraction k/(K+1) of the response tokens",
                     low=1, high=8)
    key: str = hp("surprisal", "which tokens are removed as key content: the policy's least predictable "
                  "ones (a proxy for P01's key content) or random ones", choices=("surprisal", "random"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.needs = ("degraded", "token_logps") if self.key == "surprisal" else ("degraded",)  # type: ignore[misc]
        self.spo_classifier: DegreeClassifier | None = None

    def ratios(self) -> list[float]:
        """Degradation ratios of the K copies, increasing: ``k / (K + 1)``."""
        return [k / (self.levels + 1) for k in range(1, self.levels + 1)]

    def wants_degree_states(self) -> bool:
        """Whether the trainer must supply ``extras['degree_states']`` (the classifier's input)."""
        return self.mode == "classifier"

    def bind(self, model: Any) -> None:
        """``mode='classifier'``: build the degree classifier for the policy's hidden size (once)."""
        if self.mode != "classifier" or self.spo_classifier is not None:
            return
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.spo_classifier = DegreeClassifier(int(base.config.hidden_size), self.levels + 1)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        if self.mode == "classifier":
            if self.spo_classifier is None:
                raise ValueError("objective 'spo' with mode='classifier' has no classifier: call "
                                 "objective.bind(policy) first (the trainer does)")
            require_extras(stats, self.name, "degree_states")
            h = stats.extras["degree_states"]  # [B, K+1, H]
            logits = self.spo_classifier(h)
            K1 = logits.shape[-1]
            if h.shape[1] != K1:
                raise ValueError(f"objective 'spo': degree_states has {h.shape[1]} versions per example, "
                                 f"the classifier {K1} classes (levels + 1)")
            target = torch.arange(K1, device=logits.device).expand(logits.shape[0], K1)
            ce = F.cross_entropy(logits.reshape(-1, K1), target.reshape(-1), reduction="none").view(-1, K1)
            loss = ce.mean(-1).to(h.dtype if h.is_floating_point() else ce.dtype)
            acc = (logits.argmax(-1) == target).float().mean()
            return ObjectiveOutput(apply_weight(loss, stats.weight),
                                   {"spo/loss": loss.detach().float().mean(), "spo/accuracy": acc})
        require(stats, self.name, "chosen_lengths")
        require_extras(stats, self.name, "degraded_logps", "degraded_lengths")
        lp = torch.cat([stats.policy_chosen_logps.unsqueeze(-1), stats.extras["degraded_logps"]], -1)
        n = torch.cat([stats.chosen_lengths.unsqueeze(-1), stats.extras["degraded_lengths"]], -1)  # type: ignore[union-attr]
        s = lp / n.to(lp.dtype).clamp(min=1) / self.temperature
        K1 = s.shape[-1]
        if self.mode == "rank":
            degree = -torch.arange(K1, dtype=s.dtype, device=s.device).expand_as(s)
            loss = plackett_luce_nll(s, degree, torch.ones_like(s, dtype=torch.bool))
        else:
            loss = -torch.log_softmax(s, -1)[..., 0]
        acc = (s.argmax(-1) == 0).float().mean()
        return ObjectiveOutput(apply_weight(loss, stats.weight), {"spo/loss": loss.detach().mean(), "spo/accuracy": acc})


@register
@dataclass
class RejectedFloor(Objective):
    """preftune's own regularizer against the *drastic drop* of rejected likelihood -- **not a method
    from a paper**. P13 (Yan et al. 2024, "3D-properties") describes the drop that motivates it, but this
    hinge is not P13's regularizer and is not checked against P13's equations or code. Loss (preftune's
    definition): ``relu(-(log pi(y_l) - log pi_ref(y_l)) - tau)`` (``mode='hinge'``) or its square
    (``'square'``): the rejected log-ratio is penalised only once it falls below ``-tau``.
    Per-token averaged log-ratio with ``normalize=True``. Add to DPO: ``--loss "dpo:1,rejected_floor:0.1"``;
    the composition weight is the regularization strength."""

    name = "rejected_floor"
    paper = "preftune's own regularizer (not from a paper)"
    tau: float = hp(5.0, "allowed drop of the rejected log-ratio before the penalty starts", low=0.0)
    mode: str = hp("hinge", "shape of the penalty", choices=("hinge", "square"))
    normalize: bool = hp(False, "use the per-token average log-ratio", choices=(False, True))

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        _, hr = logratios(stats)
        if self.normalize:
            require(stats, self.name, "rejected_lengths")
            hr = hr / stats.rejected_lengths.to(hr.dtype).clamp(min=1)  # type: ignore[union-attr]
        pen = torch.relu(-hr - self.tau)
        loss = pen if self.mode == "hinge" else pen ** 2
        return ObjectiveOutput(apply_weight(loss, stats.weight), {"reg/rejected_floor": loss.detach().mean()})


@register
@dataclass
class FSFT(Objective):
    """f-divergence SFT that keeps the KL term (P24, Wang et al. 2025, "Implicit Reward as the Bridge",
    sec. 4): SFT read as implicit-reward learning on the chosen responses, maximising ``f'(pi/pi_ref)``
    instead of ``log pi``: ``loss = -f'(exp(h̄_w))`` with ``h̄_w`` the per-token average log-ratio of the
    chosen response, ``f'`` as in f-DPO (:func:`preftune.objectives.dpo.f_score`, Wang et al. 2023 Table 1).
    ``reverse_kl`` gives ``-h̄_w``: plain SFT (the reference is a constant, the KL pull vanishes -- the
    defect P24 points out); ``forward_kl`` (``-(1 - exp(-h̄))``), ``js_divergence`` and
    ``alpha_divergence`` saturate as the policy moves above the reference, which keeps the KL term.

    Not verified: P24's abstract (the only text of P24 available when this was checked) says only that
    it derives "alternative SFT objectives from various f-divergence functions that preserve the KL term";
    no code is linked from the abstract and none was found in public code search (searched 2026-11-25).
    So these are unchecked against P24: the exact loss form (``-f'(ratio)`` here), which divergences P24
    uses (here f-DPO's four), whether the log-ratio is summed or per-token averaged (here averaged --
    preftune's choice, which keeps ``exp`` in range for long responses), and any beta scaling (none here).
    """

    name = "f_sft"
    paper = "P24 (implicit reward bridge), sec. 4 f-divergence SFT objectives (unverified: see docstring)"
    f_divergence: str = hp("forward_kl", "divergence whose f' scores the policy/reference ratio",
                           choices=F_DIVERGENCES)
    f_alpha: float = hp(0.5, "alpha of the alpha divergence", low=0.0, low_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "chosen_lengths")
        hc, _ = logratios(stats)
        hbar = hc / stats.chosen_lengths.to(hc.dtype).clamp(min=1)  # type: ignore[union-attr]
        loss = -f_score(hbar, self.f_divergence, self.f_alpha)
        return ObjectiveOutput(apply_weight(loss, stats.weight), {"f_sft/logratio": hbar.detach().mean()})


__all__ = ["DegreeClassifier", "FSFT", "RejectedFloor", "SPO", "degrade", "degrade_levels", "F"]
