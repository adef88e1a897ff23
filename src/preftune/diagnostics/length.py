"""Length bias: how the implicit reward follows response length, and how long the policy's
own samples are against the reference's (P38, P52).

P38 (LD-DPO, "Length desensitization in DPO") shows DPO's implicit reward
``r = beta (log pi(y|x) - log pi_ref(y|x))`` correlates strongly with response length, which
drives verbosity; P52 ("The Hitchhiker's guide to human alignment with *PO") measures the
length of the responses DPO-trained policies *generate* against the SFT/reference model.
This module reports both: the Pearson and Spearman correlation of the implicit reward with
the response length (over chosen and rejected responses), the correlation of the reward
margin with the length difference, and the mean length of sampled responses of the policy
and of the reference on a few prompts (:func:`preftune.models.generate.generate`, seeded,
temperature 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..models.generate import eos_id_of, generate
from ._common import as_pairs, eval_mode, floats, is_reference_source, mean, model_device, pad_id_of, pair_logps, pearson, spearman


def unique_prompts(pairs: Sequence[Any], n: int) -> list[list[int]]:
    seen, out = set(), []
    for p in pairs:
        key = tuple(p.prompt_ids)
        if key not in seen:
            seen.add(key)
            out.append(list(p.prompt_ids))
        if len(out) == n:
            break
    return out


def sample_lengths(model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, eos_id: Any,
                   max_new_tokens: int = 64, seed: int = 0, batch_size: int = 8) -> np.ndarray:
    """Number of generated tokens (up to and including the first EOS) per prompt, sampling at
    temperature 1 (:func:`preftune.models.generate.generate`: left-padded batches, a private
    seeded random stream, so training randomness is untouched)."""
    gens = generate(model, None, prompts, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                    eos_id=eos_id, pad_id=pad_id)
    return np.asarray([len(g.response_ids) for g in gens], dtype=np.float64)


def reward_length_correlation(rewards: Sequence[float], lengths: Sequence[float]) -> dict[str, float | None]:
    """Pearson and Spearman correlation of implicit rewards with response lengths."""
    return {"pearson": pearson(rewards, lengths), "spearman": spearman(rewards, lengths)}


@dataclass
class LengthResult:
    beta: float
    reward_length_pearson: float | None
    reward_length_spearman: float | None
    margin_length_pearson: float | None
    mean_chosen_length: float
    mean_rejected_length: float
    sample_length: float | None
    ref_sample_length: float | None
    rewards_chosen: np.ndarray | None = None
    rewards_rejected: np.ndarray | None = None
    chosen_lengths: np.ndarray | None = None
    rejected_lengths: np.ndarray | None = None
    sample_lengths: np.ndarray | None = None
    ref_sample_lengths: np.ndarray | None = None
    rows: list[int] = field(default_factory=list)

    @property
    def sample_length_ratio(self) -> float | None:
        if self.sample_length is None or not self.ref_sample_length:
            return None
        return self.sample_length / self.ref_sample_length

    def summary(self) -> dict[str, Any]:
        return {"beta": self.beta, "reward_length_pearson": self.reward_length_pearson,
                "reward_length_spearman": self.reward_length_spearman,
                "margin_length_pearson": self.margin_length_pearson,
                "mean_chosen_length": self.mean_chosen_length, "mean_rejected_length": self.mean_rejected_length,
                "sample_length": self.sample_length, "ref_sample_length": self.ref_sample_length,
                "sample_length_ratio": self.sample_length_ratio}

    def to_dict(self) -> dict[str, Any]:
        per: dict[str, Any] = {"row": list(self.rows)}
        for name in ("rewards_chosen", "rewards_rejected", "chosen_lengths", "rejected_lengths", "sample_lengths",
                     "ref_sample_lengths"):
            v = getattr(self, name)
            if v is not None:
                per[name] = floats(v)
        return {"summary": self.summary(), "per_pair": per}


def length_bias(model: Any, ref: Any, data: Sequence[Any], *, tokenizer: Any = None, beta: float = 0.1,
                sample_prompts: int = 8, max_new_tokens: int = 64, seed: int = 0, batch_size: int = 8,
                max_length: int | None = 1024, max_prompt_length: int | None = 512) -> LengthResult:
    """Implicit-reward/length correlation (P38) and sampled-length comparison (P52).

    ``ref``: None (the model is its own reference: rewards are zero and the correlations None),
    a model (also sampled from), or a ReferenceSource (log-probs only, no samples).
    ``sample_prompts=0`` skips generation.
    """
    pairs = as_pairs(data, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    pad = pad_id_of(model, tokenizer)
    with eval_mode(model, ref):
        pc, pr, lc, lr = pair_logps(model, pairs, pad, batch_size)  # type: ignore[misc]
        refs = None if ref is None else pair_logps(ref, pairs, pad, batch_size, model_device(model))
    res = LengthResult(beta, None, None, None, float(lc.mean()), float(lr.mean()), None, None,
                       chosen_lengths=lc, rejected_lengths=lr, rows=[p.row for p in pairs])
    if refs is not None:
        rw, rl = beta * (pc - refs[0]), beta * (pr - refs[1])
        corr = reward_length_correlation(np.concatenate([rw, rl]), np.concatenate([lc, lr]))
        res.reward_length_pearson, res.reward_length_spearman = corr["pearson"], corr["spearman"]
        res.margin_length_pearson = pearson(rw - rl, lc - lr)
        res.rewards_chosen, res.rewards_rejected = rw, rl
    if sample_prompts > 0:
        prompts = unique_prompts(pairs, sample_prompts)
        eos = eos_id_of(model, tokenizer)
        res.sample_lengths = sample_lengths(model, prompts, pad_id=pad, eos_id=eos, max_new_tokens=max_new_tokens,
                                            seed=seed, batch_size=batch_size)
        res.sample_length = mean(res.sample_lengths)
        if ref is None:
            res.ref_sample_lengths, res.ref_sample_length = res.sample_lengths, res.sample_length
        elif not is_reference_source(ref):
            res.ref_sample_lengths = sample_lengths(ref, prompts, pad_id=pad, eos_id=eos,
                                                    max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
            res.ref_sample_length = mean(res.ref_sample_lengths)
    return res


__all__ = ["LengthResult", "eos_id_of", "length_bias", "reward_length_correlation", "sample_lengths",
           "unique_prompts"]
