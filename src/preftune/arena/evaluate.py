"""Held-out evaluation against the task's true reward.

For a policy, on held-out prompts:

* ``true_reward`` -- mean true reward of its samples;
* ``win_rate_vs_sft`` -- sample ``j`` of the policy against sample ``j`` of the SFT model on
  the same prompt, by true reward: win 1, tie 1/2, loss 0, averaged;
* ``kl`` -- ``E_{y~pi}[log pi(y|x) - log pi_ref(y|x)]``, the sequence-level KL to the
  reference (the SFT model) estimated on the policy's own samples;
* ``length`` -- mean response length in characters (one character is one token here);
* ``ranking_accuracy`` -- share of held-out pairs (SFT samples labelled by the true reward)
  where ``pi(y_w|x) > pi(y_l|x)``, the ranking accuracy of P02; ``reward_accuracy`` --
  the same with the implicit reward ``log pi/pi_ref`` (what DPO optimises);
* the task's own metrics (``exact``, ``unsafe``, ...), averaged over samples.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..data.types import PairExample, TokenizedPair
from ..models.scoring import pair_logps as _pair_logps
from ..models.scoring import response_logps
from .models import Sample, encode
from .tasks import Task


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of positions where ``a`` beats ``b``; a tie counts one half."""
    if len(a) != len(b):
        raise ValueError(f"win_rate needs equally many scores, got {len(a)} and {len(b)}")
    if not a:
        return float("nan")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def evaluate_policy(task: Task, policy: Any, reference: Any, tok: Any, samples: Sequence[Sequence[Sample]],
                    sft_rewards: Sequence[Sequence[float]], heldout_pairs: Sequence[PairExample],
                    reference_pair_logps: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Metrics of ``policy`` from its samples on held-out prompts (``samples[i][j]``).

    ``sft_rewards[i][j]`` is the true reward of the SFT model's sample ``j`` on prompt ``i``.
    """
    flat = [s for row in samples for s in row]
    if not flat:
        raise ValueError("evaluate_policy needs at least one sample (no evaluation prompt?); the arena falls "
                         "back to fresh samples of the training prompts when the task has no unseen prompt")
    rewards = [[task.reward(s.prompt, s.response) for s in row] for row in samples]
    per_prompt_win = [win_rate(r, b[:len(r)]) for r, b in zip(rewards, sft_rewards)]
    items = [(s.prompt_ids, s.response_ids) for s in flat]
    lp_pol = response_logps(policy, items, pad_id=tok.pad_token_id, batch_size=256)
    lp_ref = response_logps(reference, items, pad_id=tok.pad_token_id, batch_size=256)
    out: dict[str, float] = {
        "true_reward": sum(sum(r) for r in rewards) / len(flat),
        "win_rate_vs_sft": sum(per_prompt_win) / len(per_prompt_win),
        "win_rate_se": _stderr(per_prompt_win),
        "kl": float((lp_pol - lp_ref).mean()),
        "length": sum(len(s.response) for s in flat) / len(flat),
    }
    extra: dict[str, float] = {}
    for s in flat:
        for k, v in task.metrics(s.prompt, s.response).items():
            extra[k] = extra.get(k, 0.0) + v
    out.update({k: v / len(flat) for k, v in extra.items()})
    out["ranking_accuracy"] = out["reward_accuracy"] = float("nan")   # no held-out pair: every sample tied
    if heldout_pairs:
        c, r = pair_logps(policy, tok, heldout_pairs)
        out["ranking_accuracy"] = float((c > r).float().mean())
        if reference_pair_logps is None:
            reference_pair_logps = pair_logps(reference, tok, heldout_pairs)
        rc, rr = reference_pair_logps
        out["reward_accuracy"] = float(((c - rc) > (r - rr)).float().mean())
    return out


def pair_logps(model: Any, tok: Any, pairs: Sequence[PairExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and of the rejected answers of ``pairs``."""
    enc = []
    for p in pairs:
        prompt_ids, chosen = encode(tok, p.prompt, p.chosen)
        enc.append(TokenizedPair(prompt_ids, chosen, encode(tok, p.prompt, p.rejected)[1]))
    lp = _pair_logps(model, enc, tok.pad_token_id, batch_size=128)
    return lp.chosen, lp.rejected
