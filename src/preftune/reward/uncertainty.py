"""MC-dropout uncertainty of a preference estimator (P54, UPO: Wang et al. 2024, "Self-Evolutionary Large Language
Models through Uncertainty-Enhanced Preference Optimization", sec. "Uncertainty estimation").

Dropout left on at inference makes T forward passes T samples from an approximate posterior over the weights
(Gal and Ghahramani 2016); P54 reads a preference estimator this way. For a pair (x, y_1, y_2) pass t gives class
probabilities ``p_t = [P_t(y_1 > y_2), P_t(y_2 > y_1)]`` and the pair's uncertainty is BALD, the mutual information
between the prediction and the weights (P54's BALD equation, after Houlsby et al. 2011):

    B = H[mean_t p_t] - mean_t H[p_t],      H[p] = -sum_c p_c log p_c

-- zero when every pass predicts the same distribution, largest (log 2 for two classes) when confident passes
split half and half. The estimator's vote is the majority of the passes' argmax classes.

Here the estimator is a Bradley-Terry reward model (any :class:`~preftune.reward.RewardModel`: a one-label sequence
classifier), ``P_t(y_1 > y_2) = sigmoid(r_t(x, y_1) - r_t(x, y_2))``; :func:`mc_dropout` takes any other model
(e.g. a two-class pair classifier, as the authors') through a function of its own.

Authors' code: wjn1996/Uncertainty-Preference-Optimization @ 29a1c214d5f26e96696f17246316cce5712b1b2c --
``src/alignment/inference/estimating/mc_evaluation.py`` ``mc_estimation`` (``model.train()``, T passes of softmax
probabilities, the vote as ``argmax(bincount(argmax))``, so a tie goes to class 0) and
``src/alignment/inference/estimating/sampler.py`` ``get_BALD_acquisition`` (the formula above with ``log(p + 1e-10)``;
here ``xlogy``, exact at p = 0). Their estimator is a LoRA (``lora_dropout=0.1``) two-class classifier reading the
prompt and both responses, T = 10 in their scripts.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

_ATTN_DROPOUT = ("attention_dropout", "attn_dropout_p", "dropout_p")  # rates attention layers read at run time


def dropout_rates(model: Any) -> list[float]:
    """Every dropout probability in ``model`` (``nn.Dropout`` modules and attention-dropout rates)."""
    out = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            out.append(float(m.p))
        for attr in _ATTN_DROPOUT:
            v = getattr(m, attr, None)
            if isinstance(v, float):
                out.append(v)
    return out


def set_dropout(model: Any, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p`` (the inverse of ``models.loading.disable_dropout``), the
    config's ``attention_dropout`` too so a saved model keeps it. Returns how many rates were set. For a model
    trained without dropout this is MC dropout applied post hoc (P54 trains its estimator with the dropout it
    samples with)."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p, n = p, n + 1
        for attr in _ATTN_DROPOUT:
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)
                n += 1
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "attention_dropout"):
        cfg.attention_dropout = p
    return n


@contextlib.contextmanager
def dropout_on(model: Any) -> Iterator[None]:
    """Train mode (dropout sampling) without gradients; the model's mode is restored afterwards. Train mode for the
    whole model, as the authors' ``model.train()``: attention layers read ``self.training`` for their dropout."""
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def mc_dropout(fn: Callable[[], Tensor], model: Any, passes: int, *, seed: int | None = 0) -> Tensor:
    """``[T, ...]``: ``fn()`` evaluated ``passes`` times with ``model``'s dropout on (P54's T stochastic passes).
    ``seed``: the passes' dropout masks are drawn from a forked RNG seeded with it (reproducible, and the caller's
    RNG state is untouched); None draws from the global RNG."""
    if not isinstance(passes, int) or passes < 1:
        raise ConfigError(f"MC dropout needs passes >= 1, got {passes!r}")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(seed)
        stack.enter_context(dropout_on(model))
        return torch.stack([fn() for _ in range(passes)])


def mc_rewards(reward_model: Any, prompts: Sequence[str], responses: Sequence[str], passes: int, *,
               seed: int | None = 0) -> Tensor:
    """``[T, N]`` float32 rewards of ``responses[i]`` to ``prompts[i]`` from ``passes`` dropout passes of a
    :class:`~preftune.reward.RewardModel` (tokenized as its ``score``: prompt, response, end-of-sequence)."""
    from ..data.collate import collate_unpaired
    from ..data.tokenize import tokenize_examples
    from ..data.types import UnpairedExample

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rm = reward_model
    items = tokenize_examples([UnpairedExample(p, r, True, row=i) for i, (p, r) in enumerate(zip(prompts, responses))],
                              rm.tokenizer, max_length=rm.max_length, max_prompt_length=None).items
    device = next(rm.model.parameters()).device
    batches = [collate_unpaired(items[i:i + rm.batch_size], rm.tokenizer.pad_token_id).to(device)
               for i in range(0, len(items), rm.batch_size)]

    def one_pass() -> Tensor:
        out = [rm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits[:, 0]
               for b in batches]
        return torch.cat(out).float().cpu() if out else torch.zeros(0)

    return mc_dropout(one_pass, rm.model, passes, seed=seed)


def bt_probs(r_first: Tensor, r_second: Tensor) -> Tensor:
    """``[..., 2]``: ``[P(first > second), P(second > first)]`` of a Bradley-Terry reward,
    ``P = sigmoid(r_first - r_second)`` -- class 0 is "the first response is better", the authors' label of a pair
    written chosen-first."""
    p = torch.sigmoid(r_first.float() - r_second.float())
    return torch.stack([p, 1 - p], dim=-1)


def entropy(p: Tensor) -> Tensor:
    """``H[p] = -sum_c p_c log p_c`` over the last dimension (0 log 0 = 0)."""
    return -torch.xlogy(p, p).sum(-1)


def bald(probs: Tensor) -> Tensor:
    """P54's BALD score per item from ``probs[T, N, C]`` (T passes' class probabilities):
    ``H[mean_t p_t] - mean_t H[p_t]``, the mutual information between the prediction and the dropout weights;
    ``[N]``, in ``[0, log C]``."""
    if probs.dim() != 3:
        raise ValueError(f"bald expects probabilities [passes, items, classes], got shape {tuple(probs.shape)}")
    return (entropy(probs.mean(0)) - entropy(probs).mean(0)).clamp(min=0.0)


def majority_vote(probs: Tensor) -> Tensor:
    """``[N]``: the class most of the T passes predict (argmax per pass, then the most frequent); a tie goes to the
    lowest class, as the authors' ``argmax(bincount(...))``."""
    votes = probs.argmax(-1)                                            # [T, N]
    counts = torch.nn.functional.one_hot(votes, probs.shape[-1]).sum(0)  # [N, C]
    return counts.argmax(-1)  # argmax returns the first maximum: ties -> the lowest class


__all__ = ["bald", "bt_probs", "dropout_on", "dropout_rates", "entropy", "majority_vote", "mc_dropout", "mc_rewards",
           "set_dropout"]
