"""Tokenize typed examples with an exact prompt/response boundary, then truncate by policy.

The convention is TRL 1.16's ``DPOTrainer._prepare_dataset``, so that losses computed here and
in TRL on the same data and model agree:

* text data: EOS is appended to each response that does not already end with it; the prompt
  and prompt+response are tokenized separately (``tokenizer(text)``);
* conversational data: the chat template renders the prompt with ``add_generation_prompt=True``
  and prompt+response without it;
* the response starts where the prompt tokens and the prompt+response tokens diverge (the
  minimum over all responses of the example): a token merged across the boundary, or a
  template that renders the prompt differently alone, moves the boundary left, never right.

Truncation, after that: ``max_prompt_length`` cuts the prompt (``keep_end`` keeps its last
tokens, ``keep_start`` its first); then ``max_length`` cuts each response so that prompt +
response fits, keeping the response's start. A prompt that alone fills ``max_length`` is an
error (reason ``too_long``).

Ranked completions given as reasoning steps (``RankedExample.steps``): step ``j`` ends at the response
token where ``prompt + completion[:end_j]`` and ``prompt + completion + EOS`` stop agreeing (a token merged
across a step boundary goes to the later step); EOS belongs to the last step. ``TokenizedRanked.step_ids``
holds each response token's step, cut with the response.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from .types import (Example, PairExample, RankedExample, TokenizedPair, TokenizedRanked, TokenizedUnpaired,
                    UnpairedExample)

log = logging.getLogger("preftune.data")

TRUNCATION_MODES = ("keep_end", "keep_start")
_CHUNK = 1024  # text examples are tokenized in batches of this many (the fast tokenizer's batch call)
PROGRESS_MIN = 2000  # fewer examples than this tokenize without a progress bar (it would only flash)
Tokenized = TokenizedPair | TokenizedUnpaired | TokenizedRanked


@dataclass
class TokenizeResult:
    items: list[Tokenized]
    truncated: int = 0                      # rows whose prompt or a response was cut
    skipped: dict[str, int] = field(default_factory=dict)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, *, max_length: int | None = 1024,
                      max_prompt_length: int | None = 512, truncation: str = "keep_end",
                      on_bad_row: str = "error", progress: bool = False) -> TokenizeResult:
    """Tokenize ``examples`` (all of one kind) with ``tokenizer``; see the module docstring.

    ``None`` for ``max_length`` / ``max_prompt_length`` turns that cut off. With
    ``on_bad_row="skip"`` rows that cannot be tokenized (prompt too long, a chat template
    error, no response tokens) are dropped and counted by reason in ``result.skipped``.
    ``progress``: show a progress bar (tqdm, on stderr) when there are at least
    ``PROGRESS_MIN`` examples; off by default, so library calls stay quiet.
    """
    if truncation not in TRUNCATION_MODES:
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    for name, v, low in (("max_length", max_length, 2), ("max_prompt_length", max_prompt_length, 1)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ConfigError(f"{name} must be an integer >= {low} or None, got {v!r}")
    if any(ex.conversational for ex in examples) and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("conversational data needs a tokenizer with a chat template (tokenizer.chat_template "
                          "is not set)")
    if not all(ex.conversational for ex in examples) and not getattr(tokenizer, "eos_token", None):
        raise ConfigError("the tokenizer has no eos_token; text data ends every response with EOS")

    enc = _Encoder(tokenizer)
    items: list[Tokenized] = []
    skipped: Counter[str] = Counter()
    truncated = 0
    bar = _progress_bar(len(examples), progress)
    try:
        for start in range(0, len(examples), _CHUNK):
            enc.encode_texts(examples[start:start + _CHUNK])
            for ex in examples[start:start + _CHUNK]:
                if bar is not None:
                    bar.update(1)
                try:
                    item = _tokenize_one(ex, enc, max_length, max_prompt_length, truncation)
                except DataError as e:
                    if on_bad_row == "error":
                        raise
                    skipped[e.reason or "invalid"] += 1
                    continue
                truncated += item.truncated
                items.append(item)
    finally:
        if bar is not None:
            bar.close()
    if enc.moved:
        log.warning("%d of %d rows: the tokenized prompt is not a prefix of prompt+response (tokens merge across "
                    "the boundary, or the chat template renders the prompt differently alone); their responses "
                    "start where the two diverge, as in TRL", enc.moved, len(examples))
    if examples and not items:
        detail = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.items()))
        raise DataError(f"no rows left after tokenization: all {len(examples)} were skipped ({detail})",
                        reason="no_rows")
    return TokenizeResult(items, truncated, dict(skipped))


def _progress_bar(total: int, progress: bool) -> Any:
    """A tqdm bar over ``total`` examples, or None when off (not asked for, or too few to matter)."""
    if not progress or total < PROGRESS_MIN:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="tokenizing", unit="row", dynamic_ncols=True, leave=False)


class _Encoder:
    """Renders and tokenizes prompts and prompt+response the way TRL does."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token
        self.moved = 0  # rows whose boundary moved left of the tokenized prompt's end
        self.cache: dict[str, list[int]] = {}

    def encode_texts(self, examples: Sequence[Example]) -> None:
        """Tokenize the text (non-chat) strings of ``examples`` in one batch call; ``ids`` reads them."""
        texts = []
        for ex in examples:
            if not isinstance(ex.prompt, str):
                continue
            texts.append(ex.prompt)
            texts.extend(ex.prompt + self.with_eos(r) for r in _responses(ex)[0] if isinstance(r, str))
        unique = list(dict.fromkeys(texts))
        self.cache = dict(zip(unique, self.tok(text=unique)["input_ids"])) if unique else {}

    def with_eos(self, text: str) -> str:
        return text if text.endswith(self.eos) else text + self.eos

    def ids(self, messages_or_text: Any, *, generation_prompt: bool = False) -> list[int]:
        if isinstance(messages_or_text, list):
            out = self.tok.apply_chat_template(messages_or_text, tokenize=True, return_dict=True,
                                               add_generation_prompt=generation_prompt)
            return list(out["input_ids"])
        if messages_or_text in self.cache:
            return list(self.cache[messages_or_text])
        return list(self.tok(text=messages_or_text)["input_ids"])

    def split(self, ex: Example, prompt: Any, responses: Sequence[Any]) -> tuple[list[int], list[list[int]]]:
        """Token ids of the prompt and of each response, split where they diverge."""
        try:
            if isinstance(prompt, list):
                prompt_ids = self.ids(prompt, generation_prompt=True)
                full = [self.ids(prompt + r) for r in responses]
            else:
                prompt_ids = self.ids(prompt)
                full = [self.ids(prompt + self.with_eos(r)) for r in responses]
        except DataError:
            raise
        except Exception as e:  # a chat template may raise anything (jinja TemplateError, KeyError...)
            raise DataError(f"chat template failed ({type(e).__name__}: {e})", file=ex.source, row=ex.row,
                            reason="chat_template") from None
        n = min(common_prefix_length(prompt_ids, f) for f in full)
        self.moved += n < len(prompt_ids)
        return prompt_ids[:n], [f[n:] for f in full]


def _responses(ex: Example) -> tuple[list[Any], list[str]]:
    """The responses of an example and their field names."""
    if isinstance(ex, PairExample):
        return [ex.chosen, ex.rejected], ["chosen", "rejected"]
    if isinstance(ex, UnpairedExample):
        return [ex.completion], [getattr(ex, "origin", "completion")]
    if isinstance(ex, RankedExample):
        return list(ex.completions), [f"completions[{i}]" for i in range(len(ex.completions))]
    raise TypeError(f"not an example: {type(ex).__name__}")


def _tokenize_one(ex: Example, enc: _Encoder, max_length: int | None, max_prompt_length: int | None,
                  truncation: str) -> Tokenized:
    responses, names = _responses(ex)
    prompt_ids, resp_ids = enc.split(ex, ex.prompt, responses)
    steps = _step_ids(ex, enc, prompt_ids, resp_ids) if isinstance(ex, RankedExample) and ex.steps else None

    def error(message: str, field_name: str | None, reason: str) -> DataError:
        return DataError(message, file=ex.source or None, row=ex.row, field=field_name, reason=reason)

    if not prompt_ids:
        raise error("has no tokens of its own: its tokens merge with the response's (end the prompt on a "
                    "token boundary, e.g. with a space or newline)", "prompt", "empty")
    for name, ids in zip(names, resp_ids):
        if not ids:
            raise error("tokenizes to no response tokens", name, "empty")

    cut = False
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:] if truncation == "keep_end" else prompt_ids[:max_prompt_length]
        cut = True
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise error(f"has {len(prompt_ids)} tokens, which leaves no room for a response within "
                        f"max_length={max_length} (lower max_prompt_length or raise max_length)", "prompt",
                        "too_long")
        room = max_length - len(prompt_ids)
        if any(len(ids) > room for ids in resp_ids):
            resp_ids = [ids[:room] for ids in resp_ids]
            cut = True

    if isinstance(ex, PairExample):
        return TokenizedPair(prompt_ids, resp_ids[0], resp_ids[1], ex.row, dict(ex.extras), cut)
    if isinstance(ex, UnpairedExample):
        return TokenizedUnpaired(prompt_ids, resp_ids[0], ex.label, ex.row, dict(ex.extras), cut)
    step_ids = None if steps is None else [ids[:len(r)] for ids, r in zip(steps, resp_ids)]
    return TokenizedRanked(prompt_ids, resp_ids, list(ex.scores), ex.row, dict(ex.extras), cut, step_ids)


def _step_ids(ex: RankedExample, enc: _Encoder, prompt_ids: list[int], resp: list[list[int]]) -> list[list[int]]:
    """Per completion, the step index of each response token (before truncation)."""
    assert ex.steps is not None and isinstance(ex.prompt, str)
    n = len(prompt_ids)
    out = []
    for text, ends, r in zip(ex.completions, ex.steps, resp):
        full = prompt_ids + r
        bounds = [max(0, common_prefix_length(enc.ids(ex.prompt + text[:e]), full) - n) for e in ends[:-1]]
        out.append([sum(b <= i for b in bounds) for i in range(len(r))])
    return out
