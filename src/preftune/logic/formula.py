"""A small propositional language over the atoms of a preference pair (P03, Richardson et al. 2024, sec. 3).

An atom is a proposition about one response: ``M_w`` -- ``M(x, y_w)``, "the model deems the preferred response
y_w a good answer to x"; ``M_l`` -- ``M(x, y_l)``; with a reference model, ``R_w`` / ``R_l`` -- ``Ref(x, y_w)``,
``Ref(x, y_l)``, the same statements of the reference model. Formulas are built with ``~`` (not), ``&`` (and),
``|`` (or), ``^`` (exclusive or), ``>>`` (implies) and :func:`iff`, or parsed from text with :func:`parse`::

    parse("M(x,y_w) & ~M(x,y_l)")  ==  M_W & ~M_L
    parse("M_l -> M_w")            ==  M_L >> M_W

A *world* is one truth assignment to a tuple of atoms (``(1, 0)`` over ``("M_w", "M_l")``: y_w good, y_l not).
Everything here is exact and finite: a pair has at most four atoms, so at most 16 worlds are enumerated.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ..errors import ConfigError

# The canonical atoms of a preference pair, in the order worlds are enumerated; other names sort after them.
PAIR_ATOMS = ("M_w", "M_l", "R_w", "R_l")
_DISPLAY = {"M_w": "M(x,y_w)", "M_l": "M(x,y_l)", "R_w": "Ref(x,y_w)", "R_l": "Ref(x,y_l)"}

World = tuple[int, ...]


class Formula:
    """Base of the formula tree. ``holds(world)`` evaluates under a ``{atom: bool}`` assignment."""

    def holds(self, world: Mapping[str, bool]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def atoms(self) -> frozenset[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __invert__(self) -> "Formula":
        return Not(self)

    def __and__(self, other: "Formula") -> "Formula":
        return And(self, _formula(other))

    def __or__(self, other: "Formula") -> "Formula":
        return Or(self, _formula(other))

    def __xor__(self, other: "Formula") -> "Formula":
        return Xor(self, _formula(other))

    def __rshift__(self, other: "Formula") -> "Formula":
        return Implies(self, _formula(other))

    def models(self, atoms: Sequence[str] | None = None) -> frozenset[World]:
        """The worlds (0/1 tuples over ``atoms``, default :func:`order_atoms` of this formula's) where it holds."""
        atoms = order_atoms(self.atoms()) if atoms is None else tuple(atoms)
        missing = self.atoms() - set(atoms)
        if missing:
            raise ConfigError(f"formula {self} mentions {', '.join(sorted(missing))}, not among the atoms "
                              f"{', '.join(atoms)}")
        return frozenset(w for w in worlds(atoms) if self.holds(dict(zip(atoms, map(bool, w)))))


@dataclass(frozen=True)
class Const(Formula):
    value: bool

    def holds(self, world: Mapping[str, bool]) -> bool:
        return self.value

    def atoms(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True)
class Atom(Formula):
    name: str

    def holds(self, world: Mapping[str, bool]) -> bool:
        return bool(world[self.name])

    def atoms(self) -> frozenset[str]:
        return frozenset({self.name})

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Not(Formula):
    arg: Formula

    def holds(self, world: Mapping[str, bool]) -> bool:
        return not self.arg.holds(world)

    def atoms(self) -> frozenset[str]:
        return self.arg.atoms()

    def __str__(self) -> str:
        return f"~{_wrap(self.arg, Not)}"


@dataclass(frozen=True)
class _Binary(Formula):
    left: Formula
    right: Formula
    symbol = "?"

    def atoms(self) -> frozenset[str]:
        return self.left.atoms() | self.right.atoms()

    def __str__(self) -> str:
        return f"{_wrap(self.left, type(self))} {self.symbol} {_wrap(self.right, type(self))}"


class And(_Binary):
    symbol = "&"

    def holds(self, world: Mapping[str, bool]) -> bool:
        return self.left.holds(world) and self.right.holds(world)


class Or(_Binary):
    symbol = "|"

    def holds(self, world: Mapping[str, bool]) -> bool:
        return self.left.holds(world) or self.right.holds(world)


class Xor(_Binary):
    symbol = "^"

    def holds(self, world: Mapping[str, bool]) -> bool:
        return self.left.holds(world) != self.right.holds(world)


class Implies(_Binary):
    symbol = "->"

    def holds(self, world: Mapping[str, bool]) -> bool:
        return (not self.left.holds(world)) or self.right.holds(world)


class Iff(_Binary):
    symbol = "<->"

    def holds(self, world: Mapping[str, bool]) -> bool:
        return self.left.holds(world) == self.right.holds(world)


def iff(a: Formula, b: Formula) -> Formula:
    return Iff(a, b)


def _wrap(f: Formula, parent: type) -> str:
    # Parenthesize every compound child of a compound: unambiguous and short enough for four atoms.
    text = str(f)
    return text if isinstance(f, (Atom, Const, Not)) or (type(f) is parent and parent in (And, Or)) else f"({text})"


def _formula(x: object) -> Formula:
    if isinstance(x, Formula):
        return x
    if isinstance(x, bool):
        return Const(x)
    raise TypeError(f"cannot combine a formula with {type(x).__name__}")


TRUE, FALSE = Const(True), Const(False)
M_W, M_L, R_W, R_L = Atom("M_w"), Atom("M_l"), Atom("R_w"), Atom("R_l")


def display(f: Formula) -> str:
    """``f`` with the paper's atom names: ``M(x,y_w) & ~M(x,y_l)``."""
    text = str(f)
    for short, long in _DISPLAY.items():
        text = re.sub(rf"\b{short}\b", long, text)
    return text


def order_atoms(names: Iterable[str]) -> tuple[str, ...]:
    """Atoms in enumeration order: ``M_w, M_l, R_w, R_l`` first, then any others alphabetically."""
    names = set(names)
    return tuple(a for a in PAIR_ATOMS if a in names) + tuple(sorted(names - set(PAIR_ATOMS)))


def worlds(atoms: Sequence[str]) -> list[World]:
    """All ``2^n`` worlds over ``atoms``, the first atom varying slowest: ``(0,0), (0,1), (1,0), (1,1)``."""
    return list(itertools.product((0, 1), repeat=len(atoms)))


# ----------------------------------------------------------------------------- parsing

# an operator, a constant sign, or a name with optional arguments (keywords are names: "true", "and", ...)
_TOKEN = re.compile(r"\s*(?:(<->|->|[~!&|^()])|([⊤⊥])|([A-Za-z_][A-Za-z0-9_]*(?:\([^()]*\))?))")
_WORDS = {"not": "~", "and": "&", "or": "|", "xor": "^", "implies": "->", "iff": "<->"}


def parse(text: str) -> Formula:
    """Parse ``text``: atoms ``M_w``, ``M(x,y_w)``, ``M(y_w)``, ``Ref(x,y_l)``, ``R_l`` (or any identifier);
    ``~``/``!``/``not``, ``&``/``and``, ``^``/``xor``, ``|``/``or``, ``->``/``implies``, ``<->``/``iff``,
    ``true``/``false``; binding from tightest: ``~ & ^ | -> <->`` (``->`` groups to the right)."""
    tokens = _tokenize(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def binary(next_level, op: str, node: type, right_assoc: bool = False):
        def level() -> Formula:
            left = next_level()
            while peek() == op:
                take()
                right = level() if right_assoc else next_level()
                left = node(left, right)
                if right_assoc:
                    break
            return left
        return level

    def unary() -> Formula:
        tok = peek()
        if tok is None:
            raise ConfigError(f"formula {text!r} ends too early")
        take()
        if tok == "~":
            return Not(unary())
        if tok == "(":
            inner = iff_level()
            if peek() != ")":
                raise ConfigError(f"formula {text!r}: missing ')'")
            take()
            return inner
        if tok in ("true", "True", "⊤"):
            return TRUE
        if tok in ("false", "False", "⊥"):
            return FALSE
        if tok in ("&", "|", "^", "->", "<->", ")"):
            raise ConfigError(f"formula {text!r}: unexpected {tok!r}")
        return Atom(_atom_name(tok))

    and_level = binary(unary, "&", And)
    xor_level = binary(and_level, "^", Xor)
    or_level = binary(xor_level, "|", Or)
    imp_level = binary(or_level, "->", Implies, right_assoc=True)
    iff_level = binary(imp_level, "<->", Iff)
    out = iff_level()
    if pos != len(tokens):
        raise ConfigError(f"formula {text!r}: unexpected {tokens[pos]!r}")
    return out


def _tokenize(text: str) -> list[str]:
    out, i = [], 0
    text = text.strip()
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            raise ConfigError(f"formula {text!r}: cannot read {text[i:].strip()[:12]!r}")
        tok = m.group(1) or m.group(2) or m.group(3)
        out.append("~" if tok == "!" else _WORDS.get(tok, tok))
        i = m.end()
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def _atom_name(tok: str) -> str:
    """``M(x,y_w)`` / ``M(y_w)`` -> ``M_w``; ``Ref(x,y_l)`` / ``R(y_l)`` -> ``R_l``; a plain name stays."""
    m = re.fullmatch(r"(M|Ref|R)\(([^()]*)\)", tok)
    if m is None:
        if "(" in tok:
            raise ConfigError(f"atom {tok!r}: use M(x,y_w), M(x,y_l), Ref(x,y_w), Ref(x,y_l) or a plain name")
        return tok
    last = m.group(2).split(",")[-1].strip()
    if last not in ("y_w", "y_l"):
        raise ConfigError(f"atom {tok!r}: the response must be y_w or y_l")
    return ("M_" if m.group(1) == "M" else "R_") + last[-1]


# ----------------------------------------------------------------------------- from worlds back to a formula


def formula_of(atoms: Sequence[str], required: Iterable[World], dont_care: Iterable[World] = ()) -> Formula:
    """A shortest disjunction of conjunctions over ``atoms`` true on every ``required`` world, false on every world
    that is neither required nor ``dont_care`` (exhaustive Quine-McCluskey: at most 3^4 terms, exact)."""
    atoms = tuple(atoms)
    req, dc = frozenset(required), frozenset(dont_care)
    if not req:
        return FALSE
    allowed = req | dc
    if len(allowed) == 2 ** len(atoms):
        return TRUE
    cubes = []  # every conjunction (each atom: 1, 0 or absent) whose worlds all lie in `allowed`
    for spec in itertools.product((None, 1, 0), repeat=len(atoms)):
        cover = frozenset(w for w in worlds(atoms) if all(s is None or w[i] == s for i, s in enumerate(spec)))
        if cover <= allowed and cover & req:
            cubes.append((spec, cover))
    primes = [c for c in cubes if not any(c[1] < d[1] for d in cubes)]
    for k in range(1, len(primes) + 1):  # fewest terms, then fewest literals
        best = None
        for combo in itertools.combinations(primes, k):
            if req <= frozenset().union(*(c[1] for c in combo)):
                size = sum(s is not None for c in combo for s in c[0])
                if best is None or size < best[0]:
                    best = (size, combo)
        if best is not None:
            terms = [_cube(atoms, spec) for spec, _ in best[1]]
            out = terms[0]
            for t in terms[1:]:
                out = Or(out, t)
            return _prettier(atoms, out, req, dc)
    raise AssertionError("unreachable: the single-world cubes always cover")  # pragma: no cover


def _cube(atoms: Sequence[str], spec: Sequence[int | None]) -> Formula:
    lits = [Atom(a) if s == 1 else Not(Atom(a)) for a, s in zip(atoms, spec) if s is not None]
    out = lits[0]
    for lit in lits[1:]:
        out = And(out, lit)
    return out


def _prettier(atoms: Sequence[str], dnf: Formula, req: frozenset, dc: frozenset) -> Formula:
    # Two shapes read better than their DNF and are the paper's own: "a -> b" and "a ^ b".
    best = dnf
    for a, b in itertools.combinations([Atom(x) for x in atoms], 2):
        for cand in (Implies(b, a), Implies(a, b), Xor(a, b)):  # "->" wins a tie with "~a | b"; "^" must be shorter
            m = cand.models(atoms)
            short = len(str(cand)) <= len(str(dnf)) if isinstance(cand, Implies) else len(str(cand)) < len(str(dnf))
            if best is dnf and short and req <= m <= req | dc:
                best = cand
    return best
