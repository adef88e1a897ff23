"""Preference structures (P03, Richardson et al. 2024, sec. 4): ``P̄ = (P, P_C, P_A)``.

* ``P`` -- the core formula: what the loss asks to be true;
* ``P_C`` -- the conditioning constraint: the worlds the loss counts at all (DPO's one-hot constraint
  ``M_w ^ M_l``: exactly one of the two responses is good);
* ``P_A`` -- the additive constraint: worlds counted on *both* sides of the ratio.

Its loss is the semantic loss of the paper in its logistic form (sec. 4), with WMC the weighted model count::

    loss = -log sigmoid( log WMC((P & P_C) | P_A) - log WMC((~P & P_C) | P_A) )
         = -log  WMC(top) / (WMC(top) + WMC(bottom))

With ``P_A = false`` that is ``-log WMC(P & P_C) / WMC(P_C) = -log Pr(P | P_C)``; with ``P_C = true`` too, the
plain semantic loss ``-log Pr(P)`` (Xu et al. 2018). Each world therefore plays one of four *roles*: on top
only (``top``: a world the loss pushes towards), on the bottom only (``bottom``: pushed away from), both (``both``:
it cancels to first order), or neither (``excluded``). Over ``n`` atoms there are ``4^(2^n)`` role tables, the
size of the loss space the paper counts. A structure *is* its role table: two structures with the same table are
the same loss, whatever their formulas look like (:func:`canonical` picks the shortest formulas).

Note on sources: the paper's body text was not reachable from this workplace (the stored copies give its
abstract and summary, which name ``(P, P_C, P_A)``, the semantic loss and the ``4^(2^n)`` count). The reading of
``P_A`` above -- worlds counted in both numerator and denominator -- is the one that yields exactly ``4^(2^n)``
losses and expresses CPO over raw sequence probabilities (see :data:`CPO_PROBABILITY`); treat it as ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ..errors import ConfigError
from .formula import FALSE, M_L, M_W, R_L, R_W, TRUE, Formula, World, display, formula_of, order_atoms, parse, worlds

ROLES = ("top", "bottom", "both", "excluded")


@dataclass(frozen=True)
class Structure:
    """A preference structure ``(P, P_C, P_A)``; ``atoms`` (default: those the formulas mention) fixes the worlds.

    Build one from formulas or text: ``Structure("M_w & ~M_l", given="M_w ^ M_l")``.
    """

    core: Formula
    given: Formula = TRUE
    additive: Formula = FALSE
    atoms: tuple[str, ...] = ()

    def __init__(self, core: Formula | str, given: Formula | str = TRUE, additive: Formula | str = FALSE,
                 atoms: Sequence[str] = ()):
        core, given, additive = (parse(f) if isinstance(f, str) else f for f in (core, given, additive))
        mentioned = core.atoms() | given.atoms() | additive.atoms()
        names = order_atoms(set(atoms) | mentioned)
        if not names:
            raise ConfigError("a preference structure needs at least one atom (M_w, M_l, R_w, R_l, ...)")
        if len(names) > 6:
            raise ConfigError(f"a preference structure over {len(names)} atoms: at most 6 are enumerated")
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "given", given)
        object.__setattr__(self, "additive", additive)
        object.__setattr__(self, "atoms", names)

    # roles ----------------------------------------------------------------------------------
    def over(self, atoms: Sequence[str]) -> "Structure":
        """The same structure with its worlds enumerated over ``atoms`` (a superset of its own)."""
        return Structure(self.core, self.given, self.additive, atoms=tuple(atoms))

    def top(self) -> frozenset[World]:
        """Worlds of the numerator: ``(P & P_C) | P_A``."""
        return ((self.core & self.given) | self.additive).models(self.atoms)

    def bottom(self) -> frozenset[World]:
        """Worlds of the denominator's other part: ``(~P & P_C) | P_A``."""
        return ((~self.core & self.given) | self.additive).models(self.atoms)

    def roles(self) -> dict[World, str]:
        """Each world's role: ``top``, ``bottom``, ``both`` or ``excluded``."""
        t, b = self.top(), self.bottom()
        return {w: ("both" if w in t and w in b else "top" if w in t else "bottom" if w in b else "excluded")
                for w in worlds(self.atoms)}

    def meaning(self) -> frozenset[World]:
        """The boolean semantics: the worlds the loss does not push away from (all but the ``bottom``-only ones).

        For the one-hot structure that is ``M_l -> M_w`` ("if y_l is good, so is y_w"): DPO's logic."""
        return frozenset(w for w, r in self.roles().items() if r != "bottom")

    def meaning_formula(self) -> Formula:
        return formula_of(self.atoms, self.meaning())

    def same_loss(self, other: "Structure") -> bool:
        """Whether the two structures give the same loss for every score: the same roles over their joint atoms.

        (Two different role tables can still coincide as functions -- ``-log p_w`` is both ``Pr(M_w)`` and
        ``Pr(M_w | ~M_l)`` -- :func:`preftune.logic.decompile` finds such coincidences numerically.)"""
        atoms = order_atoms(set(self.atoms) | set(other.atoms))
        return self.over(atoms).roles() == other.over(atoms).roles()

    def canonical(self) -> "Structure":
        """Shortest formulas with the same roles (``P`` exact but free on both-worlds, ``P_C`` free on both)."""
        return from_roles(self.atoms, self.roles())

    def __str__(self) -> str:
        parts = [f"P = {display(self.core)}"]
        if self.given != TRUE:
            parts.append(f"P_C = {display(self.given)}")
        if self.additive != FALSE:
            parts.append(f"P_A = {display(self.additive)}")
        return "(" + "; ".join(parts) + ")"


def from_roles(atoms: Sequence[str], roles: Mapping[World, str] | None = None, *, top: Iterable[World] = (),
               bottom: Iterable[World] = ()) -> Structure:
    """The shortest structure with the given world roles (or the given top and bottom world sets)."""
    atoms = tuple(atoms)
    if roles is None:
        t, b = frozenset(top), frozenset(bottom)
        roles = {w: ("both" if w in t and w in b else "top" if w in t else "bottom" if w in b else "excluded")
                 for w in worlds(atoms)}
    bad = {r for r in roles.values()} - set(ROLES)
    if bad:
        raise ConfigError(f"unknown world role {sorted(bad)[0]!r}; one of {', '.join(ROLES)}")
    of = {r: frozenset(w for w, x in roles.items() if x == r) for r in ROLES}
    # P is false on excluded worlds (it could be anything there): "M_w & ~M_l" reads better than "~M_l"
    core = formula_of(atoms, of["top"], of["both"])
    given = formula_of(atoms, of["top"] | of["bottom"], of["both"])
    additive = formula_of(atoms, of["both"])
    return Structure(core, given, additive, atoms=atoms)


# ----------------------------------------------------------------------------- the structures preftune's losses have

#: DPO, CPO, SimPO and ORPO's odds-ratio term (each with its own atom scores, :mod:`preftune.logic.scores`):
#: "y_w is good and y_l is not", counted only where exactly one of them is good.
ONE_HOT = Structure(M_W & ~M_L, given=M_W ^ M_L)

#: DPO with the reference model's atoms kept apart (policy and reference scores ``beta log pi``): the policy
#: prefers y_w and the reference y_l, against the opposite, all other worlds excluded.
DPO_REFERENCE = Structure(M_W & ~M_L & ~R_W & R_L,
                          given=(M_W & ~M_L & ~R_W & R_L) | (~M_W & M_L & R_W & ~R_L))

#: Unlikelihood (Welleck et al. 2020) on the pair -- ASFT's alignment term: ``-log p_w - log(1 - p_l)``.
UNLIKELIHOOD = Structure(M_W & ~M_L)

#: Cross-entropy (SFT) on the chosen response: ``-log p_w``.
CROSS_ENTROPY = Structure(M_W, atoms=("M_w", "M_l"))

#: CPO's ratio ``p_w / p_l`` over raw probabilities (atom probability = pi(y|x)): the both-good world on both
#: sides. With atom log-odds ``log pi`` instead (:func:`~preftune.logic.scores.log_prob_scores`), CPO is ONE_HOT.
CPO_PROBABILITY = Structure(M_W, given=M_W | M_L, additive=M_W & M_L)

NAMED = {"one_hot": ONE_HOT, "dpo_reference": DPO_REFERENCE, "unlikelihood": UNLIKELIHOOD,
         "cross_entropy": CROSS_ENTROPY, "cpo_probability": CPO_PROBABILITY}
