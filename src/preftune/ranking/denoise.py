"""PLD: personalised denoising of implicit feedback by resampling on each user's loss distribution (P71).

Implements P71 (Zhang et al., "Personalized Denoising Implicit Feedback for Robust Recommender System",
WWW 2025). Noisy interactions (clicks a user does not actually like) have *higher* loss than that user's
clean interactions, but the loss scales differ a lot between users, so one global loss threshold mixes them
up. PLD compares losses only within one user: for a user u it draws k candidate positives uniformly from u's
training interactions, scores each with the BPR loss against the same sampled negative j, and keeps one:

    l_i = -log sig(s(u, i) - s(u, j)),   i in C_u (|C_u| = k)
    P(i | u) = exp(-l_i / tau) / sum_{i' in C_u} exp(-l_i' / tau)      (resampling on u's loss distribution)
    L = -log sig(s(u, i*) - s(u, j)),    i* ~ P(. | u)

tau -> infinity recovers uniform sampling (plain BPR); tau -> 0 always keeps the lowest-loss candidate.
The candidate scoring runs without gradient; one BPR step follows on the selected interactions.

Verified against: Kaike-Zhang/PLD, utls/trainer.py (``SelfDenoiseCFTrainer._train_epoch``, ``_rec_loss``)
and utls/mydataset.py (``CFDataset.get_train_batch`` with ``multi_sample``: k candidates without replacement
when the user has at least k items, with replacement otherwise; negatives drawn uniformly outside the user's
items), commit 892b12e934717527519b7fa8a8d53eede95922c9 (PLD switches on after ``begin_adv = 5`` epochs of
plain BPR there; the warm-up is the caller's choice here).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Per-pair BPR loss ``-log sig(s_pos - s_neg) = softplus(s_neg - s_pos)`` (no reduction)."""
    return F.softplus(neg_scores - pos_scores)


def pld_probabilities(candidate_losses: Tensor, temperature: float) -> Tensor:
    """``softmax(-loss / tau)`` over each user's k candidates (P71); ``candidate_losses`` [B, k]."""
    if temperature <= 0:
        raise ConfigError(f"pld: temperature must be > 0, got {temperature}")
    return torch.softmax(-candidate_losses.detach() / temperature, dim=-1)


def pld_select(candidate_losses: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """Index [B] of the candidate kept for each user, drawn from :func:`pld_probabilities`."""
    p = pld_probabilities(candidate_losses, temperature)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)


class PLDSampler:
    """Per-user candidate sampling and loss-distribution resampling (P71) over fixed training interactions.

    ``user_items[u]``: the (possibly noisy) training items of user u. Per step::

        users, cand, neg = sampler.sample(batch_size)           # cand [B, k], neg [B]
        with torch.no_grad():
            losses = bpr_loss(score(users[:, None], cand), score(users, neg)[:, None])
        pos = sampler.select(cand, losses)                      # [B]
        loss = bpr_loss(score(users, pos), score(users, neg)).mean()
    """

    def __init__(self, user_items: Sequence[Sequence[int]], n_items: int, *, k: int = 5,
                 temperature: float = 1.0, generator: torch.Generator | None = None):
        if k < 1:
            raise ConfigError(f"pld: k (candidates per user) must be >= 1, got {k}")
        if temperature <= 0:
            raise ConfigError(f"pld: temperature must be > 0, got {temperature}")
        for u, items in enumerate(user_items):
            if len(items) == 0:
                raise ConfigError(f"pld: user {u} has no training interactions")
            if len(set(items)) >= n_items:
                raise ConfigError(f"pld: user {u} interacted with every item; no negative can be drawn")
            if min(items) < 0 or max(items) >= n_items:
                raise ConfigError(f"pld: user {u} has an item id outside [0, {n_items})")
        self.user_items = [torch.as_tensor(list(items), dtype=torch.long) for items in user_items]
        self.item_sets = [set(int(i) for i in items) for items in user_items]
        self.n_items, self.k, self.temperature, self.generator = n_items, k, temperature, generator

    def _negative(self, u: int) -> int:
        while True:  # rejection sampling: users touch a small fraction of the catalogue
            j = int(torch.randint(self.n_items, (1,), generator=self.generator))
            if j not in self.item_sets[u]:
                return j

    def sample(self, batch_size: int, users: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(users [B], candidates [B, k], negatives [B])``; users uniform unless given."""
        if users is None:
            users = torch.randint(len(self.user_items), (batch_size,), generator=self.generator)
        cand, neg = [], []
        for u in users.tolist():
            items = self.user_items[u]
            if len(items) >= self.k:
                idx = torch.randperm(len(items), generator=self.generator)[: self.k]
            else:
                idx = torch.randint(len(items), (self.k,), generator=self.generator)
            cand.append(items[idx])
            neg.append(self._negative(u))
        return users, torch.stack(cand), torch.tensor(neg, dtype=torch.long)

    def select(self, candidates: Tensor, candidate_losses: Tensor) -> Tensor:
        """The kept positive item per user [B]: one candidate drawn with ``softmax(-loss / tau)``."""
        idx = pld_select(candidate_losses, self.temperature, self.generator)
        return candidates.gather(1, idx[:, None]).squeeze(1)
