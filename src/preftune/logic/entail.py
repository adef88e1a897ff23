"""Entailment between losses (P03, Richardson et al. 2024, sec. 5): one structure's boolean semantics implies
another's, checked by enumerating the worlds over the atoms of both (at most 16: exact).

The boolean semantics of a structure is the set of worlds its loss does not push away from
(:meth:`~preftune.logic.structure.Structure.meaning`): every world except the ``bottom``-only ones. ``a`` entails
``b`` when every world ``a`` accepts, ``b`` accepts too: ``a`` is the stricter loss. Over ``(M_w, M_l)``::

    unlikelihood  (M_w & ~M_l)   |=  cross-entropy (M_w)  |=  one-hot / DPO  (M_l -> M_w)

so DPO asks the least of the three: only that y_l is not good without y_w.
"""
from __future__ import annotations

from typing import Mapping

from .formula import order_atoms
from .structure import Structure


def _joint(a: Structure, b: Structure) -> tuple[Structure, Structure]:
    atoms = order_atoms(set(a.atoms) | set(b.atoms))
    return a.over(atoms), b.over(atoms)


def entails(a: Structure, b: Structure) -> bool:
    """``a |= b``: every world that ``a``'s semantics accepts, ``b``'s accepts (over the atoms of both)."""
    a, b = _joint(a, b)
    return a.meaning() <= b.meaning()


def equivalent(a: Structure, b: Structure) -> bool:
    """Same boolean semantics (the losses may still differ: the semantics forgets excluded vs top worlds)."""
    a, b = _joint(a, b)
    return a.meaning() == b.meaning()


def entailment_order(named: Mapping[str, Structure]) -> list[tuple[str, str]]:
    """The strict entailments ``(a, b)`` (``a |= b``, not equivalent) between the named structures, reduced to
    the covering pairs (no ``a |= c`` listed when ``a |= b |= c`` is): the edges of the paper's lattice figure."""
    names = list(named)
    strict = {(x, y) for x in names for y in names
              if x != y and entails(named[x], named[y]) and not entails(named[y], named[x])}
    return sorted((x, y) for x, y in strict if not any((x, z) in strict and (z, y) in strict for z in names))


__all__ = ["entailment_order", "entails", "equivalent"]
