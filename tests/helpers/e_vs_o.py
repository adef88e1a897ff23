"""The 'e' vs 'o' game the self-play tests share: a judge that prefers 'e', and the policy's probability of 'e'."""
from __future__ import annotations

import torch


def prefer_e(prompts, a, b):
    """'e' beats anything else with probability 0.8, whatever the prompt (a proper preference: P(a > b) + P(b > a)
    = 1, which the runners rely on when they judge each unordered pair once)."""
    return [0.5 if (x == "e") == (y == "e") else (0.8 if x == "e" else 0.2) for x, y in zip(a, b)]


def p_e(model_dir) -> float:
    """The SFT-format model's probability of answering 'e' rather than 'o', averaged over 14 prompts."""
    from preftune.arena.models import encode, load_sft
    from preftune.data.collate import collate_ranked
    from preftune.data.types import TokenizedRanked
    from preftune.models.logprobs import sequence_logps

    model, tok = load_sft(model_dir)
    items = [TokenizedRanked(encode(tok, f"n {i}:")[0], [encode(tok, "", "e")[1], encode(tok, "", "o")[1]], [0, 0])
             for i in range(0, 40, 3)]
    with torch.no_grad():
        p = sequence_logps(model, collate_ranked(items, tok.pad_token_id)).sums.exp().view(-1, 2)
    return float((p[:, 0] / p.sum(-1)).mean())


def even_sft(tmp_path_factory, *, demos: int, steps: int):
    """A tiny SFT model of the 'e'/'o' task (hidden 32, one layer), built in a fresh cache directory."""
    from conftest import EvenTask
    from preftune.arena.models import SFTConfig, sft_model_dir

    cfg = SFTConfig(demos=demos, steps=steps, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    path, _ = sft_model_dir(EvenTask(), 0, cfg, tmp_path_factory.mktemp("sft_cache"))
    return path
