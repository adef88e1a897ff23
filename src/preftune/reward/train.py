"""``train_reward_model``: the trainer's loop with the reward model's forward and a reward-model objective.

Everything else is the trainer's: data formats, chat templates, the ``margin`` column, LoRA, checkpoints and
bitwise resume, evaluation, metrics (TRL's names: ``accuracy``, ``margin``, ``rewards/chosen``, ...), and
``final/``, which loads with ``AutoModelForSequenceClassification.from_pretrained``.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from ..train.config import TrainConfig
from .forward import ScoreForward


def train_reward_model(config: TrainConfig, *, model: Any = None, tokenizer: Any = None,
                       train_examples: Sequence[Any] | None = None, eval_examples: Sequence[Any] | None = None,
                       callbacks: Sequence[Any] = ()) -> Any:
    """Train a Bradley-Terry reward model on preference pairs; returns the trainer's ``RunResult``.

    ``config.model`` is a sequence-classification checkpoint or a causal LM (which gets a new score head);
    ``config.loss`` defaults to ``bradley_terry`` (``center_rewards_coefficient`` in ``loss_params``)."""
    from ..objectives import build
    from ..train import train
    from ..train.setup import load_tokenizer_for, pick_device, quiet_transformers
    from .model import load_reward_model

    cfg = config
    if cfg.loss == "dpo":  # TrainConfig's default: a reward model trains with Bradley-Terry unless told otherwise
        cfg = cfg.replace(loss="bradley_terry")
    if "scores" not in build(cfg.loss, **cfg.loss_params).needs:
        raise ConfigError(f"loss '{cfg.loss}' trains a policy, not a reward model; use bradley_terry "
                          "(or `preftune train` for policies)")
    if cfg.layout == "auto":
        cfg = cfg.replace(layout="padded")  # a sequence-classification head reads one sequence per row
    if model is None and cfg.reward_head == "value":  # a causal LM with a value head (docs/reward-value-head.md)
        from .value_model import train_value_head_reward_model

        return train_value_head_reward_model(cfg, tokenizer=tokenizer, train_examples=train_examples,
                                             eval_examples=eval_examples, callbacks=callbacks)
    tokenizer = load_tokenizer_for(cfg, tokenizer)
    if model is None:
        if not cfg.model:
            raise ConfigError("no model given: set --model")
        import torch

        # the new score head's initialisation follows --seed, not whatever drew from the global generator before
        # (importing DeepSpeed, which transformers does when it is installed, changed it)
        torch.manual_seed(cfg.seed)
        with quiet_transformers(not cfg.progress):
            model = load_reward_model(cfg.model, tokenizer=tokenizer, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, device=pick_device(cfg.device))
    return train(cfg, model=model, tokenizer=tokenizer, train_examples=train_examples, eval_examples=eval_examples,
                 callbacks=callbacks, forward=ScoreForward())
