"""Read raw records (dicts) from files, directories, saved or hub datasets, or memory.

Nothing here knows about preference formats: a reader yields ``RawRecord``s, each a decoded
value with the place it came from, or the per-row error that kept it from being decoded.
Errors that concern the whole source (missing file, empty file, unreadable Parquet) raise.

Row numbers: text files (JSONL, CSV) count 1-based *lines* -- the line a record starts on,
as an editor shows it (a CSV header is line 1, so its first data row is row 2); indexed
sources (JSON arrays, Parquet, ``datasets``, in-memory lists) count 0-based positions.
A UTF-8 byte-order mark at the start of a text file is dropped silently.

Splits: ``split`` is a split name (``"train"``), or a sequence of names in order of preference
(``EVAL_SPLITS``, for held-out data): the first one the source has is read, and a source whose
splits include none of them is refused with a one-line error listing the splits it has. A source
without splits (one plain file, a list, a single saved ``Dataset``) is read whole either way.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

from ..errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_NAMES = ("train", "test", "validation", "valid", "eval", "dev")
# Held-out splits, most preferred first: what evaluation data reads when no split is named.
EVAL_SPLITS = ("test", "validation", "valid", "eval", "dev")
Split = Union[str, Sequence[str]]
_BOM = b"\xef\xbb\xbf"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# Columns whose CSV cells are not plain text: decoded when the cell parses, else left for
# validation to report.
_CSV_NUMBER_COLUMNS = ("score_chosen", "score_rejected", "margin", "weight", "strength", "strength_std")
_CSV_JSON_COLUMNS = ("completions", "scores")


@dataclass(frozen=True)
class RawRecord:
    """One record as read: ``value`` (usually a dict) or ``error`` (a per-row DataError)."""

    source: str
    row: int
    value: Any = None
    error: DataError | None = None


def read_records(source: Any, *, split: Split = "train") -> tuple[str, list[RawRecord]]:
    """Read every record of ``source``; return ``(source name, records)``.

    ``source``: a path to a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a directory of
    such files (files named after a split, e.g. ``train.jsonl`` or ``train-00000.parquet``,
    select by ``split``), a ``datasets.save_to_disk`` directory, a ``datasets.Dataset`` /
    ``DatasetDict``, a list of dicts (``"<memory>"``) or a Hugging Face Hub dataset name.
    ``split``: a name, or names in order of preference (see the module docstring).
    """
    name, records, _ = read_records_split(source, split=split)
    return name, records


def read_records_split(source: Any, *, split: Split = "train") -> tuple[str, list[RawRecord], str | None]:
    """:func:`read_records`, and the split it read (None: the source has no splits)."""
    prefs = _prefs(split)
    if isinstance(source, (list, tuple)):
        return "<memory>", [RawRecord("<memory>", i, v) for i, v in enumerate(source)], None
    if _is_hf_dataset(source):
        ds, chosen = _pick_split(source, prefs, "<dataset>")
        return "<dataset>", _dataset_records(ds, "<dataset>"), chosen
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"cannot read data from a {type(source).__name__}; give a file path, a directory, "
                        "a dataset name or a list of dicts", reason="unsupported")
    path = Path(source)
    name = str(source)
    if path.is_dir():
        records, chosen = _read_dir(path, prefs)
    elif path.is_file():
        records, chosen = _read_file(path, prefs)
    elif _looks_like_hub_name(name):
        records, chosen = _read_hub(name, prefs)
    else:
        raise DataError("no such file or directory", file=name, reason="not_found")
    return name, records, chosen


def pick_split(source: Any, preferred: Split = EVAL_SPLITS) -> str | None:
    """The split that reading ``source`` with ``split=preferred`` reads; None when it has no splits.

    Raises the one-line ``DataError`` that reading would when ``source`` has splits but none of
    ``preferred`` (it lists the splits there are). Cheap for directories, saved and in-memory
    datasets (no rows are read); a ``.json`` file or a hub dataset is read to find out.
    """
    prefs = _prefs(preferred)
    if isinstance(source, (list, tuple)):
        return None
    if _is_hf_dataset(source):
        return _pick_split(source, prefs, "<dataset>")[1]
    if not isinstance(source, (str, os.PathLike)):
        return None  # reading it will say why not
    path = Path(source)
    if path.is_dir():
        target, files, chosen = _resolve_dir(path, prefs)
        if files is None:  # a save_to_disk directory: opening it maps the files, reads no rows
            return chosen or _pick_split(_load_saved(target), (chosen,) if chosen else prefs, str(target))[1]
        return chosen
    if path.is_file() and path.suffix.lower() != ".json":
        return None
    if not path.exists() and not _looks_like_hub_name(str(source)):
        return None
    return read_records_split(source, split=prefs)[2]


def heldout_split(source: Any, fallback: str = "train", preferred: Split = EVAL_SPLITS) -> str:
    """The split evaluation data reads when none is named: the first of ``preferred`` (test,
    validation, valid, eval, dev) that ``source`` has; ``fallback`` when it has no splits (one
    file, a list): the split argument is then unused. A source with splits but no held-out one is
    refused in one line listing its splits -- never its train split in place of a test split.
    """
    return pick_split(source, preferred) or fallback


def _prefs(split: Split) -> tuple[str, ...]:
    """``split`` as a tuple of names; a single name is a 1-tuple (an exact request)."""
    prefs = (split,) if isinstance(split, str) else tuple(split)
    if not prefs or not all(isinstance(x, str) and x for x in prefs):
        raise DataError(f"split must be a name or a sequence of names, got {split!r}", reason="unsupported")
    return prefs


def _no_split(prefs: tuple[str, ...], found: str, name: str) -> DataError:
    """The one-line refusal when the source has splits but none of the wanted ones."""
    if len(prefs) == 1:
        return DataError(f"has no split '{prefs[0]}' ({found})", file=name, reason="not_found")
    return DataError(f"has none of the splits {', '.join(prefs)} ({found}); name the split to read",
                     file=name, reason="not_found")


def read_file(path: Path, split: Split = "train") -> list[RawRecord]:
    return _read_file(path, _prefs(split))[0]


def _read_file(path: Path, prefs: tuple[str, ...]) -> tuple[list[RawRecord], str | None]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path, prefs)
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix or path.name}'; use one of {', '.join(DATA_SUFFIXES)}",
                        file=str(path), reason="unsupported")
    return readers[suffix](path), None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------- text files

def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", file=str(path), reason="unreadable") from None
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip():
        raise DataError("file is empty", file=str(path), reason="empty_file")
    return data


def _bad_utf8(text: str) -> int | None:
    """Index of the first undecodable byte (a lone surrogate from ``surrogateescape``), or None."""
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return i
    return None


def _utf8_error(text: str, where: int) -> str:
    return f"is not valid UTF-8 (byte 0x{ord(text[where]) - 0xDC00:02x} at column {where + 1})"


def _read_jsonl(path: Path) -> list[RawRecord]:
    return _jsonl_records(_read_bytes(path).decode("utf-8", "surrogateescape"), str(path))


def _jsonl_records(text: str, name: str) -> list[RawRecord]:
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        bad = _bad_utf8(line)
        if bad is not None:
            out.append(RawRecord(name, lineno, error=DataError(
                _utf8_error(line, bad), file=name, row=lineno, reason="encoding")))
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:  # ValueError: also an integer too long to convert
            msg = f"{e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else _short(e)
            out.append(RawRecord(name, lineno, error=DataError(
                f"invalid JSON: {msg}", file=name, row=lineno, reason="invalid_json")))
            continue
        out.append(RawRecord(name, lineno, value))
    if not out:
        raise DataError("file is empty", file=name, reason="empty_file")
    return out


def _read_json(path: Path, prefs: tuple[str, ...] = ("train",)) -> tuple[list[RawRecord], str | None]:
    """A JSON array of objects (or ``{"<split>"|"data": [...]}``); JSON Lines named ``.json`` also work."""
    name = str(path)
    text = _read_bytes(path).decode("utf-8", "surrogateescape")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON Lines under a .json name
            return _jsonl_records(text, name), None
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})", file=name,
                        reason="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"invalid JSON: {_short(e)}", file=name, reason="invalid_json") from None
    if _bad_utf8(text) is not None:  # json.loads accepts lone surrogates inside strings
        line = text.count("\n", 0, _bad_utf8(text)) + 1
        raise DataError(f"is not valid UTF-8 (line {line})", file=name, reason="encoding")
    chosen = None
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items() if isinstance(v, list)}
        chosen = next((x for x in prefs if x in lists), None)
        splits = sorted(k for k in lists if k.lower() in SPLIT_NAMES)
        if chosen is not None:
            value = value[chosen]
        elif splits:  # lists named after other splits: reading one of them instead would mislead
            raise _no_split(prefs, f"splits: {', '.join(splits)}", name)
        elif len(lists) == 1:
            value = next(iter(lists.values()))
    if not isinstance(value, list):
        raise DataError("expected a JSON array of objects (or JSON Lines)", file=name, reason="not_object")
    if not value:
        raise DataError("file is empty", file=name, reason="empty_file")
    return [RawRecord(name, i, v) for i, v in enumerate(value)], chosen


def _read_csv(path: Path) -> list[RawRecord]:
    name = str(path)
    text = _read_bytes(path).decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    out: list[RawRecord] = []
    start = 1
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            if header is None:
                raise DataError(f"CSV header: {e}", file=name, row=start, reason="csv_quoting") from None
            out.append(RawRecord(name, start, error=DataError(
                f"CSV quoting error: {e}", file=name, row=start, reason="csv_quoting")))
            continue
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if dupes:
                raise DataError(f"CSV header repeats column(s) {dupes}", file=name, row=start, reason="csv_fields")
            continue
        if len(cells) != len(header):
            out.append(RawRecord(name, start, error=DataError(
                f"has {len(cells)} fields but the header has {len(header)}", file=name, row=start,
                reason="csv_fields")))
            continue
        bad = next(((h, c) for h, c in zip(header, cells) if _bad_utf8(c) is not None), None)
        if bad is not None:
            out.append(RawRecord(name, start, error=DataError(
                _utf8_error(bad[1], _bad_utf8(bad[1])), file=name, row=start, field=bad[0], reason="encoding")))
            continue
        out.append(RawRecord(name, start, _coerce_csv_row(dict(zip(header, cells)))))
    if not out:
        raise DataError("file is empty (no data rows after the header)", file=name, reason="empty_file")
    return out


def _coerce_csv_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are text: decode labels, numbers and JSON lists where they parse.

    A cell that does not parse stays a string, so validation names the field and the problem.
    """
    if "label" in row:
        low = row["label"].strip().lower()
        if low in ("true", "1"):
            row["label"] = True
        elif low in ("false", "0"):
            row["label"] = False
    for col in _CSV_NUMBER_COLUMNS:
        if col in row:
            cell = row[col].strip()
            if not cell:
                del row[col]
                continue
            try:
                row[col] = float(cell)
            except ValueError:
                pass
    for col in _CSV_JSON_COLUMNS:
        if col in row and row[col].lstrip().startswith("["):
            try:
                row[col] = json.loads(row[col])
            except (json.JSONDecodeError, RecursionError):
                pass
    return row


# ------------------------------------------------------------------------------- binary/datasets

def _read_parquet(path: Path) -> list[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet file ({e})", file=name, reason="unreadable") from None
    if not rows:
        raise DataError("file is empty", file=name, reason="empty_file")
    return [RawRecord(name, i, v) for i, v in enumerate(rows)]


def _is_hf_dataset(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("datasets.") and hasattr(obj, "__iter__") and not isinstance(obj, (str, os.PathLike))


def _pick_split(ds: Any, split: Split, name: str) -> tuple[Any, str | None]:
    """The split of a ``DatasetDict`` to read and its name; a plain ``Dataset`` is itself (None)."""
    prefs = _prefs(split)
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # DatasetDict
        for x in prefs:
            if x in ds:
                return ds[x], x
        raise _no_split(prefs, f"splits: {', '.join(sorted(ds.keys()))}", name)
    return ds, None


def _dataset_records(ds: Any, name: str) -> list[RawRecord]:
    out = [RawRecord(name, i, v) for i, v in enumerate(ds)]
    if not out:
        raise DataError("dataset is empty", file=name, reason="empty_file")
    return out


def _load_saved(path: Path) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds; all mean "not a readable saved dataset"
        raise DataError(f"cannot load saved dataset ({type(e).__name__}: {e})", file=str(path),
                        reason="unreadable") from None


def _read_saved_dataset(path: Path, prefs: tuple[str, ...]) -> tuple[list[RawRecord], str | None]:
    ds, chosen = _pick_split(_load_saved(path), prefs, str(path))
    return _dataset_records(ds, str(path)), chosen


def _looks_like_hub_name(name: str) -> bool:
    return bool(_HUB_NAME.match(name)) and not name.lower().endswith(DATA_SUFFIXES)


def _read_hub(name: str, prefs: tuple[str, ...]) -> tuple[list[RawRecord], str | None]:
    import datasets

    try:
        # One name: that split. Several: every split, then the first of them it has.
        ds = datasets.load_dataset(name, split=prefs[0]) if len(prefs) == 1 else datasets.load_dataset(name)
    except Exception as e:  # offline, unknown name, missing split, auth: all reported the same way
        raise DataError(f"no such file or directory, and loading it as a Hugging Face Hub dataset failed "
                        f"({type(e).__name__}: {_short(e)})", file=name, reason="not_found") from None
    ds, chosen = _pick_split(ds, prefs, name)
    return _dataset_records(ds, name), chosen if len(prefs) > 1 else prefs[0]


# ---------------------------------------------------------------------------------- directories

def _read_dir(path: Path, prefs: tuple[str, ...]) -> tuple[list[RawRecord], str | None]:
    target, files, chosen = _resolve_dir(path, prefs)
    if files is None:
        records, inner = _read_saved_dataset(target, (chosen,) if chosen else prefs)
        return records, chosen or inner
    out: list[RawRecord] = []
    for f in files:
        out.extend(_read_file(f, (chosen,) if chosen else prefs)[0])
    return out, chosen


def _resolve_dir(path: Path, prefs: tuple[str, ...]) -> tuple[Path, list[Path] | None, str | None]:
    """What a directory holds for ``prefs``, without reading rows: ``(dir, None, split)`` for a
    ``save_to_disk`` directory, else ``(dir, data files, split)``; split None: not chosen by name."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return path, None, None
    for x in prefs:
        if (path / x).is_dir():
            return _resolve_dir(path / x, (x,))[0:2] + (x,)
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list directory ({e.strerror or e})", file=str(path), reason="unreadable") from None
    files = [p for p in entries if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
    if not files:
        subdirs = [p.name for p in entries if p.is_dir() and p.name.lower() in SPLIT_NAMES]
        if subdirs:  # split directories, but not the one asked for
            raise _no_split(prefs, f"splits: {', '.join(subdirs)}", str(path))
        raise DataError(f"directory has no data files ({', '.join(DATA_SUFFIXES)}) and is not a "
                        "datasets.save_to_disk directory", file=str(path), reason="no_data_files")
    by_split = {p: _split_of(p, prefs) for p in files}
    if not any(s is not None for s in by_split.values()):
        return path, files, None
    chosen = next((x for x in prefs if x in by_split.values()), None)
    if chosen is None:
        found = ", ".join(p.name for p in files)
        if len(prefs) == 1:
            raise DataError(f"has no data files for split '{prefs[0]}' (found: {found})", file=str(path),
                            reason="no_data_files")
        raise DataError(f"has no data files for any of the splits {', '.join(prefs)} (found: {found}); "
                        "name the split to read", file=str(path), reason="no_data_files")
    return path, [p for p, s in by_split.items() if s == chosen], chosen


def _split_of(path: Path, extra: tuple[str, ...] = ()) -> str | None:
    """The split a data file is named after (``train.jsonl``, ``test-00000.parquet``), or None."""
    stem = path.name[: -len(path.suffix)].lower()
    for s in SPLIT_NAMES + tuple(x for x in extra if x.lower() not in SPLIT_NAMES):
        low = s.lower()
        if stem == low or re.match(rf"^{re.escape(low)}[-_.]", stem):
            return s if s in extra else low
    return None


def record_fields(rec: RawRecord) -> dict[str, Any]:
    """A record's fields: its row's own error if reading it failed, else a one-line error unless it is an object."""
    if rec.error is not None:
        raise rec.error
    if not isinstance(rec.value, dict):
        raise DataError(f"expected an object (a JSON dict of fields), got {type(rec.value).__name__}",
                        file=rec.source, row=rec.row, reason="not_object")
    return rec.value


def required_text(rec: RawRecord, field: str, value: Any) -> str:
    """``value`` when it is a non-empty string, else a one-line error naming the record's file, row and field."""
    if not isinstance(value, str) or not value:
        raise DataError("is missing or not a non-empty string", file=rec.source, row=rec.row, field=field,
                        reason="missing_field")
    return value
