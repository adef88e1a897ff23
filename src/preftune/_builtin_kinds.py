"""The built-in data kinds: pairs, unpaired (thumbs up/down) examples and ranked lists."""
from __future__ import annotations

import functools
from typing import Any

import torch

from .data import collate
from .data.packed import collate_pairs_packed, collate_ranked_packed, collate_unpaired_packed
from .data.prefix_shared import collate_pairs_prefix_shared, collate_ranked_prefix_shared
from .data.types import (PairExample, RankedExample, SequenceBatch, TokenizedPair, TokenizedRanked,
                         TokenizedUnpaired, UnpairedExample)
from .kinds import DataKind, register_kind
from .models.logprobs import SeqLogps
from .objectives.base import ListStats, PairStats, UnpairedStats


# Block layouts pass SDPA a [rows, 1, T, T] mask. On CUDA its memory-efficient kernel takes such a mask only
# when T keeps the mask's rows 16-byte aligned; otherwise SDPA falls back to the math kernel. Measured on an
# H200 (benchmarks/bench_gpu.py, 0.39B model, pairs up to 2k tokens): packed steps took 0.4 s at some lengths and
# 2.3-3.6 s at others before rows were padded to a multiple of 8 tokens (at most 7 pad tokens a row).
BLOCK_ALIGN = 8


def _aligned(fn: Any) -> Any:
    return functools.partial(fn, pad_to_multiple_of=BLOCK_ALIGN)  # picklable, unlike a closure


def _split(x: Any, B: int) -> tuple[Any, Any]:
    return (None, None) if x is None else (x[:B], x[B:])


def pair_stats(batch: SequenceBatch, policy: SeqLogps, reference: SeqLogps | None = None) -> PairStats:
    """Pairs: sequences 0..B-1 are the chosen responses, B..2B-1 the rejected ones."""
    ex = dict(batch.extras)
    B = batch.num_examples
    pc, pr = _split(policy.sums, B)
    rc, rr = _split(reference.sums if reference is not None else None, B)
    lc, lr = _split(policy.lengths, B)
    tpc, tpr = _split(policy.token_logps, B)
    trc, trr = _split(reference.token_logps if reference is not None else None, B)
    mc, mr = _split(policy.mask, B) if policy.token_logps is not None else (None, None)
    return PairStats(pc, pr, rc, rr, lc, lr, tpc, tpr, trc, trr, mc, mr,
                     score_chosen=ex.pop("score_chosen", None), score_rejected=ex.pop("score_rejected", None),
                     margin=ex.pop("margin", None), weight=ex.pop("weight", None), extras=ex)


def unpaired_stats(batch: SequenceBatch, policy: SeqLogps, reference: SeqLogps | None = None) -> UnpairedStats:
    ex = dict(batch.extras)
    return UnpairedStats(policy.sums, ex.pop("label").bool(), reference.sums if reference is not None else None,
                         policy.lengths, policy.token_logps,
                         reference.token_logps if reference is not None else None,
                         policy.mask if policy.token_logps is not None else None,
                         weight=ex.pop("weight", None), extras=ex)


def list_stats(batch: SequenceBatch, policy: SeqLogps, reference: SeqLogps | None = None) -> ListStats:
    """Ranked lists: sequences are example-major, ``[B, K]``."""
    ex = dict(batch.extras)
    B, K = batch.num_examples, batch.list_size

    def view(x: Any) -> Any:
        return None if x is None else x.view(B, K, *x.shape[1:])

    return ListStats(view(policy.sums), ex.pop("scores"), view(reference.sums if reference is not None else None),
                     view(policy.lengths), ex.pop("valid"), view(policy.token_logps),
                     view(reference.token_logps if reference is not None else None),
                     view(policy.mask) if policy.token_logps is not None else None,
                     weight=ex.pop("weight", None), extras=ex)


PAIR = register_kind(DataKind(
    "pair", PairExample, TokenizedPair,
    collators={"padded": collate.collate_pairs, "prefix_shared": _aligned(collate_pairs_prefix_shared),
               "packed": _aligned(collate_pairs_packed)},
    default_layout="packed",
    # measured on an H200 (docs/benchmarks.md, GPU): as fast as packed at its best, steadier from batch to batch
    cuda_layout="prefix_shared",
    length=lambda it: len(it.prompt_ids) * 2 + len(it.chosen_ids) + len(it.rejected_ids),
    stats=pair_stats, sequences="blocked",
    groups=lambda b: {"chosen": torch.arange(b.num_sequences) < b.num_examples,
                      "rejected": torch.arange(b.num_sequences) >= b.num_examples},
    description="a prompt with a chosen and a rejected response"))

UNPAIRED = register_kind(DataKind(
    "unpaired", UnpairedExample, TokenizedUnpaired,
    collators={"padded": collate.collate_unpaired, "packed": _aligned(collate_unpaired_packed)},
    default_layout="padded",
    length=lambda it: len(it.prompt_ids) + len(it.completion_ids),
    stats=unpaired_stats, sequences="blocked",
    groups=lambda b: {"chosen": b.extras["label"].cpu() > 0.5, "rejected": b.extras["label"].cpu() <= 0.5},  # as TRL's KTO
    description="a prompt with one response labelled desirable or undesirable"))

def lists_share_prompts_cheaply(examples: Any) -> bool:
    """Whether one row per list (the prompt once, then its K completions) costs at most twice the padded layout's
    attention work (sum of squared row lengths): true for short completions (an online GRPO group of 4 x 32 tokens
    after a 44-token prompt: 1.3x the attention work for 0.55x the tokens), false for long ones (16 x 1024 after
    512: 7.6x the attention work, and a [T, T] mask of 17k tokens a side)."""
    block = padded = 0
    for e in examples:
        P = len(e.prompt_ids)
        block += (P + sum(len(c) for c in e.completion_ids)) ** 2
        padded += sum((P + len(c)) ** 2 for c in e.completion_ids)
    return block <= 2 * padded


LIST = register_kind(DataKind(
    "list", RankedExample, TokenizedRanked,
    collators={"padded": collate.collate_ranked, "prefix_shared": _aligned(collate_ranked_prefix_shared),
               "packed": _aligned(collate_ranked_packed)},
    # the K completions share one prompt: computed once instead of K times (an online GRPO group of 4 samples
    # of 32 tokens after a 44-token prompt: 640 tokens instead of 1216; docs/benchmarks.md, online training)
    default_layout="packed",
    cuda_layout="prefix_shared",
    auto_block_ok=lists_share_prompts_cheaply,
    length=lambda it: sum(len(it.prompt_ids) + len(c) for c in it.completion_ids),
    stats=list_stats, sequences="example_major",
    description="a prompt with K scored responses"))
