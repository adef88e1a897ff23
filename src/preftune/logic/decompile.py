"""Decompile a loss to its preference structure (P03, Richardson et al. 2024, sec. 5), exactly and by numbers.

A loss in the family is ``-log sigmoid(log WMC(T) - log WMC(B))`` for two world sets ``T`` and ``B``. Multiplying
both counts by ``prod_a (1 + e^{s_a})`` turns each into ``Q_S(s) = sum_{w in S} exp(<w, s>)``, so
``q = exp(-loss) = Q_T / (Q_T + Q_B)`` is a ratio of exponential polynomials whose coefficients are 0 or 1. The
decompiler evaluates the loss at random scores and finds every role table (``T``, ``B``) that reproduces it:

* up to 3 atoms, by trying all ``4^(2^n)`` tables at once (65,536 for three atoms; exact up to ``tol``);
* with 4 atoms, as the null space of the linear system ``Q_a(s_k)(1 - q_k) - Q_b(s_k) q_k = 0`` in the 32
  unknown coefficients (it is one-dimensional when ``Q_T`` and ``Q_B`` share no factor; the answer is the 0/1
  vector spanning it).

Several tables can give the same function (``-log p_w`` is ``Pr(M_w)``, or ``Pr(M_w | ~M_l)``: the atoms are
independent); the decompiler returns the one that counts the most worlds (fewest ``excluded``, then fewest
``both``) -- the least assuming reading -- and reports how many others there are.

:func:`decompile_objective` probes preftune's registered objectives through their atom scores
(:mod:`.scores`): the score of each atom is mapped back to the log-probs the objective reads.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .compile import compile_loss
from .formula import order_atoms, worlds
from .structure import Structure, from_roles

LossFn = Callable[[Mapping[str, Tensor]], Tensor]


@dataclass
class Decompiled:
    """The structure found, how many other role tables give the same loss, and the largest difference between
    the compiled structure and the loss at fresh random scores (a check, not an estimate)."""

    structure: Structure
    alternatives: int
    max_error: float


def decompile(loss_fn: LossFn, atoms: Sequence[str] = ("M_w", "M_l"), *, points: int = 48, seed: int = 0,
              tol: float = 1e-6, scale: float = 3.0) -> Decompiled:
    """The preference structure of ``loss_fn`` (``{atom: [K] float64 log-odds} -> [K] loss``) over ``atoms``.

    Raises ConfigError when no structure over these atoms reproduces the loss to ``tol`` (relative): the loss is
    not of the form ``-log sigmoid(log WMC(T) / WMC(B))`` in these atom scores."""
    atoms = order_atoms(atoms)
    if not 1 <= len(atoms) <= 4:
        raise ConfigError(f"decompile works over 1 to 4 atoms, got {len(atoms)}")
    points = max(points, 6 * 2 ** len(atoms))  # the null-space system needs more rows than its 2^(n+1) unknowns
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(points, len(atoms), generator=g, dtype=torch.float64) * 2 - 1) * scale
    loss = _evaluate(loss_fn, atoms, s)
    ws = worlds(atoms)
    e = np.exp(np.array(ws, dtype=np.float64) @ s.numpy().T)  # [W, K]: exp(<w, s>)
    found = _enumerate(e, loss, tol) if len(atoms) <= 3 else _null_space(e, loss, tol, atoms)
    if not found:
        raise ConfigError(f"no preference structure over {', '.join(atoms)} gives this loss: it is not "
                          "-log sigmoid(log WMC(T) - log WMC(B)) in these atom scores")
    found.sort(key=lambda tb: (_count_excluded(tb, len(ws)), len(tb[0] & tb[1]), sorted(tb[0]), sorted(tb[1])))
    t, b = found[0]
    structure = from_roles(atoms, top=[ws[i] for i in t], bottom=[ws[i] for i in b])
    s2 = (torch.rand(points, len(atoms), generator=g, dtype=torch.float64) * 2 - 1) * scale
    scores = {a: s2[:, i] for i, a in enumerate(atoms)}
    err = (compile_loss(structure, scores) - _evaluate(loss_fn, atoms, s2)).abs().max().item()
    return Decompiled(structure, len(found) - 1, err)


def _evaluate(loss_fn: LossFn, atoms: tuple[str, ...], s: Tensor) -> Tensor:
    loss = torch.as_tensor(loss_fn({a: s[:, i].clone() for i, a in enumerate(atoms)})).double().reshape(-1)
    if loss.shape[0] != s.shape[0] or not torch.isfinite(loss).all() or (loss < -1e-9).any():
        raise ConfigError("the loss must give one finite, non-negative value per score row to be decompiled")
    return loss


def _count_excluded(tb: tuple[frozenset, frozenset], n_worlds: int) -> int:
    return n_worlds - len(tb[0] | tb[1])


def _enumerate(e: np.ndarray, loss: Tensor, tol: float) -> list[tuple[frozenset, frozenset]]:
    # numpy: these are small dense arrays, and torch's intra-op threads cost more than the arithmetic here
    e_, l_ = e, loss.numpy()
    roles = np.array(list(itertools.product(range(4), repeat=e_.shape[0])))  # 0 excluded, 1 top, 2 bottom, 3 both
    t = ((roles == 1) | (roles == 3)).astype(np.float64)
    b = ((roles == 2) | (roles == 3)).astype(np.float64)
    qt, qb = t @ e_, b @ e_  # [C, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        cand = -np.log(qt / (qt + qb))  # nan where both sets are empty, inf where the top is
    ok = np.abs(cand - l_) <= tol * np.maximum(np.abs(l_), 1.0)
    return [(frozenset(np.flatnonzero(t[c]).tolist()), frozenset(np.flatnonzero(b[c]).tolist()))
            for c in np.flatnonzero(ok.all(axis=1))]


def _null_space(e: np.ndarray, loss: Tensor, tol: float, atoms: tuple[str, ...]) -> list[tuple[frozenset, frozenset]]:
    e_, q = e, np.exp(-loss.numpy())
    a = np.concatenate([(e_ * (1 - q)).T, -(e_ * q).T], axis=1)  # [K, 2W]
    a = a / np.abs(a).max(axis=1, keepdims=True)
    _, sv, vh = np.linalg.svd(a)  # a has more rows than columns: one singular value per unknown
    k = int((sv < 1e-9 * sv[0]).sum())
    if k > 1:
        raise ConfigError(f"{k} independent role tables over {', '.join(atoms)} give this loss; "
                          "decompile it over fewer atoms (drop one it does not read)")
    if k == 0:
        return []
    v = vh[-1] / vh[-1][np.abs(vh[-1]).argmax()]
    r = np.round(v)
    if np.abs(v - r).max() > 1e3 * tol or (r < 0).any() or (r > 1).any():
        return []
    w = e_.shape[0]
    return [(frozenset(np.flatnonzero(r[:w]).tolist()), frozenset(np.flatnonzero(r[w:]).tolist()))]


# ----------------------------------------------------------------------------- preftune's objectives, probed


def _pair(chosen: Tensor, rejected: Tensor, **kw: Tensor):
    from ..objectives.base import PairStats

    ones = torch.ones_like(chosen)
    return PairStats(policy_chosen_logps=chosen, policy_rejected_logps=rejected, chosen_lengths=ones,
                     rejected_lengths=ones, **kw)


def objective_loss_fn(name: str, **hp: float) -> tuple[LossFn, tuple[str, ...]]:
    """``(loss_fn, atoms)``: preftune objective ``name``'s preference term as a function of atom log-odds.

    The atom scores are those of :mod:`.scores` for that objective, inverted to log-probs (one token per
    response, so sums and averages agree):

    * ``dpo``: ``s = beta h``, so ``log pi = s / beta`` against a zero reference;
    * ``dpo_reference``: DPO with the reference as atoms: ``log pi = s_M / beta``, ``log pi_ref = s_R / beta``;
    * ``cpo`` (``alpha = 0``), ``simpo``: ``log pi = s / beta`` (SimPO: the chosen plus ``gamma``);
    * ``orpo``, ``asft``, ``sft``: the atom probability is the token probability, ``log pi = logsigmoid(s)``;
      ORPO (``lam = 1``) and ASFT (``lam = 1``) have their NLL term removed, which is ``-log pi(y_w)``.
    """
    from ..objectives import get

    beta = float(hp.get("beta", 0.1))
    lsig = torch.nn.functional.logsigmoid
    if name == "dpo":
        obj = get("dpo", beta=beta)
        return (lambda s: obj(_pair(s["M_w"] / beta, s["M_l"] / beta, reference_chosen_logps=0 * s["M_w"],
                                    reference_rejected_logps=0 * s["M_l"])).loss), ("M_w", "M_l")
    if name == "dpo_reference":
        obj = get("dpo", beta=beta)
        return (lambda s: obj(_pair(s["M_w"] / beta, s["M_l"] / beta, reference_chosen_logps=s["R_w"] / beta,
                                    reference_rejected_logps=s["R_l"] / beta)).loss), ("M_w", "M_l", "R_w", "R_l")
    if name == "cpo":
        obj = get("cpo", beta=beta, alpha=0.0)
        return (lambda s: obj(_pair(s["M_w"] / beta, s["M_l"] / beta)).loss), ("M_w", "M_l")
    if name == "simpo":
        beta, gamma = float(hp.get("beta", 2.0)), float(hp.get("gamma", 1.0))
        obj = get("simpo", beta=beta, gamma=gamma)
        return (lambda s: obj(_pair((s["M_w"] + gamma) / beta, s["M_l"] / beta)).loss), ("M_w", "M_l")
    if name in ("orpo", "asft"):
        obj = get(name, lam=1.0, **({"nll_average": "sequence"} if name == "orpo" else {}))

        def without_nll(s: Mapping[str, Tensor]) -> Tensor:
            lw, ll = lsig(s["M_w"]), lsig(s["M_l"])
            return obj(_pair(lw, ll)).loss + lw  # loss = -log pi(y_w) + term
        return without_nll, ("M_w", "M_l")
    if name == "sft":
        obj = get("sft", normalize="sequence")
        return (lambda s: obj(_pair(lsig(s["M_w"]), lsig(s["M_l"]))).loss), ("M_w", "M_l")
    raise ConfigError(f"no probe for objective '{name}'; one of {', '.join(PROBED)}")


PROBED = ("dpo", "dpo_reference", "cpo", "simpo", "orpo", "asft", "sft")


def decompile_objective(name: str, **hp: float) -> Decompiled:
    """The preference structure of preftune objective ``name`` (one of :data:`PROBED`)."""
    fn, atoms = objective_loss_fn(name, **hp)
    return decompile(fn, atoms)


__all__ = ["Decompiled", "PROBED", "decompile", "decompile_objective", "objective_loss_fn"]
