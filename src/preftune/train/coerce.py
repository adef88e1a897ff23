"""Configuration values brought to the type of the option that takes them.

One set of rules for YAML recipes, the command line (where every value is text) and Python callers:

- ``bool``: a bool, 0 or 1, or the text true / yes / on / 1 or false / no / off / 0 (any case).
- ``int``: an int, or a float or text with a whole, finite value (``"8"``, ``"1e3"``, ``2.0``).
- ``float``: a finite int or float, or text that reads as one (``"1e-3"``: PyYAML reads ``1e-3`` as a
  string).
- ``str``: text, or a path (``os.PathLike``).
- ``list[str]``: ``"a,b"`` is ``["a", "b"]``; a list of strings is kept; items are stripped and empty
  ones dropped; null is ``[]``.
- ``dict``: a mapping (copied); None is ``{}``.
- ``X | None``: None or the text none / null / ~ (any case) is None; anything else is read as ``X``.
- ``bool | str`` (``resume``): a boolean as above, else a path or non-empty text.
- a data source: a path, a dataset name, a ``datasets.Dataset`` / ``DatasetDict`` or a list of dicts,
  kept as given (a path as a string); null for an optional one.
- an objective hyperparameter: only text is converted, to the type of its default (a boolean or a
  number); any other value, or text that reads as neither, is left to the objective's own validation.

Nothing is guessed: a bool is not a number, ``"2.5"`` is not an integer, ``"maybe"`` is not a
boolean, inf and nan are not numbers. A value that does not follow these rules is a
:class:`FieldError` naming the key, the value and the type expected (``lr: expected a number, got
'fast'``).
"""
from __future__ import annotations

import math
import os
import typing
from types import UnionType
from typing import Any, Callable, Mapping

from ..errors import ConfigError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("none", "null", "~")


class FieldError(ConfigError):
    """A ``ConfigError`` about one key. ``str()`` is ``"key: detail"`` (or ``detail`` alone when it
    already names the key); a recipe's path or the command-line flag is put in front by the reader."""

    def __init__(self, key: str, detail: str, *, named: bool = False):
        self.key, self.detail, self.named = key, detail, named
        super().__init__(detail if named else f"{key}: {detail}")


def as_bool(v: Any) -> bool | None:
    """True/False for an unambiguous boolean (a bool, 0/1, true/false/yes/no/on/off), else None."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def is_null(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in _NULL)


def _strings(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def join_strings(v: Any) -> Any:
    """A list of strings as one comma-separated string (``"a,b"``); any other value as itself."""
    return ",".join(v) if _strings(v) else v


# ----------------------------------------------------------------------------- by type

def coerce_value(key: str, v: Any, tp: Any) -> Any:
    """``v`` as type ``tp`` (a resolved annotation), or a :class:`FieldError` naming ``key``."""
    if typing.get_origin(tp) in (typing.Union, UnionType):
        return _coerce_union(key, v, tp)
    if tp is Any:
        return v
    convert = _CONVERTERS.get(typing.get_origin(tp) or tp)
    if convert is None:
        raise TypeError(f"no coercion for {tp}")  # pragma: no cover - a new field with a new type
    try:
        return convert(v)
    except ValueError:
        raise FieldError(key, f"expected {_expected(tp)}, got {v!r}") from None


def _coerce_union(key: str, v: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if type(None) in args and is_null(v):
        return None
    rest = tuple(a for a in args if a is not type(None))
    if len(rest) == 1:
        try:
            return coerce_value(key, v, rest[0])
        except FieldError:
            raise FieldError(key, f"expected {_expected(tp)}, got {v!r}") from None
    if set(rest) == {bool, str}:  # resume: a switch or a path
        b = as_bool(v)
        if b is not None:
            return b
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, str) and v.strip():
            return v
        raise FieldError(key, f"expected true, false or a path, got {v!r}")
    raise TypeError(f"no coercion for {tp}")  # pragma: no cover - a new field with a new type


# Each converter returns the value as its type or raises ValueError (reported as a FieldError).

def _to_bool(v: Any) -> bool:
    b = as_bool(v)
    if b is None:
        raise ValueError
    return b


def _to_int(v: Any) -> int:
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            v = float(s)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    raise ValueError


def _to_float(v: Any) -> float:
    if isinstance(v, str):
        v = float(v.strip())
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise ValueError


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise ValueError


def _to_list(v: Any) -> list[str]:
    if is_null(v):
        return []
    if isinstance(v, str):
        v = v.split(",")
    elif not _strings(v):
        raise ValueError
    return [x.strip() for x in v if x.strip()]


def _to_dict(v: Any) -> dict:
    if v is None:
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    raise ValueError


_CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list, dict: _to_dict,
}


def _expected(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, UnionType):
        parts = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is list:
        return "a list of strings or a comma-separated string"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------- data sources

def is_dataset(v: Any) -> bool:
    mod = type(v).__module__ or ""
    return mod.startswith("datasets.") and hasattr(v, "__iter__")


def coerce_source(key: str, v: Any, *, optional: bool) -> Any:
    """A data source as given (a path as a string), or a :class:`FieldError` naming ``key``."""
    if optional and is_null(v):
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if is_dataset(v):
        return v
    if isinstance(v, (list, tuple)):
        return list(v)
    raise FieldError(key, f"expected a path, a dataset name, a datasets.Dataset or a list of dicts, got {v!r}")


def describe_source(v: Any) -> Any:
    """A data source as plain data: a path as itself, an object as a placeholder string."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if is_dataset(v):
        name = f"datasets.{type(v).__name__}"
        if hasattr(v, "keys") and not hasattr(v, "features"):  # DatasetDict
            try:
                parts = ", ".join(f"{k}: {len(v[k])} rows" for k in v.keys())
            except TypeError:
                parts = ", ".join(str(k) for k in v.keys())
            return f"<{name}: {parts}>"
        try:
            return f"<{name}: {len(v)} rows>"
        except TypeError:
            return f"<{name}>"
    if isinstance(v, (list, tuple)):
        return f"<list: {len(v)} rows>"
    return f"<{type(v).__name__}>"


# ----------------------------------------------------------------------------- hyperparameters

def coerce_hparam(v: Any, default: Any) -> Any:
    """A string from YAML or the command line as the type of the hyperparameter's default; anything
    else is left to the objective's own validation."""
    if not isinstance(v, str):
        return v
    if isinstance(default, bool):
        b = as_bool(v)
        return v if b is None else b
    if isinstance(default, (int, float)):
        try:
            x = float(v.strip())
        except ValueError:
            return v
        return int(x) if isinstance(default, int) and x.is_integer() else x
    return v
