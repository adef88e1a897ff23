"""P2C (prefer-to-classify): an auxiliary pairwise preference task for a classifier (P49).

Implements P49 (Kim et al., "Prefer to Classify: Improving Text Classifiers via Auxiliary Preference
Learning", ICML 2023). Besides instance labels, pairs (x1, x2) of the *same* class y carry a task-specific
preference ``pi`` (1: x1 is the more typical / more confidently y, 0: x2 is, 2: tie). H preference heads
score ``r_h(x, y)`` from the shared features; P(x1 > x2) = exp(r1) / (exp(r1) + exp(r2)). The multi-task loss:

    L_cls  = 1/2 [CE(f(x1), y) + CE(f(x2), y)]
    L_pref = 1/H sum_h CE( [1 - t, t], softmax([r_h(x2,y), r_h(x1,y)]) ),  t = 1, 0, 1/2 for pi = 1, 0, tie
    L_cons = [pi=1] max(0, -D) + [pi=0] max(0, D) + [tie] |D|,  D = p_f(y|x1) - p_f(y|x2)
    L_div  = 1/(H(H-1)) sum_{h != g} CE( stopgrad(P_h), P_g )          (disagreement between the heads)
    L      = L_cls + lambda_pref L_pref + lambda_cons L_cons - lambda_div L_div

Verified against: minnesotanlp/p2c, src/train.py (``train_preference``, ``diversity_loss``) and model.py
(``Classifier_pref_ensemble``: 3 heads, MLP with tanh output), commit
c87ac27e303c1efa1c7208a725ef2e312e333140 (defaults lambda_pref = lambda_cons = 1, lambda_div 0.1 or 1 in
run_subjective.sh). The label enters the heads here as a one-hot vector; the released code concatenates the
scalar class id broadcast over the feature width, which only works for two classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def preference_targets(pref: Tensor) -> Tensor:
    """Soft target t = P(x1 preferred): 1 for ``pref == 1``, 0 for ``pref == 0``, 1/2 for a tie (``2``)."""
    if not bool(((pref == 0) | (pref == 1) | (pref == 2)).all()):
        raise ConfigError("p2c: preference labels must be 0 (x2 preferred), 1 (x1 preferred) or 2 (tie)")
    return torch.where(pref == 2, torch.full_like(pref, 0.5, dtype=torch.float), pref.float())


def p2c_loss(logits1: Tensor, logits2: Tensor, labels: Tensor, pref_scores1: Tensor, pref_scores2: Tensor,
             pref: Tensor, *, lambda_pref: float = 1.0, lambda_cons: float = 1.0,
             lambda_div: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """P2C loss (P49). ``logits1/2`` [B, C]: classifier logits of the two texts of each pair (same label
    ``labels`` [B]); ``pref_scores1/2`` [H, B] (or [B] for one head): preference-head scores; ``pref`` [B] in
    {0, 1, 2}. Returns ``(loss, parts)`` with parts ``cls``, ``pref``, ``cons``, ``div``."""
    for name, v in (("lambda_pref", lambda_pref), ("lambda_cons", lambda_cons), ("lambda_div", lambda_div)):
        if v < 0:
            raise ConfigError(f"p2c: {name} must be >= 0, got {v}")
    r1 = pref_scores1 if pref_scores1.dim() == 2 else pref_scores1.unsqueeze(0)
    r2 = pref_scores2 if pref_scores2.dim() == 2 else pref_scores2.unsqueeze(0)
    t = preference_targets(pref)
    l_cls = 0.5 * (F.cross_entropy(logits1, labels) + F.cross_entropy(logits2, labels))
    # log P(x1 > x2) = logsigmoid(r1 - r2): the two-way softmax of the released code, written stably
    d = r1 - r2                                                          # [H, B]
    l_pref = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d)).sum(-1).div(d.shape[1]).mean()
    p1 = logits1.softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    p2 = logits2.softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    delta = p1 - p2
    l_cons = torch.where(pref == 1, F.relu(-delta), torch.where(pref == 0, F.relu(delta), delta.abs())).mean()
    H = d.shape[0]
    if H > 1:
        logp = torch.stack([F.logsigmoid(-d), F.logsigmoid(d)], -1)      # [H, B, 2]
        p = logp.exp().detach()
        ce = -(p.unsqueeze(1) * logp.unsqueeze(0)).sum(-1).mean(-1)      # [H(target), H(pred)]
        l_div = (ce.sum() - ce.diagonal().sum()) / (H * (H - 1))
    else:
        l_div = d.new_zeros(())
    loss = l_cls + lambda_pref * l_pref + lambda_cons * l_cons - lambda_div * l_div
    return loss, {"cls": l_cls.detach(), "pref": l_pref.detach(), "cons": l_cons.detach(), "div": l_div.detach()}


class PreferenceHeads(nn.Module):
    """H preference heads ``r_h(h, y) = tanh(MLP_h([h, onehot(y)]))`` (P49); ``forward(h, y) -> [H, B]``."""

    def __init__(self, dim: int, classes: int, heads: int = 3, hidden: int | None = None):
        super().__init__()
        if dim < 1 or classes < 2 or heads < 1:
            raise ConfigError(f"p2c: need dim >= 1, classes >= 2, heads >= 1; got {dim}, {classes}, {heads}")
        hidden = hidden or dim
        self.classes = classes
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 1), nn.Tanh()) for _ in range(heads))

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        x = torch.cat([h, F.one_hot(y, self.classes).to(h.dtype)], dim=-1)
        return torch.stack([head(x).squeeze(-1) for head in self.heads])
