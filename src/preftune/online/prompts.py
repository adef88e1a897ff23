"""Prompts for online training: read, checked and tokenized once.

A prompt row holds ``prompt`` (a string, or a conversation: a list of ``{"role", "content"}`` messages,
rendered with the tokenizer's chat template and its generation prompt) and any other columns, which the
reward function receives by name (TRL's convention: ``fn(prompts, completions, **columns)``). A bad row is a
one-line error naming the file, row and field -- or skipped and counted with ``on_bad_row='skip'``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..data.records import read_records, record_fields
from ..errors import ConfigError, DataError


@dataclass
class Prompt:
    text: str                    # what the reward function sees (a conversation: its rendered template)
    ids: list[int]
    row: int
    columns: dict[str, Any] = field(default_factory=dict)
    raw: Any = None              # the prompt as given (string or messages)


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) and "role" in m and "content" in m for m in v)


def load_prompts(source: Any, tokenizer: Any, *, column: str = "prompt", max_prompt_length: int | None = None,
                 truncation: str = "keep_end", on_bad_row: str = "error") -> tuple[str, list[Prompt], dict[str, int]]:
    """(name, prompts, skipped counts) of a prompt file, dataset or list of dicts/strings."""
    from ..data.tokenize import _Encoder

    if isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        source = [{column: s} for s in source]
    name, records = read_records(source)
    enc = _Encoder(tokenizer)
    out: list[Prompt] = []
    skipped: dict[str, int] = {}
    for rec in records:
        try:
            d = record_fields(rec)
            p = d.get(column)
            if isinstance(p, str) and p:
                ids = enc.ids(p)
                text = p
            elif _is_messages(p):
                try:
                    ids = enc.ids(p, generation_prompt=True)
                    text = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                except Exception as e:  # a chat template may raise anything
                    raise DataError(f"chat template failed ({type(e).__name__}: {e})", file=rec.source, row=rec.row,
                                    field=column, reason="chat_template") from None
            else:
                raise DataError("is missing, empty, or neither a string nor a list of {role, content} messages",
                                file=rec.source, row=rec.row, field=column, reason="missing_field")
            if not ids:
                raise DataError("tokenizes to no tokens", file=rec.source, row=rec.row, field=column,
                                reason="empty_prompt")
        except DataError as e:
            if on_bad_row != "skip":
                raise
            reason = getattr(e, "reason", None) or "bad_row"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        if max_prompt_length and len(ids) > max_prompt_length:
            ids = ids[-max_prompt_length:] if truncation == "keep_end" else ids[:max_prompt_length]
        cols = {k: v for k, v in d.items() if k != column}
        out.append(Prompt(text, ids, rec.row, cols, p))
    if not out:
        raise ConfigError(f"{name}: no prompts" + (f" left ({sum(skipped.values())} bad rows skipped)" if skipped else ""))
    return name, out, skipped


def task_prompts(task: Any, tokenizer: Any, n: int, seed: int) -> tuple[str, list[Prompt]]:
    """``n`` prompts sampled from an arena task (its own prompt distribution), tokenized as the arena does."""
    import random

    from ..arena.models import encode

    texts = task.sample_prompts(n, random.Random(seed))
    return f"task {task.name}", [Prompt(t, encode(tokenizer, t)[0], i, {}, t) for i, t in enumerate(texts)]


def columns_for(prompts: Sequence[Prompt], k: int) -> dict[str, list[Any]]:
    """The prompts' extra columns, each repeated for the k completions of its prompt (TRL's layout)."""
    keys = sorted({key for p in prompts for key in p.columns})
    return {key: [p.columns.get(key) for p in prompts for _ in range(k)] for key in keys}


__all__ = ["Prompt", "columns_for", "load_prompts", "task_prompts"]
