"""Sampling responses from a causal LM: the one generation routine of preftune (the arena, the
diagnostics, the online loops: generate -> score -> pair).

:func:`generate` takes prompts as token ids and returns ``n`` responses per prompt as token ids,
by transformers' ``model.generate`` (no hand-written sampler):

* batches of up to ``batch_size`` sequences, LEFT-padded with an attention mask (a decoder-only
  model continues from the last position, so padding goes first; ``generate`` derives the
  positions from the mask), so a padded prompt gets what it would get alone;
* without gradients, in eval mode; the model's train/eval mode is restored afterwards;
* seeded: the draws come from the torch RNG forked and seeded with ``seed`` (the caller's random
  state is restored after), so equal calls give equal samples and training randomness is
  untouched. Samples depend on how the prompts are batched, not only on the seed: keep
  ``batch_size`` and ``bucket_by_length`` to reproduce a run;
* responses are cut after the first EOS (kept) and never contain padding; a response without
  EOS used the whole ``max_new_tokens`` budget (``finished`` False);
* with ``n > 1`` the prompts of a batch are encoded once, not ``n`` times: one forward over the
  distinct prompts (all but their last token) fills a KV cache, which is repeated for the ``n``
  samples and handed to ``generate`` -- transformers' documented way to reuse a prompt's cache
  ("re-use cache to continue generation"). The samples are the same as without sharing (greedy
  outputs equal, sampled ones equal under one seed; ``tests/test_generate.py``). Models whose cache
  cannot be reused this way (encoder-decoder, stateful, no ``batch_select_indices``) encode each
  sample's prompt, as before. On the online GRPO benchmark (4 prompts x 4 samples, ~44-token prompts)
  it took the prefill from 16 rows to 4.

Sampling settings not named here (repetition penalty, ...) come from the model's
``generation_config``; ``temperature``, ``top_p``, ``top_k`` and ``do_sample`` are always passed,
so a checkpoint's shipped defaults do not change them (``top_k=0``, ``top_p=1``, ``temperature=1``:
plain sampling from the model's distribution).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .loading import unwrap
from .sampling import InverseCDFSampler, inverse_cdf_supported
from .scoring import eval_mode, model_device


@dataclass
class Generation:
    """One sampled response: sample ``sample`` (``0..n-1``) of prompt ``index``."""

    index: int
    sample: int
    prompt_ids: list[int]
    response_ids: list[int]   # as generated: ends with EOS unless the budget ran out; no padding
    finished: bool            # True when the response ends with EOS


def eos_id_of(model: Any, tokenizer: Any = None) -> int | list[int] | None:
    """The end-of-sequence id(s): the tokenizer's, else the model's generation config's, else its config's."""
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if eos is None:
        base = unwrap(model)
        eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(base, "config", None), "eos_token_id", None)
    return eos


def pad_id_of(model: Any, tokenizer: Any = None) -> int:
    """The padding id: the tokenizer's, else the model config's, else 0."""
    for src in (tokenizer, getattr(unwrap(model), "config", None)):
        pid = getattr(src, "pad_token_id", None) if src is not None else None
        if pid is not None:
            return int(pid)
    return 0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, P]`` with every prompt right-aligned (padding first)."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), P), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, P - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attn[j, P - len(p):] = 1
    return ids, attn


def _eos_set(eos: Any) -> set[int]:
    if eos is None:
        return set()
    if isinstance(eos, (list, tuple, set)):
        return {int(e) for e in eos}
    return {int(eos)}


def _cut(row: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """The response up to and including its first EOS; whether there was one."""
    for t, tok in enumerate(row):
        if tok in eos:
            return row[:t + 1], True
    return row, False


def _batches(jobs: list[tuple[int, int]], prompts: list[list[int]], batch_size: int,
             bucket_by_length: bool) -> list[list[tuple[int, int]]]:
    """Consecutive jobs, ``batch_size`` at most per batch; with ``bucket_by_length`` jobs are ordered
    by prompt length (stable) and a batch holds one prompt length only."""
    if bucket_by_length:
        jobs = sorted(jobs, key=lambda ij: len(prompts[ij[0]]))
    out: list[list[tuple[int, int]]] = []
    for job in jobs:
        last = out[-1] if out else None
        if (last is None or len(last) == batch_size
                or (bucket_by_length and len(prompts[last[0][0]]) != len(prompts[job[0]]))):
            out.append([job])
        else:
            last.append(job)
    return out


def _forward_params(model: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return set()


def _can_share_prefix(model: Any) -> bool:
    """Whether a prompt's KV cache can be filled by a forward and reused by ``generate`` (decoder-only models with a
    cache class transformers can index by batch)."""
    base = unwrap(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False) or getattr(base, "_is_stateful", False):
        return False
    # generate refuses a cache handed to it when the checkpoint names a cache implementation (Gemma's "hybrid", ...)
    if getattr(getattr(base, "generation_config", None), "cache_implementation", None) is not None:
        return False
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if callable(supports) and not supports():
        return False
    params = _forward_params(base)
    return "position_ids" in params and ("past_key_values" in params or "cache" in params)


def _shared_prefix_cache(model: Any, ids: torch.Tensor, attn: torch.Tensor, rows: list[int]) -> tuple[str, Any] | None:
    """The KV cache of ``ids[:, :-1]`` computed once per distinct prompt and expanded to the batch's rows (``rows[b]``:
    which distinct prompt row b samples from), as ``(generate's keyword, cache)``; None when the model returns no
    reusable cache."""
    first = sorted(set(rows), key=rows.index)
    at = {u: i for i, u in enumerate(first)}
    sel = torch.tensor([rows.index(u) for u in first], device=ids.device)
    u_ids, u_attn = ids[sel, :-1], attn[sel, :-1]
    pos = u_attn.long().cumsum(-1) - 1
    pos.masked_fill_(u_attn == 0, 1)  # as generate's prepare_inputs_for_generation positions padding
    from transformers import DynamicCache

    params = _forward_params(unwrap(model))
    cache_kw = "cache" if "cache" in params else "past_key_values"
    # an explicit DynamicCache: older transformers otherwise return a legacy tuple, which cannot be indexed by batch
    kw: dict[str, Any] = {"input_ids": u_ids, "attention_mask": u_attn, "position_ids": pos, "use_cache": True,
                          cache_kw: DynamicCache()}
    for name in ("logits_to_keep", "num_logits_to_keep"):  # the latter before transformers 4.50
        if name in params:
            kw[name] = 1
            break
    out = model(**kw)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(torch.tensor([at[r] for r in rows], device=ids.device))
    return cache_kw, cache


def _inference_mode_ok(model: Any) -> bool:
    """Inference mode (cheaper than no_grad) unless parameters are sharded by FSDP2 (DTensors) or DeepSpeed ZeRO-3
    (``ds_id``): their gathered copies made under inference mode cannot be used by the training forward after."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        DTensor = ()  # type: ignore[assignment]
    return not any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in unwrap(model).parameters())


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, do_sample: bool = True, seed: int = 0,
             batch_size: int = 64, eos_id: int | Sequence[int] | None = None, pad_id: int | None = None,
             bucket_by_length: bool = False, progress: bool = False) -> list[Generation]:
    """``n`` responses to each prompt (token ids); ``out[i * n + j]`` is sample ``j`` of prompt ``i``.

    ``tokenizer`` (may be None) only supplies ``eos_id`` and ``pad_id`` when they are not given
    (then the model's config does). ``eos_id`` may be a list (any of them ends a response).
    ``do_sample=False`` is greedy decoding (``temperature``/``top_p``/``top_k`` unused).
    ``batch_size``: sequences per ``model.generate`` call; the ``n`` samples of a prompt are
    separate sequences. ``bucket_by_length``: batch only prompts of one length (no padding at
    all), taking them shortest first; otherwise prompts go in order, left-padded.
    """
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"generate needs n, max_new_tokens and batch_size >= 1, got {n}, {max_new_tokens}, "
                         f"{batch_size}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
    prompts = [[int(t) for t in p] for p in prompts]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty: generation needs at least one prompt token")
    eos = eos_id_of(model, tokenizer) if eos_id is None else eos_id
    pad = pad_id_of(model, tokenizer) if pad_id is None else int(pad_id)
    eos_set = _eos_set(eos)
    settings: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} \
        if do_sample else {"do_sample": False}
    dev = model_device(model)
    # the same distribution, one uniform draw per row (sampling.py); on CPU only: a GPU's multinomial is fast, and
    # there the sampler's extra kernels and its check cost more than they save (0.4 ms a token on an H200)
    if do_sample and dev.type == "cpu" and inverse_cdf_supported(model):
        from transformers.generation.logits_process import LogitsProcessorList

        settings = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                    "logits_processor": LogitsProcessorList([InverseCDFSampler(temperature, top_k, top_p)])}
    settings.update(max_new_tokens=max_new_tokens, eos_token_id=list(eos) if isinstance(eos, (tuple, set)) else eos,
                    pad_token_id=pad, use_cache=True)
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    out: list[Generation | None] = [None] * len(jobs)
    devices = list(range(torch.cuda.device_count())) if dev.type == "cuda" else []
    share = n > 1 and _can_share_prefix(model)
    from tqdm.auto import tqdm

    grad_off = torch.inference_mode() if _inference_mode_ok(model) else torch.no_grad()
    with eval_mode(model), grad_off, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for chunk in tqdm(_batches(jobs, prompts, batch_size, bucket_by_length), desc="generating",
                          disable=not progress, leave=False):
            ids, attn = left_pad([prompts[i] for i, _ in chunk], pad)
            ids, attn = ids.to(dev), attn.to(dev)
            rows = [i for i, _ in chunk]
            extra: dict[str, Any] = {}
            if share and ids.shape[1] > 1 and len(set(rows)) < len(rows):
                cached = _shared_prefix_cache(model, ids, attn, rows)
                if cached is not None:
                    extra[cached[0]] = cached[1]
            gen = model.generate(input_ids=ids, attention_mask=attn, **settings, **extra)
            for (i, j), row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
                resp, finished = _cut(row, eos_set)
                out[i * n + j] = Generation(i, j, prompts[i], resp, finished)
    return out  # type: ignore[return-value]


__all__ = ["Generation", "eos_id_of", "generate", "left_pad", "pad_id_of"]
