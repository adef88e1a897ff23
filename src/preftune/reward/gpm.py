"""P31 GPM: preference embeddings and the skew-symmetric preference operator.

Zhang, Zhang, Wu, Xu, Gu 2024, "Beyond Bradley-Terry Models: A General Preference Model for Language Model
Alignment" (arXiv 2410.02197; v1 "General Preference Modeling with Preference Representations..."), sec. 4.

A General Preference embedding Model (GPM) maps a prompt and a response to one embedding
``v_{y|x}`` in ``R^{2k}`` (unit length: the paper's eigenvector embedding head normalises it), and a prompt to
``k`` non-negative eigenvalues ``lambda_l(x)`` (the eigenvalue scale gate, a softmax over a linear head on the
prompt's hidden state). The preference operator is block-diagonal and skew-symmetric,

    R^>(x) = blockdiag(lambda_1(x) J, ..., lambda_k(x) J),      J = [[0, -1], [1, 0]],

the preference score is ``s(y_i > y_j | x) = <R^>(x) v_i, v_j>``, which written out per block is

    s = sum_l lambda_l(x) * (v_i[2l] * v_j[2l+1] - v_i[2l+1] * v_j[2l]),

and ``P(y_i > y_j | x) = sigmoid(s / tau)``. ``s`` is skew-symmetric (``s(i > j) = -s(j > i)``, so the two
probabilities sum to 1 and ``s(i > i) = 0``), and with ``k >= 1`` it expresses cyclic preferences that no scalar
reward can (three embeddings 120 degrees apart on one block form A > B > C > A). K responses cost K embeddings
(linear, like a Bradley-Terry model), against K^2 forwards of a pairwise preference model. Training minimises
``-log sigmoid(s(y_w > y_l | x) / tau)`` over preference pairs (the paper's GPM loss; a per-pair margin ``m``
enters as ``(s - m) / tau``, as in the authors' code).

Authors' code (read, not copied): github.com/general-preference/general-preference-model
  * ``general_preference/models/loss.py``, ``HighDimGeneralPreferenceLoss`` and ``HighDimGeneralPreferenceMoELoss``
    @ b4c3195a801a5315e437b7b0b9408ac23f7958ea: ``result = <R chosen, rejected>`` with
    ``R[2l, 2l+1] = -lambda_l``, ``R[2l+1, 2l] = lambda_l`` -- the same sign as here, loss
    ``-logsigmoid((result - margin) / tau)``;
  * ``general_preference/models/rw_model_general_preference.py``, ``create_skew_symmetric_block_matrix`` and
    ``custom_forward`` @ 2494facde22381774736df08a65dc0c2913924ff: the gate is ``softmax(prompt_head(h_x) /
    sqrt(hidden)) * k`` and the L2 normalisation of ``v`` is commented out;
  * ``gpm_example_usage.py`` @ 1448d4db00678f02b100817d47c8205f0e4004f8 (the released models' usage):
    ``softmax(prompt_head(h_x))`` and ``v = normalize(value_head(h))``, as the paper describes.
  Where the two disagree we follow the paper and the released usage (unit ``v``, plain softmax gate); pass
  ``normalize=False`` or ``gate=False`` (the authors' "no_moe" configurations: every ``lambda_l = 1``) for the
  variants. Their released configurations use ``tau = 0.1`` and ``2k`` in {2, 4, 6, 8}.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _check_even(v: Tensor) -> int:
    if v.shape[-1] % 2:
        raise ValueError(f"a preference embedding has an even size 2k; got {v.shape[-1]}")
    return v.shape[-1] // 2


def skew_operator(gate: Tensor) -> Tensor:
    """``R^>(x)`` as a dense matrix: ``gate`` ``[..., k]`` (the eigenvalues ``lambda_l(x)``) -> ``[..., 2k, 2k]``,
    block ``l`` equal to ``lambda_l * [[0, -1], [1, 0]]`` (P31 sec. 4). For tests and inspection; the score
    itself never builds it (:func:`preference_score`)."""
    k = gate.shape[-1]
    R = gate.new_zeros(*gate.shape[:-1], 2 * k, 2 * k)
    idx = torch.arange(k, device=gate.device)
    R[..., 2 * idx, 2 * idx + 1] = -gate
    R[..., 2 * idx + 1, 2 * idx] = gate
    return R


def preference_score(v_i: Tensor, v_j: Tensor, gate: Tensor | None = None) -> Tensor:
    """``s(y_i > y_j | x) = <R^>(x) v_i, v_j>`` (P31 sec. 4): ``v_i``, ``v_j`` ``[..., 2k]``, ``gate`` ``[..., k]``
    (None: every ``lambda_l = 1``) -> ``[...]``. Computed per 2x2 block, without the ``2k x 2k`` matrix."""
    k = _check_even(v_i)
    a, b = v_i.unflatten(-1, (k, 2)), v_j.unflatten(-1, (k, 2))
    per_block = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return per_block.sum(-1) if gate is None else (gate * per_block).sum(-1)


def score_matrix(v: Tensor, gate: Tensor | None = None) -> Tensor:
    """Every pairwise score of K responses to one prompt from their K embeddings: ``v`` ``[..., K, 2k]``,
    ``gate`` ``[..., k]`` -> ``S`` ``[..., K, K]`` with ``S[i, j] = s(y_i > y_j | x)`` (skew-symmetric)."""
    k = _check_even(v)
    g = v.new_ones(*v.shape[:-2], k) if gate is None else gate
    rv = torch.einsum("...kl,...ml->...mk", skew_operator(g), v)  # R^> v_i for every i
    return torch.einsum("...ik,...jk->...ij", rv, v)


def policy_scores(S: Tensor) -> Tensor:
    """``s(y_i > pi | x)``, estimated as ``mean_j S[i, j]`` over the K samples of ``pi`` that ``S`` compares
    (the diagonal, 0, included, as the authors' ``compute_score_from_raw.py`` averages the table's rows). This is
    the preference score against the policy that GPO (:mod:`preftune.objectives.gpo`) uses in place of SPPO's
    win rate."""
    return S.mean(-1)


def preference_probability(v_i: Tensor, v_j: Tensor, gate: Tensor | None = None, *, tau: float = 0.1) -> Tensor:
    """``P(y_i > y_j | x) = sigmoid(s(y_i > y_j | x) / tau)`` (P31 sec. 4)."""
    return torch.sigmoid(preference_score(v_i, v_j, gate) / tau)


def gpm_loss(v_w: Tensor, v_l: Tensor, gate: Tensor | None = None, *, tau: float = 0.1,
             margin: Tensor | None = None) -> Tensor:
    """Per-pair GPM loss ``-log sigmoid((s(y_w > y_l | x) - m) / tau)`` (P31 sec. 4, the preference embedding
    model's log-likelihood; margin ``m`` as in the authors' ``HighDimGeneralPreferenceMoELoss``)."""
    if tau <= 0:
        raise ConfigError(f"tau must be > 0 (the preference temperature); got {tau}")
    s = preference_score(v_w, v_l, gate)
    if margin is not None:
        s = s - margin.to(s.dtype)
    return -F.logsigmoid(s / tau)


class GPMHead(nn.Module):
    """The two heads of a GPM on a backbone's hidden states (P31 sec. 4):

    * the eigenvector embedding head: ``v = normalize(W_v h_{x,y})`` in ``R^{2k}`` (``h_{x,y}``: the hidden state
      of the prompt-and-response sequence; without ``normalize`` the raw projection);
    * the eigenvalue scale gate: ``lambda(x) = softmax(W_g h_x)`` in ``R^k_{>=0}`` (``h_x``: the prompt's hidden
      state); ``gate=False`` fixes every ``lambda_l = 1``.

    Both linear maps have no bias, as in the authors' ``value_head`` and ``prompt_head``."""

    def __init__(self, hidden_size: int, k: int = 2, *, gate: bool = True, normalize: bool = True):
        super().__init__()
        if k < 1:
            raise ConfigError(f"k (the number of 2x2 blocks) must be >= 1; got {k}")
        self.k, self.normalize = k, normalize
        self.embed = nn.Linear(hidden_size, 2 * k, bias=False)
        self.gate = nn.Linear(hidden_size, k, bias=False) if gate else None

    def embedding(self, h: Tensor) -> Tensor:
        v = self.embed(h)
        return F.normalize(v, dim=-1) if self.normalize else v

    def eigenvalues(self, h_prompt: Tensor | None) -> Tensor | None:
        if self.gate is None:
            return None
        if h_prompt is None:
            raise ValueError("this GPM head has an eigenvalue gate: give the prompt's hidden state")
        return torch.softmax(self.gate(h_prompt), dim=-1)


class GPM(nn.Module):
    """A General Preference embedding Model: ``encoder(ids, mask) -> [N, H]`` hidden states (any module: a
    bag-of-tokens embedding, :class:`LastTokenEncoder` around a Hugging Face model) and a :class:`GPMHead`.

    ``forward(seq_ids, seq_mask, prompt_ids, prompt_mask)`` returns ``(v [N, 2k], gate [N, k] or None)``: ``v`` from
    the prompt-and-response sequence, the gate from the prompt alone (one more encoder call per prompt, shared by
    all its responses, so the cost stays linear in the number of responses)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, k: int = 2, *, gate: bool = True,
                 normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.head = GPMHead(hidden_size, k, gate=gate, normalize=normalize)

    def embed(self, seq_ids: Tensor, seq_mask: Tensor) -> Tensor:
        """``v_{y|x}`` ``[N, 2k]`` of prompt-and-response sequences."""
        return self.head.embedding(self.encoder(seq_ids, seq_mask))

    def eigenvalues(self, prompt_ids: Tensor | None, prompt_mask: Tensor | None) -> Tensor | None:
        """``lambda(x)`` ``[N, k]`` of prompts (None without a gate)."""
        if self.head.gate is None:
            return None
        if prompt_ids is None or prompt_mask is None:
            raise ValueError("this GPM has an eigenvalue gate: give prompt_ids and prompt_mask")
        return self.head.eigenvalues(self.encoder(prompt_ids, prompt_mask))

    def forward(self, seq_ids: Tensor, seq_mask: Tensor, prompt_ids: Tensor | None = None,
                prompt_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        return self.embed(seq_ids, seq_mask), self.eigenvalues(prompt_ids, prompt_mask)


class LastTokenEncoder(nn.Module):
    """A Hugging Face model as a GPM encoder: the last layer's hidden state at each sequence's last real token
    (right padding), as the authors read ``last_hidden_state`` at the EOS position."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1]
        last = mask.long().sum(-1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]


__all__ = ["GPM", "GPMHead", "LastTokenEncoder", "gpm_loss", "policy_scores", "preference_probability",
           "preference_score", "score_matrix", "skew_operator"]
