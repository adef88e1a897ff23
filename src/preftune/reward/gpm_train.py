"""Training a GPM (P31) -- and, for comparison, a Bradley-Terry scalar scorer -- on preference pairs given as
token ids: a compact loop of its own.

Why not the trainer's loop (``ScoreForward`` on ``train``): a GPM is not a Hugging Face model with a
``save_pretrained``/``from_pretrained`` pair that ``final/`` could hold (it is a backbone plus two heads of its
own), its forward needs a second input per pair (the prompt alone, for the eigenvalue gate) that the padded pair
batch does not carry, and its loss reads embeddings, not the scalar ``PairScores`` the reward objectives take.
The loop here is the few lines those need: Adam over shuffled minibatches, deterministic in ``seed``.

>>> data = PairTensors.from_lists(prompts, chosen, rejected)                  # doctest: +SKIP
>>> gpm = GPM(BagEncoder(vocab, 32), 32, k=2)                                 # doctest: +SKIP
>>> history = train_gpm(gpm, data, steps=300, lr=3e-3, tau=0.1)               # doctest: +SKIP
>>> gpm_accuracy(gpm, data)                                                   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .gpm import GPM, gpm_loss, preference_score


def pad(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded ``[N, T]`` ids and their boolean mask."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one token")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = True
    return ids, mask


@dataclass
class PairTensors:
    """Preference pairs as padded token ids: ``chosen_*`` / ``rejected_*`` are the prompt-and-response sequences,
    ``prompt_*`` the prompt alone (for the eigenvalue gate); ``margin`` ``[N]`` is optional."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    chosen_ids: Tensor
    chosen_mask: Tensor
    rejected_ids: Tensor
    rejected_mask: Tensor
    margin: Tensor | None = None

    @classmethod
    def from_lists(cls, prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]],
                   rejected: Sequence[Sequence[int]], margin: Sequence[float] | None = None,
                   pad_id: int = 0) -> "PairTensors":
        """From token-id lists; ``chosen[i]`` and ``rejected[i]`` are responses alone (the prompt is prepended)."""
        if not (len(prompts) == len(chosen) == len(rejected)):
            raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected: "
                             "one of each per pair")
        p = pad(prompts, pad_id)
        c = pad([list(x) + list(y) for x, y in zip(prompts, chosen)], pad_id)
        r = pad([list(x) + list(y) for x, y in zip(prompts, rejected)], pad_id)
        m = None if margin is None else torch.as_tensor(list(margin), dtype=torch.float32)
        return cls(*p, *c, *r, margin=m)

    def __len__(self) -> int:
        return self.chosen_ids.shape[0]

    def select(self, idx: Tensor) -> "PairTensors":
        return PairTensors(self.prompt_ids[idx], self.prompt_mask[idx], self.chosen_ids[idx], self.chosen_mask[idx],
                           self.rejected_ids[idx], self.rejected_mask[idx],
                           None if self.margin is None else self.margin[idx])


class ScalarScorer(nn.Module):
    """A Bradley-Terry reward model on the same encoder as a GPM: ``r(x, y) = w . h_{x,y}`` (one number)."""

    def __init__(self, encoder: nn.Module, hidden_size: int):
        super().__init__()
        self.encoder = encoder
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, seq_ids: Tensor, seq_mask: Tensor) -> Tensor:
        return self.score(self.encoder(seq_ids, seq_mask)).squeeze(-1)


class BagEncoder(nn.Module):
    """A tiny encoder for demonstrations and tests: the mean of the tokens' embeddings, then a ReLU MLP layer.
    Order-free on purpose: the cyclic demonstration's preferences depend on which tokens a response holds."""

    def __init__(self, vocab_size: int, hidden_size: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(self.emb.weight.dtype)
        return self.mlp((self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1))


def _gpm_pair_loss(model: GPM, b: PairTensors, tau: float) -> Tensor:
    v_w, gate = model(b.chosen_ids, b.chosen_mask, b.prompt_ids, b.prompt_mask)
    v_l = model.embed(b.rejected_ids, b.rejected_mask)  # same prompt: the chosen call's gate serves both
    return gpm_loss(v_w, v_l, gate, tau=tau, margin=b.margin)


def _bt_pair_loss(model: ScalarScorer, b: PairTensors) -> Tensor:
    from ..objectives import get
    from .forward import PairScores

    # the registered Bradley-Terry objective itself, so the baseline is the reward models' loss
    return get("bradley_terry")(PairScores(model(b.chosen_ids, b.chosen_mask),
                                           model(b.rejected_ids, b.rejected_mask), margin=b.margin)).loss


def fit_pairs(model: nn.Module, data: PairTensors, pair_loss: Callable[[nn.Module, PairTensors], Tensor], *,
              steps: int = 300, lr: float = 3e-3, batch_size: int = 64, weight_decay: float = 0.0,
              seed: int = 0) -> list[float]:
    """Adam on ``mean(pair_loss(model, minibatch))`` over shuffled minibatches (reshuffled each epoch,
    deterministic in ``seed``); returns the loss per step."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"steps and batch_size must be >= 1 and lr > 0; got steps={steps}, "
                          f"batch_size={batch_size}, lr={lr}")
    if len(data) == 0:
        raise ConfigError("no preference pairs to train on")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    order, at, history = torch.randperm(len(data), generator=g), 0, []
    for _ in range(steps):
        if at >= len(data):
            order, at = torch.randperm(len(data), generator=g), 0
        idx, at = order[at:at + batch_size], at + batch_size
        loss = pair_loss(model, data.select(idx)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


def train_gpm(model: GPM, data: PairTensors, *, tau: float = 0.1, **kw) -> list[float]:
    """Train a GPM on pairs with the P31 loss ``-log sigmoid(s(y_w > y_l | x) / tau)`` (:func:`gpm_loss`);
    ``kw`` go to :func:`fit_pairs`. Returns the loss per step."""
    if tau <= 0:
        raise ConfigError(f"tau must be > 0 (the preference temperature); got {tau}")
    return fit_pairs(model, data, lambda m, b: _gpm_pair_loss(m, b, tau), **kw)


def train_bradley_terry(model: ScalarScorer, data: PairTensors, **kw) -> list[float]:
    """Train a scalar scorer with the ``bradley_terry`` objective on the same pairs (the baseline)."""
    return fit_pairs(model, data, _bt_pair_loss, **kw)


@torch.no_grad()
def gpm_pair_scores(model: GPM, data: PairTensors) -> Tensor:
    """``s(y_chosen > y_rejected | x)`` ``[N]`` for every pair."""
    model.eval()
    v_w, gate = model(data.chosen_ids, data.chosen_mask, data.prompt_ids, data.prompt_mask)
    v_l = model.embed(data.rejected_ids, data.rejected_mask)
    return preference_score(v_w, v_l, gate)


@torch.no_grad()
def bt_pair_margins(model: ScalarScorer, data: PairTensors) -> Tensor:
    """``r(x, y_chosen) - r(x, y_rejected)`` ``[N]`` for every pair."""
    model.eval()
    return model(data.chosen_ids, data.chosen_mask) - model(data.rejected_ids, data.rejected_mask)


def pair_accuracy(margins: Tensor) -> float:
    """Share of pairs with a positive margin, a tie counting 1/2 (as ``preftune rm eval`` counts)."""
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean()) if margins.numel() else float("nan")


__all__ = ["BagEncoder", "PairTensors", "ScalarScorer", "bt_pair_margins", "fit_pairs", "gpm_pair_scores", "pad",
           "pair_accuracy", "train_bradley_terry", "train_gpm"]
