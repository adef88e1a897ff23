"""UNPG: unified negative pair generation for margin-based metric learning (P50).

Implements P50 (Jung et al., "Unified Negative Pair Generation toward Well-discriminative Feature Space for
Face Recognition", BMVC 2022). A classification loss (CosFace / ArcFace) only compares a sample with the
class weights (CLPG: one positive pair ``s_p = cos(x, W_y)`` with margin, negatives ``cos(x, W_j)``); the
class weights converge to their class centres, so very hard negatives are rare. UNPG appends the negative
pair similarities of the mini-batch (MLPG: ``cos(x_a, x_b)`` for ``y_a != y_b``), after removing outliers
with the box-and-whisker rule, as extra negative logits shared by every sample of the batch:

    S_n' = {s in S_n^batch : Q1 - w IQR <= s <= Q3 + w IQR}                     (noisy-pair filtering)
    L = - 1/B sum_i log  exp(s * s_p,i) / ( exp(s * s_p,i) + sum_{j != y_i} exp(s * cos(x_i, W_j))
                                             + sum_{s' in S_n'} exp(s * s') )

With ``S_n'`` empty (e.g. one class in the batch) it is exactly the margin loss it wraps.

Verified against: Jung-Jun-Uk/UNPG, recognition/models/build.py (``HeadAndLoss.forward``,
``box_and_whisker_algorithm``, ``convert_label_to_similarity``) and recognition/models/head.py (``UNPG``,
``CosFace``, ``ArcFace``), commit 8dde701edfec8569e25d3b4d726da9ed6216a9a1 (whisker 1.5 in
recognition/data/head.zoo.yaml; quartiles are read at sorted index ``int(0.25 n)`` and ``int(0.75 n)``, as
there). Gradients flow through the batch negatives, as in the authors' code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def batch_negative_similarities(embeddings: Tensor, labels: Tensor) -> Tensor:
    """All cosine similarities ``cos(x_a, x_b)``, a < b, between batch samples of different labels (1-D)."""
    z = F.normalize(embeddings, dim=-1)
    sim = z @ z.T
    different = (labels.unsqueeze(1) != labels.unsqueeze(0)).triu(diagonal=1)
    return sim[different]


def box_whisker_filter(similarities: Tensor, whisker: float = 1.5) -> Tensor:
    """Keep the values inside ``[Q1 - whisker IQR, Q3 + whisker IQR]`` (P50's noisy negative filtering)."""
    if whisker < 0:
        raise ConfigError(f"unpg: whisker must be >= 0, got {whisker}")
    n = similarities.numel()
    if n == 0:
        return similarities
    s = torch.sort(similarities).values
    q1, q3 = s[int(0.25 * n)], s[int(0.75 * n)]
    iqr = q3 - q1
    return s[(s >= q1 - whisker * iqr) & (s <= q3 + whisker * iqr)]


def margin_cosine_logits(embeddings: Tensor, weight: Tensor, labels: Tensor, margin: float,
                         kind: str = "cosface") -> Tensor:
    """Cosine logits ``cos(x, W_j)`` with the target class's margin applied (no scale):
    CosFace ``cos - m``, ArcFace ``cos(theta + m)`` (clamped to stay differentiable at |cos| = 1)."""
    if kind not in ("cosface", "arcface"):
        raise ConfigError(f"unpg: kind must be 'cosface' or 'arcface', got {kind!r}")
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(weight, dim=-1).T
    target = F.one_hot(labels, cos.shape[1]).bool()
    if kind == "cosface":
        return torch.where(target, cos - margin, cos)
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    return torch.where(target, torch.cos(theta + margin), cos)


def unpg_loss(cos_logits: Tensor, embeddings: Tensor, labels: Tensor, *, scale: float = 64.0,
              whisker: float = 1.5) -> Tensor:
    """UNPG loss (P50): cross-entropy over ``scale * [cos_logits, S_n']``.

    ``cos_logits`` [B, C]: class cosines with the margin already applied (see :func:`margin_cosine_logits`);
    ``embeddings`` [B, D]: the features whose batch negative pairs are appended; ``labels`` [B]."""
    if scale <= 0:
        raise ConfigError(f"unpg: scale must be > 0, got {scale}")
    sn = box_whisker_filter(batch_negative_similarities(embeddings, labels), whisker)
    logits = torch.cat([cos_logits, sn.unsqueeze(0).expand(cos_logits.shape[0], -1)], dim=1)
    return F.cross_entropy(scale * logits, labels)


class UNPGHead(nn.Module):
    """A CosFace / ArcFace classification head trained with UNPG (P50); ``unpg=False`` gives the plain margin
    loss (the baseline UNPG is added to). ``forward(embeddings, labels)`` returns the loss."""

    def __init__(self, dim: int, classes: int, *, scale: float = 64.0, margin: float = 0.35,
                 kind: str = "cosface", whisker: float = 1.5, unpg: bool = True):
        super().__init__()
        if dim < 1 or classes < 2:
            raise ConfigError(f"unpg: need dim >= 1 and classes >= 2, got dim={dim}, classes={classes}")
        if scale <= 0:
            raise ConfigError(f"unpg: scale must be > 0, got {scale}")
        if not 0 <= margin < 1:
            raise ConfigError(f"unpg: margin must be in [0, 1), got {margin}")
        if kind not in ("cosface", "arcface"):
            raise ConfigError(f"unpg: kind must be 'cosface' or 'arcface', got {kind!r}")
        if whisker < 0:
            raise ConfigError(f"unpg: whisker must be >= 0, got {whisker}")
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin, self.kind, self.whisker, self.unpg = scale, margin, kind, whisker, unpg

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = margin_cosine_logits(embeddings, self.weight, labels, self.margin, self.kind)
        if not self.unpg:
            return F.cross_entropy(self.scale * cos, labels)
        return unpg_loss(cos, embeddings, labels, scale=self.scale, whisker=self.whisker)
