"""Detect, validate and normalise preference records into typed examples.

Formats use TRL's field names, so datasets made for TRL load unchanged:

* ``explicit``        ``{prompt, chosen, rejected}`` strings
* ``conversational``  the same fields as lists of ``{role, content}`` messages
* ``implicit``        only ``chosen``/``rejected``, full conversations (or strings) sharing a
                      prefix; the prompt is extracted as ``trl.data_utils.extract_prompt`` does
* ``unpaired``        ``{prompt, completion, label}``
* ``ranked``          ``{prompt, completions: [...], scores: [...]}``; with text prompts each completion
                      may be a list of reasoning-step strings (``["Step 1: ...", "Step 2: ..."]``),
                      joined as they are into the completion text, for TPO's adaptive step rewards

Optional numeric columns ``score_chosen``, ``score_rejected``, ``margin``, ``weight`` go to
``example.extras``. Unknown columns are ignored. Every problem is a one-line ``DataError``
naming file, row and field, with a ``reason`` code that skip mode counts. Text must be valid
Unicode: a lone surrogate (e.g. the JSON escape ``"\\ud800"``), which no tokenizer can encode, is
a bad row (reason ``encoding``) in any text field -- prompt, responses, message contents,
ranked completions.
"""
from __future__ import annotations

import logging
import math
import numbers
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DataError
from .records import RawRecord, Split, read_records_split
from .types import PAIR_EXTRA_FIELDS, Example, PairExample, RankedExample, UnpairedExample

log = logging.getLogger("preftune.data")

ROLES = ("system", "user", "assistant", "tool")
FORMAT_KIND = {"explicit": "pair", "conversational": "pair", "implicit": "pair",
               "unpaired": "unpaired", "ranked": "list"}
KINDS = ("pair", "unpaired", "list")
_SURROGATE = re.compile("[\ud800-\udfff]")
EXTRA_FIELDS = {"pair": PAIR_EXTRA_FIELDS, "unpaired": ("weight",), "list": ("weight",)}


class KindError(DataError, ConfigError):
    """The data holds examples of a kind that cannot become the kind asked for (e.g. unpaired
    data for a pairwise objective). Both a ``DataError`` (it names the file) and a
    ``ConfigError`` (the data and the requested objective do not go together)."""


@dataclass
class LoadResult:
    """What ``load_examples`` read: typed examples of one kind, and what it skipped."""

    examples: list[Example]
    kind: str                 # "pair" | "unpaired" | "list"
    format: str               # "explicit" | "conversational" | "implicit" | "unpaired" | "ranked"
    source: str
    skipped: dict[str, int] = field(default_factory=dict)
    total_rows: int = 0
    split: str | None = None  # the split read (None: the source has no splits)
    data_kind: str = ""       # the kind the data itself holds, before any conversion to ``kind``


def load_examples(source: Any, *, split: Split = "train", on_bad_row: str = "error",
                  kind: str | None = None) -> LoadResult:
    """Read ``source`` and return validated, typed examples of a single format.

    ``split``: the split of a source that has splits (a ``DatasetDict``, a directory of
    ``train.jsonl``/``test.jsonl``, ...); or a sequence of names in order of preference, of
    which the first present is read -- ``EVAL_SPLITS`` (test, validation, valid, eval, dev) for
    evaluation data -- and a source with splits but none of them is refused with a one-line
    error listing its splits. ``result.split`` names the split read.

    ``on_bad_row="error"`` raises the first bad row's ``DataError``; ``"skip"`` drops bad rows
    and counts them by reason in ``result.skipped`` (and logs a warning); skipping every row
    is an error. ``kind`` demands a kind of example: ``"pair"``, ``"unpaired"`` (pair data is
    split into a desirable and an undesirable example, as TRL's ``unpair_preference_dataset``
    and ``KTOTrainer`` do) or ``"list"`` (``"ranked"`` also works; a pair becomes a list of two,
    scored by ``score_chosen``/``score_rejected`` when present, else 1 and 0). Data of a kind
    that does not convert (unpaired or ranked data asked for as pairs, ...) raises a one-line
    ``KindError`` (a ``ConfigError`` and a ``DataError``).
    """
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if kind == "ranked":
        kind = "list"
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    name, records, split_read = read_records_split(source, split=split)

    skipped: Counter[str] = Counter()
    examples: list[Example] = []
    fmt: str | None = None
    fmt_at: tuple[str, int] = ("", 0)
    for rec in records:
        try:
            if rec.error is not None:
                raise rec.error
            row_fmt = detect_format(rec)
            if fmt is not None and row_fmt != fmt:
                where = f"row {fmt_at[1]}" + ("" if fmt_at[0] == rec.source else f" of {fmt_at[0]}")
                raise DataError(f"record is in {row_fmt} format but the data began in {fmt} format "
                                f"(at {where}); one source holds one format", file=rec.source, row=rec.row,
                                reason="mixed_format")
            examples.append(normalise(rec, row_fmt))
            if fmt is None:  # the first *valid* row sets the format: a broken one must not decide it
                fmt, fmt_at = row_fmt, (rec.source, rec.row)
        except DataError as e:
            if on_bad_row == "error":
                raise
            skipped[e.reason or "invalid"] += 1

    if not examples:
        detail = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.items()))
        raise DataError(f"no valid rows: all {len(records)} rows were skipped ({detail})", file=name,
                        reason="no_rows")
    if skipped:
        log.warning("%s: skipped %d of %d rows (%s)", name, sum(skipped.values()), len(records),
                    ", ".join(f"{r}: {n}" for r, n in sorted(skipped.items())))
    assert fmt is not None
    data_kind = FORMAT_KIND[fmt]
    _check_extras_consistent(examples, name)
    have = data_kind
    if kind is not None and kind != data_kind:
        examples = _convert(examples, data_kind, kind, fmt, name)
        data_kind = kind
    return LoadResult(examples, data_kind, fmt, name, dict(skipped), len(records), split_read, have)


# ------------------------------------------------------------------------------------ detection

def _is_conv(value: Any) -> bool:
    """A value that is meant as a list of messages (TRL's test, lenient about broken items)."""
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def detect_format(rec: RawRecord) -> str:
    """The format a single record is in, from its keys (and whether values are message lists)."""
    value = rec.value
    if not isinstance(value, dict):
        raise DataError(f"expected an object (a JSON dict of fields), got {_type_name(value)}",
                        file=rec.source, row=rec.row, reason="not_object")
    if "completions" in value or "scores" in value:
        return "ranked"
    if "completion" in value or "label" in value:
        return "unpaired"
    if "chosen" in value or "rejected" in value:
        response = value["chosen"] if "chosen" in value else value["rejected"]
        if "prompt" not in value:
            return "implicit"
        if _is_conv(value["prompt"]):
            return "conversational"
        # TRL (maybe_extract_prompt): a text prompt beside conversations is ignored, the prompt
        # is extracted from the conversations.
        return "implicit" if _is_conv(response) else "explicit"
    raise DataError("missing fields: expected prompt/chosen/rejected (pairs), chosen/rejected (implicit "
                    "prompt), prompt/completion/label (unpaired) or prompt/completions/scores (ranked); "
                    f"got {sorted(map(str, value))[:8]}", file=rec.source, row=rec.row, reason="missing_field")


# -------------------------------------------------------------------------------- normalisation

class _Row:
    """Field access with errors that name the record's file and row."""

    def __init__(self, rec: RawRecord):
        self.rec, self.value = rec, rec.value

    def error(self, message: str, field_name: str | None, reason: str) -> DataError:
        return DataError(message, file=self.rec.source, row=self.rec.row, field=field_name, reason=reason)

    def get(self, name: str) -> Any:
        if name not in self.value or self.value[name] is None:
            raise self.error("is missing", name, "missing_field")
        return self.value[name]

    def text(self, name: str, value: Any = None) -> str:
        v = self.get(name) if value is None else value
        if not isinstance(v, str):
            raise self.error(f"must be a string, got {_type_name(v)}", name, "wrong_type")
        if not v.strip():
            raise self.error("is empty" if not v else "is only whitespace", name, "empty")
        self.unicode(v, name)
        return v

    def unicode(self, v: Any, name: str) -> None:
        """Every string in ``v`` (nested lists/dicts too) must be valid Unicode: no lone surrogate."""
        if isinstance(v, str):
            at = _surrogate_at(v)
            if at is not None:
                raise self.error(f"is not valid Unicode text: a lone surrogate U+{ord(v[at]):04X} at character "
                                 f"{at + 1} (a broken \\u escape or a split emoji?)", name, "encoding")
        elif isinstance(v, dict):
            for k, x in v.items():
                self.unicode(x, f"{name}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                self.unicode(x, f"{name}[{i}]")

    def messages(self, name: str, value: Any = None, *, response: bool) -> list[dict[str, Any]]:
        v = self.get(name) if value is None else value
        if not isinstance(v, list):
            raise self.error(f"must be a list of {{role, content}} messages, got {_type_name(v)}", name,
                             "wrong_type")
        if not v:
            raise self.error("is an empty list of messages", name, "empty")
        out = []
        for i, m in enumerate(v):
            where = f"{name}[{i}]"
            if not isinstance(m, dict):
                raise self.error(f"must be a {{role, content}} message, got {_type_name(m)}", where, "wrong_type")
            role, content = m.get("role"), m.get("content")
            if role is None:
                raise self.error("is missing", f"{where}.role", "missing_field")
            if not isinstance(role, str):
                raise self.error(f"must be a string, got {_type_name(role)}", f"{where}.role", "wrong_type")
            if role not in ROLES:
                raise self.error(f"unknown chat role {role!r}; allowed: {', '.join(ROLES)}", f"{where}.role",
                                 "unknown_role")
            if content is None:
                raise self.error("is missing", f"{where}.content", "missing_field")
            if not isinstance(content, str):
                raise self.error(f"must be a string, got {_type_name(content)}", f"{where}.content",
                                 "wrong_type")
            self.unicode(m, where)  # the content, and any other field a chat template may render
            # Parquet/datasets fill absent struct fields with None; chat templates test for presence.
            out.append({k: x for k, x in m.items() if x is not None})
        if response and not any(m["content"].strip() for m in out):
            raise self.error("has no content: every message is empty", name, "empty")
        return out

    def any_text(self, name: str, conv: bool, *, response: bool) -> Any:
        return self.messages(name, response=response) if conv else self.text(name)

    def extras(self, names: tuple[str, ...]) -> dict[str, float]:
        out = {}
        for name in names:
            v = self.value.get(name)
            if v is None:
                continue
            if not _is_number(v):
                raise self.error(f"must be a number, got {_type_name(v)}", name, "wrong_type")
            x = _as_float(v)
            if not math.isfinite(x):
                raise self.error(f"must be finite, got {x}", name, "non_finite")
            if name == "weight" and x < 0:
                raise self.error(f"must be >= 0, got {x}", name, "negative_weight")
            out[name] = x
        return out


def normalise(rec: RawRecord, fmt: str) -> Example:
    """Validate one record of format ``fmt`` and return its typed example (raises DataError)."""
    r = _Row(rec)
    if fmt in ("explicit", "conversational"):
        conv = fmt == "conversational"
        prompt = r.any_text("prompt", conv, response=False)
        chosen = r.any_text("chosen", conv, response=True)
        rejected = r.any_text("rejected", conv, response=True)
        if chosen == rejected:
            raise r.error("is identical to 'chosen'", "rejected", "identical")
        return PairExample(prompt, chosen, rejected, rec.row, rec.source, r.extras(PAIR_EXTRA_FIELDS))
    if fmt == "implicit":
        prompt, chosen, rejected = _extract_prompt(r)
        return PairExample(prompt, chosen, rejected, rec.row, rec.source, r.extras(PAIR_EXTRA_FIELDS))
    if fmt == "unpaired":
        conv = _is_conv(r.value.get("prompt"))
        prompt = r.any_text("prompt", conv, response=False)
        completion = r.any_text("completion", conv, response=True)
        return UnpairedExample(prompt, completion, _label(r), rec.row, rec.source, r.extras(("weight",)))
    if fmt == "ranked":
        conv = _is_conv(r.value.get("prompt"))
        prompt = r.any_text("prompt", conv, response=False)
        completions, scores, steps = _ranked(r, conv)
        return RankedExample(prompt, completions, scores, rec.row, rec.source, r.extras(("weight",)), steps)
    raise AssertionError(fmt)


def _extract_prompt(r: _Row) -> tuple[Any, Any, Any]:
    """The shared prefix of ``chosen`` and ``rejected`` is the prompt (``trl.extract_prompt``).

    Conversations split at the first differing message, which must open the assistant's
    answer in both; strings split at the first differing character, a space just before it
    going to the responses.
    """
    conv = _is_conv(r.get("chosen"))
    chosen = r.any_text("chosen", conv, response=True)
    rejected = r.get("rejected")
    if conv:
        rejected = r.messages("rejected", response=True)
    elif not isinstance(rejected, str):
        raise r.error(f"must be a string like 'chosen', got {_type_name(rejected)}", "rejected", "wrong_type")
    else:
        rejected = r.text("rejected")
    if chosen == rejected:
        raise r.error("is identical to 'chosen'", "rejected", "identical")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    unit = "message" if conv else "character"
    if n == 0:
        raise r.error(f"shares no prompt with 'chosen': they differ from the first {unit} (implicit prompt "
                      "format needs chosen and rejected to start with the same prompt)", "rejected",
                      "implicit_mismatch")
    if n == len(chosen) or n == len(rejected):
        short = "chosen" if n == len(chosen) else "rejected"
        raise r.error("has no response after the prompt it shares with the other response (it is a prefix "
                      "of it)", short, "implicit_mismatch")
    if conv:
        for name, conv_list in (("chosen", chosen), ("rejected", rejected)):
            role = conv_list[n]["role"]
            if role != "assistant":
                raise r.error(f"chosen and rejected differ at message {n}, a '{role}' message, so their "
                              "prompts do not match (the first differing message must be the assistant's "
                              "answer)", f"{name}[{n}]", "implicit_mismatch")
    elif chosen[n - 1] == " ":
        n -= 1
        if n == 0:
            raise r.error("shares only a space with 'chosen': no prompt", "rejected", "implicit_mismatch")
    return chosen[:n], chosen[n:], rejected[n:]


def _label(r: _Row) -> bool:
    v = r.get("label")
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    shown = repr(v) if isinstance(v, (str, int, float)) else _type_name(v)
    raise r.error(f"must be true/false (or 1/0), got {shown}", "label", "bad_label")


def _steps(r: _Row, where: str, c: list) -> tuple[str, tuple[int, ...]]:
    """A completion given as a list of reasoning-step strings: the joined text and where each step ends."""
    if not c:
        raise r.error("is an empty list of steps", where, "empty")
    ends, n = [], 0
    for j, step in enumerate(c):
        if not isinstance(step, str):
            hint = " (chat-message completions need a prompt given as messages too)" if isinstance(step, dict) else ""
            raise r.error(f"must be a step string, got {_type_name(step)}{hint}", f"{where}[{j}]", "wrong_type")
        if not step.strip():
            raise r.error("is an empty step" if not step else "is a step of only whitespace", f"{where}[{j}]",
                          "empty")
        r.unicode(step, f"{where}[{j}]")
        n += len(step)
        ends.append(n)
    return "".join(c), tuple(ends)


def _ranked(r: _Row, conv: bool) -> tuple[tuple[Any, ...], tuple[float, ...], tuple[tuple[int, ...], ...] | None]:
    comps = r.get("completions")
    if not isinstance(comps, list):
        raise r.error(f"must be a list of completions, got {_type_name(comps)}", "completions", "wrong_type")
    if len(comps) < 2:
        raise r.error(f"needs at least 2 completions to rank, got {len(comps)}", "completions", "too_few")
    out, steps = [], []
    stepped = not conv and isinstance(comps[0], list)
    for i, c in enumerate(comps):
        where = f"completions[{i}]"
        if conv:
            out.append(r.messages(where, c, response=True))
        elif c is None:
            raise r.error("is missing", where, "missing_field")
        elif stepped != isinstance(c, list):
            raise r.error(f"is {'a string' if stepped else 'a list of steps'} but completions[0] is "
                          f"{'a list of steps' if stepped else 'a string'}; give every completion as a list of "
                          "step strings or none", where, "wrong_type")
        elif stepped:
            text, ends = _steps(r, where, c)
            out.append(text)
            steps.append(ends)
        else:
            out.append(r.text(where, c))
    scores = r.get("scores")
    if not isinstance(scores, list):
        raise r.error(f"must be a list of numbers, got {_type_name(scores)}", "scores", "wrong_type")
    if len(scores) != len(comps):
        raise r.error(f"has {len(scores)} scores for {len(comps)} completions", "scores", "count_mismatch")
    for i, s in enumerate(scores):
        if not _is_number(s):
            raise r.error(f"must be a number, got {_type_name(s)}", f"scores[{i}]", "wrong_type")
        if not math.isfinite(_as_float(s)):
            raise r.error(f"must be finite, got {_as_float(s)}", f"scores[{i}]", "non_finite")
    return tuple(out), tuple(_as_float(s) for s in scores), (tuple(steps) if stepped else None)


# ------------------------------------------------------------------------------ dataset checks

def _check_extras_consistent(examples: list[Example], name: str) -> None:
    """An optional column is given in every row or in none: objectives cannot average a gap."""
    for col in {k for ex in examples for k in ex.extras}:
        missing = [ex for ex in examples if col not in ex.extras]
        if missing:
            ex = missing[0]
            raise DataError(f"is missing (or null) here but given in {len(examples) - len(missing)} other rows; "
                            "give it in every row or in none", file=ex.source, row=ex.row, field=col,
                            reason="missing_field")


def _convert(examples: list[Example], have: str, want: str, fmt: str, name: str) -> list[Example]:
    """Pair data as ``want`` examples; any other conversion is a ``KindError``.

    pair -> unpaired follows TRL's ``unpair_preference_dataset`` (used by ``KTOTrainer`` /
    ``BCOTrainer`` on paired data): each pair gives its chosen response labelled desirable and
    its rejected one undesirable, both with the pair's prompt, row and ``weight``; each keeps the
    field it came from (``origin``) so that a later error names ``chosen`` or ``rejected``.
    Extras that have no meaning for a single completion (``score_*``, ``margin``) are dropped,
    with a warning.
    """
    if have == "pair" and want != "pair":
        used = EXTRA_FIELDS[want] + (("score_chosen", "score_rejected") if want == "list" else ())
        dropped = sorted({k for ex in examples for k in ex.extras if k not in used})
        if dropped:
            log.warning("%s: column(s) %s do not apply to %s examples and are ignored", name, ", ".join(dropped),
                        want)
    if have == "pair" and want == "unpaired":
        weight = lambda ex: {"weight": ex.extras["weight"]} if "weight" in ex.extras else {}  # noqa: E731
        return [u for ex in examples for u in (
            UnpairedExample(ex.prompt, ex.chosen, True, ex.row, ex.source, weight(ex), origin="chosen"),
            UnpairedExample(ex.prompt, ex.rejected, False, ex.row, ex.source, weight(ex), origin="rejected"))]
    if have == "pair" and want == "list":
        out = []
        for ex in examples:
            scores = (ex.extras.get("score_chosen", 1.0), ex.extras.get("score_rejected", 0.0))
            extras = {"weight": ex.extras["weight"]} if "weight" in ex.extras else {}
            out.append(RankedExample(ex.prompt, (ex.chosen, ex.rejected), scores, ex.row, ex.source, extras))
        return out
    raise KindError(f"holds {have} examples ({fmt} format) but {want} examples were asked for; "
                    "only pair data converts (to unpaired or list)", file=name, reason="wrong_kind")


def _surrogate_at(text: str) -> int | None:
    """Index of the first surrogate code point in ``text`` (never valid in decoded text), or None."""
    m = None if text.isascii() else _SURROGATE.search(text)
    return None if m is None else m.start()


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range
        return math.inf if v > 0 else -math.inf


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "int", float: "float"}.get(
        type(v), type(v).__name__)
