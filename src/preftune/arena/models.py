"""The arena's tiny models: encoding, the cached SFT model and sampling.

Token convention (the trainer's, TRL's for plain-text prompts): ``prompt_ids =
tok(prompt)``, ``response_ids = tok(response) + [eos]``, no BOS. The arena tokenizer is
byte-level with no merges, so one character is one token and lengths are in characters.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..models.generate import generate
from .tasks import Task

SFT_FORMAT_VERSION = 1


@dataclass
class SFTConfig:
    """How the SFT model is built. Every field is part of the cache key."""

    demos: int = 4000
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4

    def key(self, task: Task, seed: int) -> str:
        blob = json.dumps({"task": task.name, "task_config": task.config(), "seed": seed, "sft": asdict(self),
                           "version": SFT_FORMAT_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    import os

    env = os.environ.get("PREFTUNE_ARENA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "preftune" / "arena"


# ----------------------------------------------------------------------------- encoding


def encode(tok: Any, prompt: str, response: str | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids + [eos])``; the response part is empty when not given."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    if response is None:
        return p, []
    return p, tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def decode(tok: Any, ids: Sequence[int]) -> str:
    ids = list(ids)
    if tok.eos_token_id in ids:
        ids = ids[:ids.index(tok.eos_token_id)]
    return tok.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- SFT


def _sft_batches(tok: Any, demos: list[tuple[str, str]], batch_size: int, rng: random.Random):
    enc = [encode(tok, p, r) for p, r in demos]
    while True:
        idx = [rng.randrange(len(enc)) for _ in range(batch_size)]
        T = max(len(enc[i][0]) + len(enc[i][1]) for i in idx)
        ids = torch.full((batch_size, T), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((batch_size, T), dtype=torch.long)
        labels = torch.full((batch_size, T), -100, dtype=torch.long)
        for row, i in enumerate(idx):
            p, r = enc[i]
            ids[row, :len(p) + len(r)] = torch.tensor(p + r)
            attn[row, :len(p) + len(r)] = 1
            labels[row, len(p):len(p) + len(r)] = torch.tensor(r)
        yield ids, attn, labels


def train_sft(task: Task, seed: int, cfg: SFTConfig, progress: Callable[[str], None] | None = None):
    """Build a tokenizer and a tiny model and fit it to the task's demonstrations.

    Returns ``(model, tokenizer, final_loss)``. A plain next-token NLL loop on response tokens.
    """
    from ..models.tiny import build_model, build_tokenizer

    rng = random.Random(f"sft-{task.name}-{seed}")
    demos = task.demonstrations(cfg.demos, rng)
    tok = build_tokenizer([p + r for p, r in demos], vocab_size=64)  # below the byte alphabet: no merges
    model = build_model(len(tok), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                        seed=seed, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, max_position_embeddings=128)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / cfg.steps))
    model.train()
    loss_val = float("nan")
    batches = _sft_batches(tok, demos, cfg.batch_size, rng)
    for step in range(cfg.steps):
        ids, attn, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = 0.9 * loss_val + 0.1 * loss.item() if step else loss.item()
        if progress and step % 50 == 0:
            progress(f"SFT {task.name} seed {seed}: step {step}/{cfg.steps} loss {loss_val:.3f}")
    model.eval()
    return model, tok, loss_val


def sft_model_dir(task: Task, seed: int, cfg: SFTConfig, cache_dir: str | Path | None,
                  progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The cached SFT model directory for (task, seed, cfg), building it if absent.

    Returns ``(path, was_cached)``. The directory is a normal ``save_pretrained`` model and
    tokenizer (safetensors) plus ``arena_sft.json`` with the key's ingredients.
    """
    from ..io import atomic_path

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / f"{task.name}-seed{seed}-{cfg.key(task, seed)}"
    if (path / "arena_sft.json").exists():
        return path, True
    model, tok, loss = train_sft(task, seed, cfg, progress)
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "arena_sft.json").write_text(json.dumps(
            {"task": task.name, "task_config": task.config(), "seed": seed, "sft": asdict(cfg),
             "final_loss": loss}, indent=2, default=str))
    return path, False


def load_sft(path: str | Path):
    from ..models.loading import load_model, load_tokenizer

    model = load_model(str(path))
    model.eval()
    return model, load_tokenizer(str(path))


# ----------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]   # as generated: ends with eos unless the budget ran out


def sample(model: Any, tok: Any, prompts: Sequence[str], n: int, *, seed: int, max_new_tokens: int,
           temperature: float = 1.0, batch_size: int = 512) -> list[list[Sample]]:
    """``n`` samples per prompt (``out[i][j]``), by temperature sampling with a fixed seed.

    :func:`preftune.models.generate.generate` with prompts grouped by token length, so no
    prompt is padded."""
    enc = [encode(tok, p)[0] for p in prompts]
    gens = generate(model, tok, enc, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    batch_size=batch_size, bucket_by_length=True)
    return [[Sample(prompts[i], decode(tok, g.response_ids), g.prompt_ids, g.response_ids)
             for g in gens[i * n:(i + 1) * n]] for i in range(len(prompts))]
