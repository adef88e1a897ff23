"""preftune.data: read preference records, validate them, and tokenize them.

>>> from preftune.data import load_examples, tokenize_examples
>>> res = load_examples("train.jsonl", on_bad_row="skip")          # doctest: +SKIP
>>> tres = tokenize_examples(res.examples, tokenizer, max_length=512)  # doctest: +SKIP
>>> ev = load_examples("data_dir", split=EVAL_SPLITS, kind="pair")       # doctest: +SKIP

See docs/data.md for the formats, the validation errors and the tokenization convention.
"""
from .formats import KindError, LoadResult, load_examples
from .records import EVAL_SPLITS, heldout_split, pick_split
from .tokenize import TokenizeResult, common_prefix_length, tokenize_examples
from .types import (PAIR_EXTRA_FIELDS, Example, PairExample, RankedExample, SequenceBatch, TokenizedPair,
                    TokenizedRanked, TokenizedUnpaired, UnpairedExample)

__all__ = [
    "load_examples", "LoadResult", "KindError", "EVAL_SPLITS", "pick_split", "heldout_split",
    "tokenize_examples", "TokenizeResult",
    "common_prefix_length", "Example", "PairExample", "UnpairedExample", "RankedExample", "TokenizedPair",
    "TokenizedUnpaired", "TokenizedRanked", "SequenceBatch", "PAIR_EXTRA_FIELDS",
]
