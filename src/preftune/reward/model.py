"""Loading and using a reward model: ``AutoModelForSequenceClassification`` with one label, and
:class:`RewardModel`, the batched, gradient-free scoring interface the arena and the online loops call."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch



def load_reward_model(name_or_path: str, *, tokenizer: Any = None, dtype: str = "fp32",
                      trust_remote_code: bool = False, device: str | torch.device = "cpu") -> Any:
    """A sequence-classification model with one output (the reward). A causal LM checkpoint gets a new,
    randomly initialised score head (as TRL's RewardTrainer does); ``pad_token_id`` is taken from the tokenizer
    so the head reads each sequence's last real token."""
    from ..models.loading import load_sequence_classifier

    model = load_sequence_classifier(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        model.config.pad_token_id = pad
    elif model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


class RewardModel:
    """Scores (prompt, response) pairs with a trained reward model: batched, no gradient, eval mode.

    The text is tokenized as in training (the prompt, then the response and the end-of-sequence token, by
    :func:`preftune.data.tokenize_examples`), so a score means what the model learned."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int | None = 1024, batch_size: int = 16):
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: str = "fp32",
                        **kw: Any) -> "RewardModel":
        """Load ``path`` on ``device`` in ``dtype`` (an online run scores on the policy's device)."""
        from ..models.loading import load_tokenizer

        from .value_model import is_value_head_model, load_value_head_model

        tok = load_tokenizer(str(path))
        if is_value_head_model(path):  # a causal LM with a value head (value_head.safetensors)
            return cls(load_value_head_model(str(path), tokenizer=tok, dtype=dtype, device=device), tok, **kw)
        return cls(load_reward_model(str(path), tokenizer=tok, dtype=dtype, device=device), tok, **kw)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """``[N]`` float32 rewards (CPU) of ``responses[i]`` to ``prompts[i]``."""
        from ..data.collate import collate_unpaired
        from ..data.tokenize import tokenize_examples
        from ..data.types import UnpairedExample
        from ..models.scoring import eval_mode

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        examples = [UnpairedExample(p, r, True, row=i) for i, (p, r) in enumerate(zip(prompts, responses))]
        items = tokenize_examples(examples, self.tokenizer, max_length=self.max_length, max_prompt_length=None).items
        device = next(self.model.parameters()).device
        out = []
        with eval_mode(self.model):
            for i in range(0, len(items), self.batch_size):
                b = collate_unpaired(items[i:i + self.batch_size], self.tokenizer.pad_token_id).to(device)
                logits = self.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
                out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
