"""The density-ratio reward of two causal LMs (P64 CDR, "CDR: Customizable Density Ratios of Strong-over-weak LLMs
for Preference Annotation", Xu et al. 2024, arXiv 2411.02481; v3 is titled "Dr. SoW: Density Ratio of
Strong-over-weak LLMs ...").

CDR scores a response by how much more likely a better-aligned ("strong") model finds it than a less aligned
("weak") one (the reward of eq. 2 in v3; section and equation numbers checked against the abstract and figure 1
of v3 only, the full text was not available here)::

    r_DR(x, y) = log pi_strong(y | x) - log pi_weak(y | x)

and *customises* it by conditioning the strong model on criteria ``c`` -- a system prompt naming what a good
answer is, optionally with exemplars -- so the reward measures the criteria (the paper's customised density ratio)::

    r_CDR(x, y) = log pi_strong(y | c, x) - log pi_weak(y | x)

No training: the reward is two forward passes. The larger the gap between the two models, the better the reward
generalises (the paper's 221 model pairs, its fig. 1). DPO's implicit reward is the special case strong = a
DPO policy, weak = its reference (with ``beta = 1``).

Conventions (preftune's, as :class:`~preftune.reward.RewardModel`): each text is tokenized as in training --
the prompt, then the response and the end-of-sequence token (:func:`preftune.data.tokenize_examples`) -- with
each model's own tokenizer; ``log pi(y | x)`` is the sum over the response tokens (EOS included) of the
model's log-probabilities; ``reduction="mean"`` divides each model's sum by its own response token count (the
public code's ``avg_drsow_reward`` divides the difference by the strong model's count instead).

Public code: gx-ai-architect/CDR-preference-annotation, ``src/dpo_vllm.py``,
``DPOInferenceVLLM.monolithic_inference_step`` (commit ``7063ebe5431705ad221d929571e36c56f1d1ea3a``), and its
successor Red-Hat-AI-Innovation-Team/reward_hub, ``reward_hub/drsow.py``, ``DrSow.get_batch_logprobs`` (commit
``58a72dc4fb7050d9ec2e1a86d2d2a429bb2fa8b4``): the summed response log-probs of the two models, differenced.
Differences, where we follow the paper: ``drsow.py`` leaves out special tokens (EOS among them) and newline
tokens from both sums, we keep EOS (the answer's end is part of the answer, as in DPO); the annotation script
(``scripts/run_bon_scoring.py``, ``load_ibm_bon_data``) puts the criteria system prompt into the one text that
*both* models score, while the paper conditions the strong model only -- ``criteria_for_weak=True`` gives the
script's variant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

REDUCTIONS = ("sum", "mean")


def density_ratio(strong_logps: Tensor, weak_logps: Tensor, strong_lengths: Tensor | None = None,
                  weak_lengths: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """P64 CDR (eq. 2 of v3): ``log pi_strong(y|x) - log pi_weak(y|x)`` from summed response log-probs ``[N]``.

    ``reduction="mean"`` uses per-token means, ``sum / lengths``, of each model (its own token count: the two
    tokenizers may differ)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if strong_logps.shape != weak_logps.shape:
        raise ConfigError(f"strong and weak log-probs differ in shape: {tuple(strong_logps.shape)} vs "
                          f"{tuple(weak_logps.shape)}")
    if reduction == "sum":
        return strong_logps - weak_logps
    if strong_lengths is None or weak_lengths is None:
        raise ConfigError("reduction='mean' needs the response token counts of both models")
    return strong_logps / strong_lengths.clamp(min=1) - weak_logps / weak_lengths.clamp(min=1)


class DensityRatioReward:
    """A reward from two causal LMs, ``log pi_strong(y | c + x) - log pi_weak(y | x)`` (P64 CDR: eq. 2 of v3 and its
    customised form): batched, no gradient, eval mode; the same ``score(prompts, responses)`` as
    :class:`~preftune.reward.RewardModel`, so it goes wherever a reward model does (``rm eval``'s scorer functions,
    the arena's :func:`~preftune.arena.labelling.rescore`, ensembles).

    ``criteria``: text put before every prompt for the strong model (the paper's criteria system prompt; for a
    chat model write it in the model's format, e.g. rendered with its chat template). ``criteria_for_weak``: give
    it to the weak model too (the public annotation script's variant). ``weak_tokenizer`` defaults to
    ``tokenizer``."""

    def __init__(self, strong: Any, weak: Any, tokenizer: Any, *, weak_tokenizer: Any = None, criteria: str = "",
                 criteria_for_weak: bool = False, reduction: str = "sum", max_length: int | None = 1024,
                 batch_size: int = 16):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if strong is weak and not criteria:
            raise ConfigError("the strong and the weak model are one model: every density-ratio reward would be 0")
        self.strong, self.weak = strong, weak
        self.tokenizer, self.weak_tokenizer = tokenizer, weak_tokenizer or tokenizer
        self.criteria, self.criteria_for_weak, self.reduction = criteria, criteria_for_weak, reduction
        self.max_length, self.batch_size = max_length, batch_size

    @classmethod
    def from_pretrained(cls, strong_path: str | Path, weak_path: str | Path, *, dtype: str = "fp32",
                        device: str = "cpu", **kw: Any) -> "DensityRatioReward":
        """Load both causal LMs and their tokenizers (safetensors, no remote code)."""
        from ..models.loading import load_model, load_tokenizer

        strong_tok, weak_tok = load_tokenizer(str(strong_path)), load_tokenizer(str(weak_path))
        strong = load_model(str(strong_path), dtype=dtype, device=device)
        weak = load_model(str(weak_path), dtype=dtype, device=device)
        return cls(strong, weak, strong_tok, weak_tokenizer=weak_tok, **kw)

    def _logps(self, model: Any, tok: Any, prompts: Sequence[str], responses: Sequence[str]
               ) -> tuple[Tensor, Tensor]:
        from ..data.tokenize import tokenize_examples
        from ..data.types import UnpairedExample
        from ..models.scoring import response_logps

        examples = [UnpairedExample(p, r, True, row=i) for i, (p, r) in enumerate(zip(prompts, responses))]
        items = tokenize_examples(examples, tok, max_length=self.max_length, max_prompt_length=None).items
        cut = [it.row for it in items if it.truncated]
        if cut:  # the two models would score different spans of the response: refuse rather than compare them
            from ..errors import ConfigError

            raise ConfigError(f"density-ratio reward: row {cut[0]} (and {len(cut) - 1} more) is longer than "
                              f"max_length={self.max_length} tokens with its prompt; raise max_length")
        pairs = [(it.prompt_ids, it.completion_ids) for it in items]
        sums = response_logps(model, pairs, pad_id=tok.pad_token_id, batch_size=self.batch_size)
        lengths = torch.tensor([float(len(c)) for _, c in pairs])
        return sums, lengths

    @torch.no_grad()
    def components(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, Tensor]:
        """``{"reward", "strong", "weak", "strong_lengths", "weak_lengths"}``, each ``[N]`` float32 on the CPU:
        the reward and the summed response log-probs and token counts behind it."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        strong_prompts = [self.criteria + p for p in prompts]
        weak_prompts = strong_prompts if self.criteria_for_weak else list(prompts)
        s, sl = self._logps(self.strong, self.tokenizer, strong_prompts, responses)
        w, wl = self._logps(self.weak, self.weak_tokenizer, weak_prompts, responses)
        return {"reward": density_ratio(s, w, sl, wl, self.reduction).float(), "strong": s, "weak": w,
                "strong_lengths": sl, "weak_lengths": wl}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """``[N]`` float32 rewards (CPU) of ``responses[i]`` to ``prompts[i]``."""
        if not prompts and not responses:
            return torch.zeros(0)
        return self.components(prompts, responses)["reward"]
