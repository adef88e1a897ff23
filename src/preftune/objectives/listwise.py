"""Listwise objectives on K ranked responses per prompt: Plackett-Luce (listwise DPO) and TPO.

``ListStats.scores`` [B, K]: higher is better; ``valid`` [B, K] masks padded entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ListStats, Objective, ObjectiveOutput, apply_weight, hp, register


def _valid(stats: ListStats) -> Tensor:
    return torch.ones_like(stats.scores, dtype=torch.bool) if stats.valid is None else stats.valid.bool()


def plackett_luce_nll(rewards: Tensor, scores: Tensor, valid: Tensor) -> Tensor:
    """``-log P(ranking by scores | rewards)`` under Plackett-Luce, per list [B].

    Entries are sorted by score (descending; ties keep input order); padded entries go last and are
    excluded. ``-sum_k [r_(k) - log sum_{j >= k} exp r_(j)]``.
    """
    key = scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    r = torch.gather(rewards, -1, order)
    v = torch.gather(valid, -1, order)
    r = r.masked_fill(~v, float("-inf"))
    suffix = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)
    terms = torch.where(v, r - suffix, torch.zeros_like(r))
    return -terms.sum(-1)


@register
@dataclass
class PlackettLuce(Objective):
    """Listwise DPO under the Plackett-Luce model (Rafailov et al. 2023, App. A.3, eq. 18):
    implicit rewards ``r_k = beta (log pi(y_k|x) - log pi_ref(y_k|x))`` and the negative log-likelihood of
    the given ranking. With K = 2 it is DPO."""

    name = "plackett_luce"
    paper = "Rafailov et al. 2023 (DPO), App. A.3 eq. 18"
    kind = "list"
    beta: float = hp(0.1, "inverse temperature of the implicit reward", low=0.0, low_open=True)

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        r = self.beta * (stats.policy_logps - stats.reference_logps)  # type: ignore[operator]
        loss = plackett_luce_nll(r, stats.scores, _valid(stats))
        return ObjectiveOutput(apply_weight(loss, stats.weight), _list_metrics(r, stats))


def _list_metrics(r: Tensor, stats: ListStats) -> dict[str, Tensor]:
    v = _valid(stats)
    rd = r.detach().float()
    best = torch.argmax(stats.scores.masked_fill(~v, float("-inf")), dim=-1, keepdim=True)
    worst = torch.argmin(stats.scores.masked_fill(~v, float("inf")), dim=-1, keepdim=True)
    c, w = rd.gather(-1, best).squeeze(-1), rd.gather(-1, worst).squeeze(-1)
    return {"rewards/chosen": c.mean(), "rewards/rejected": w.mean(), "rewards/margins": (c - w).mean(),
            "rewards/accuracies": (c > w).float().mean()}


def adaptive_step_weights(step_ids: Tensor, step_embeddings: list[list[Tensor]]) -> Tensor:
    """TPO's adaptive step reward weights (P23 sec. 3.3), per token.

    ``step_ids`` [K, T]: index of the reasoning step each response token belongs to (-1 outside
    responses); ``step_embeddings[k][s]``: an embedding of step s of response k. A step that also occurs
    (semantically) in another response of the same prompt carries no preference signal, so its reward
    is scaled by ``1 - max cos(e_ks, e_k's')`` over the other responses' steps (clamped to [0, 1]).
    Returns [K, T] weights (0 outside responses).

    Unverified: sec. 3.3's text was not readable here (arXiv 2410.12854: abstract only), so this form --
    preftune's reading of "adjust the reward values of each step" to separate responses that share
    sub-trajectories -- is not checked against the paper's equation. The authors' code weights step s of
    response k by ``1 + cos(e_ks, e_0s)`` instead (see :class:`TPO`).
    """
    K, T = step_ids.shape
    out = torch.zeros(K, T, device=step_ids.device)
    for k in range(K):
        others = [e for j in range(K) if j != k for e in step_embeddings[j]]
        for s, e in enumerate(step_embeddings[k]):
            if others:
                sims = F.cosine_similarity(e.unsqueeze(0).float(), torch.stack(others).float(), dim=-1)
                w = float((1 - sims.max()).clamp(0, 1))
            else:
                w = 1.0
            out[k][step_ids[k] == s] = w
    return out


def policy_rank(rewards: Tensor, scores: Tensor, valid: Tensor) -> Tensor:
    """Rank position (1 = top) of each entry in the ranking induced by ``rewards`` [B, K] (LiPO-lambda's
    tau), ties broken by the label ``scores`` and then by position; padded entries rank last."""
    key = scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # tie-break: labels, then position
    r = torch.gather(rewards.masked_fill(~valid, float("-inf")), -1, order)
    order = torch.gather(order, -1, torch.sort(r, dim=-1, descending=True, stable=True).indices)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(1, order.shape[-1] + 1, device=order.device).expand_as(order))
    return rank


@register
@dataclass
class TPO(Objective):
    """TPO (P23, Liao et al. 2024/ICLR 2025, arXiv 2410.12854, sec. 3.2-3.3, eq. 8-10): preference-list
    ranking over a tree's responses.

    Reward of response k: ``r_k = beta * sum_t w_kt (log pi - log pi_ref)_t`` where ``w`` are the adaptive
    step-reward weights (``extras['step_weights']`` [B, K, T], from :func:`adaptive_step_weights`; needs
    ``"step_weights"`` and ``"token_logps"``); without step weights ``r_k`` is the summed log-ratio.
    Loss (sec. 3.2, TPO's ranking loss is LiPO-lambda, Liu et al. 2024 sec. 4.3):
    ``sum_{i, j: psi_i > psi_j} lambda_ij * -log sigmoid(r_i - r_j)``,
    ``lambda_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``, ``G = 2^psi - 1`` (psi the label score),
    ``D(tau) = log(1 + tau)`` (natural log, as written) and ``tau_i`` the rank position of response i in
    the ranking *induced by the rewards r* -- the policy's current ranking, which is what makes it
    listwise (LambdaLoss): pairs the policy orders badly near the top weigh most. The rank is piecewise
    constant, so no gradient flows through it; ties in r (every pair at the first step, where policy =
    reference) are broken by the label score, then by position, so the first step weighs pairs by the
    ideal ranking. ``weighting='uniform'`` uses lambda = 1 (mean over ordered pairs).

    ``preftune train`` computes the step weights (supplier ``step_weights``) when the ranked completions are
    given as lists of reasoning-step strings: step embeddings are the policy's mean final hidden states over
    each step's tokens, without gradient.

    Where this comes from (checked 2026-11-25): the TPO paper's body (arXiv 2410.12854 v3) was not readable
    here -- only its abstract, which names the two parts (preference list ranking, adaptive step reward).
    The lambda weights follow LiPO-lambda as LiPO states it (tau "the rank position of y_i in the ranking
    permutation induced by s", D = log(1 + tau)), which TPO adopts; an earlier preftune version ranked by
    the label scores and used log2 (the NDCG discount), which differs: the rank changes which pairs weigh
    most once the policy moves, and log2 scales every lambda by ln 2. The adaptive step weights of sec. 3.3
    could not be checked against the paper text at all (see :func:`adaptive_step_weights`).

    The authors' code, MrBlankness/TPO loss.py::TPOLoss.forward / compute_step_weights /
    compute_weighted_logits / lambda_rank_loss @ ba87a23cb8891c596d4276c1f3cca863aabc5928, differs from
    both, in:

    * step weights: ``1 + cos(e_ks, e_0s)`` against the *same-index* step of response 0 (with gradient
      through the cosine), not a down-weighting of steps shared with the other responses;
    * reward normalisation: ``r_k`` is the weight-normalised mean over steps of each step's *mean* token
      log-ratio (``sum_s w_s mean_t(log-ratio) / sum_s w_s``), not the weighted sum of token log-ratios, and
      ``beta`` is applied outside the ranking loss; steps past the list's fewest are merged into the last;
    * ranking loss: an unweighted mean of ``-log sigmoid((r_i - r_j) sign(s_i - s_j))`` over all N^2 ordered
      pairs, including i = j and ties (each a constant log 2), divided by N(N-1) -- no lambda weights;
    * outer sign: the released loss is ``-log sigmoid(beta * L_rank)``, which *decreases* as the ranking
      loss grows, so gradient descent on it reverses the ranking (checked numerically: at equal rewards its
      gradient raises the worst response's reward and lowers the best's);
    * per-token log-probs: gathered without the one-position shift and from position 0's distribution only
      (``gather(log_softmax(logits), -1, labels.unsqueeze(1))``).
    """

    name = "tpo"
    paper = "P23 (TPO) eq. 8-10"
    kind = "list"
    beta: float = hp(0.1, "inverse temperature of the implicit reward", low=0.0, low_open=True)
    weighting: str = hp("lambda", "pair weights of the ranking loss", choices=("lambda", "uniform"))
    step_rewards: bool = hp(False, "weight token log-ratios by adaptive step rewards (extras['step_weights'])",
                            choices=(False, True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_rewards:
            self.needs = ("token_logps", "step_weights")  # type: ignore[misc]

    def rewards(self, stats: ListStats) -> Tensor:
        if self.step_rewards:
            if "step_weights" not in stats.extras:
                raise ValueError("objective 'tpo' with step_rewards=True needs extras['step_weights'] [B, K, T]")
            if stats.policy_token_logps is None or stats.reference_token_logps is None:
                raise ValueError("objective 'tpo' with step weights needs per-token log-probs (token_logps)")
            w = stats.extras["step_weights"].to(stats.policy_token_logps.dtype)
            return self.beta * (w * (stats.policy_token_logps - stats.reference_token_logps)).sum(-1)
        return self.beta * (stats.policy_logps - stats.reference_logps)  # type: ignore[operator]

    def __call__(self, stats: ListStats) -> ObjectiveOutput:
        self.check_stats(stats)
        r = self.rewards(stats)
        v = _valid(stats)
        s = stats.scores.to(r.dtype)
        better = (s.unsqueeze(-1) > s.unsqueeze(-2)) & v.unsqueeze(-1) & v.unsqueeze(-2)  # [B,K,K]: i beats j
        pair = -F.logsigmoid(r.unsqueeze(-1) - r.unsqueeze(-2))
        if self.weighting == "lambda":
            rank = policy_rank(r.detach(), s, v)
            gain = torch.pow(2.0, s) - 1
            disc = 1.0 / torch.log1p(rank.to(r.dtype))
            lam = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (disc.unsqueeze(-1) - disc.unsqueeze(-2)).abs()
            loss = (lam * pair * better).sum((-1, -2))
        else:
            loss = (pair * better).sum((-1, -2)) / better.sum((-1, -2)).clamp(min=1)
        m = _list_metrics(r, stats)
        if self.step_rewards and stats.mask is not None:  # the mean step weight over response tokens
            mask = stats.mask.bool()
            m["tpo/step_weight_mean"] = stats.extras["step_weights"].detach().float()[mask].mean()
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)
