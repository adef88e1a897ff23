"""Compile a preference structure to a loss by weighted model counting (P03, Richardson et al. 2024, sec. 4).

Each atom ``a`` is true with probability ``p_a = sigmoid(s_a)`` (``s_a``: its log-odds, :mod:`.scores`), atoms
independent; a world's weight is ``prod_a p_a^[a] (1 - p_a)^(1 - [a])`` and ``WMC(S)`` sums the weights of the
worlds in ``S``. The loss of ``(P, P_C, P_A)`` is the semantic loss in logistic form::

    loss = -log sigmoid(log WMC(top) - log WMC(bottom)),  top = (P & P_C) | P_A,  bottom = (~P & P_C) | P_A

computed in log space in float64 (every world weight by ``log sigmoid``; sums by ``logsumexp``) and returned in
the scores' dtype, gradients intact. For the one-hot structure ``top = {(1,0)}``, ``bottom = {(0,1)}`` and the
ratio is ``p_w (1-p_l) / ((1-p_w) p_l) = exp(s_w - s_l)``: DPO's ``-log sigmoid(s_w - s_l)`` exactly.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import ConfigError
from .formula import Formula, World
from .structure import Structure


def world_log_weights(atoms: tuple[str, ...], scores: Mapping[str, Tensor], ws: list[World]) -> Tensor:
    """``[len(ws), B]`` float64: ``log`` of each world's weight under independent atoms with log-odds ``scores``."""
    missing = [a for a in atoms if a not in scores]
    if missing:
        raise ConfigError(f"no score for atom {', '.join(missing)}; scores were given for "
                          f"{', '.join(sorted(scores)) or 'none'}")
    s = torch.stack([torch.as_tensor(scores[a]).double() for a in atoms], dim=-1)  # [B, n]
    on, off = _log_sigmoid(s), _log_sigmoid(-s)
    w = torch.tensor(ws, dtype=torch.float64, device=s.device)  # [K, n]
    return w @ on.transpose(0, 1) + (1 - w) @ off.transpose(0, 1)


def _log_sigmoid(x: Tensor) -> Tensor:
    # Exact everywhere: F.softplus switches to the identity above 20 (an error of 2e-9 there), and F.logsigmoid,
    # the same number, cost ~35 ms a call with two intra-op threads on the busy shared CPU (measured) against
    # microseconds for these three element-wise ops.
    return torch.minimum(x, torch.zeros_like(x)) - torch.log1p(torch.exp(-x.abs()))


def log_wmc(atoms: tuple[str, ...], scores: Mapping[str, Tensor], ws: list[World]) -> Tensor:
    """``[B]`` float64: ``log WMC`` of the world set ``ws`` (``-inf`` for an empty set)."""
    if not ws:
        ref = torch.as_tensor(next(iter(scores.values())))
        return torch.full(ref.shape, float("-inf"), dtype=torch.float64, device=ref.device)
    return torch.logsumexp(world_log_weights(atoms, scores, ws), dim=0)


def compile_loss(structure: Structure, scores: Mapping[str, Tensor]) -> Tensor:
    """``[B]`` loss of ``structure`` for atom log-odds ``scores`` (``{atom: [B] tensor}``), in their dtype.

    Refused (ConfigError): a structure with no ``top`` world (the loss would be infinite everywhere)."""
    top, bottom = sorted(structure.top()), sorted(structure.bottom())
    if not top:
        raise ConfigError(f"structure {structure} has no world on the preferred side: its loss is infinite")
    lt = log_wmc(structure.atoms, scores, top)
    lb = log_wmc(structure.atoms, scores, bottom)
    loss = -_log_sigmoid(lt - lb) if bottom else torch.zeros_like(lt)
    dtype = torch.as_tensor(scores[structure.atoms[0]]).dtype
    return loss.to(dtype if dtype.is_floating_point else torch.float32)


def semantic_loss(formula: Formula, scores: Mapping[str, Tensor]) -> Tensor:
    """The plain semantic loss ``-log Pr(formula)`` (Xu et al. 2018; P03 sec. 3): no constraint."""
    return compile_loss(Structure(formula), scores)


def probability(formula: Formula, scores: Mapping[str, Tensor], given: Formula | None = None) -> Tensor:
    """``Pr(formula)`` or ``Pr(formula | given)`` under independent atoms, float64 ``[B]``."""
    st = Structure(formula, given=given) if given is not None else Structure(formula)
    lt = log_wmc(st.atoms, scores, sorted((formula & st.given).models(st.atoms)))
    lz = log_wmc(st.atoms, scores, sorted(st.given.models(st.atoms)))
    return torch.exp(lt - lz)
