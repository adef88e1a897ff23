"""Online methods in the arena, beside the offline objectives, at an equal budget of reward calls.

An offline contestant's data cost ``train_prompts x samples_per_prompt`` calls of the annotator (every sampled
answer is scored once). An online contestant (``preftune arena --online grpo,ppo,online_dpo``) trains on the same
prompts with the same annotator -- the task's preference score, or the reward model under
``--labeller reward_model`` -- scoring its own samples as it goes, for as many steps as that budget buys: a
step scores ``batch_size`` completions (grpo, rloo, reinforce, ppo) or ``2 x batch_size`` (online_dpo).
Label noise (``--noise``) flips offline pairs only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError


def online_steps(algo: str, budget: int, batch_size: int, k: int) -> tuple[int, int]:
    """(steps, reward calls per step) that spend at most ``budget`` reward calls (at least one step)."""
    from ..online.config import ALGORITHMS

    src = ALGORITHMS[algo].source
    if src not in ("group", "pair"):
        raise ConfigError(f"the arena runs online algorithms that train step by step; {algo} runs in rounds")
    per_step = batch_size if src == "group" else batch_size * k
    return max(1, budget // per_step), per_step


def train_online_entry(algo: str, task: Any, sft_path: Path, policy: Any, tok: Any, prompts: Sequence[str], *,
                       scorer: Any, seed: int, steps: int, batch_size: int, lr: float, warmup_ratio: float,
                       beta: float | None, k: int, out: Path, params: dict[str, Any] | None = None) -> Any:
    """Train ``policy`` (the SFT model) online on ``prompts``; the reward is ``scorer(prompt, response)``."""
    from ..online import OnlineConfig, train_online
    from ..online.prompts import Prompt
    from ..train import TrainConfig
    from .models import encode

    items = [Prompt(p, encode(tok, p)[0], i, {}, p) for i, p in enumerate(prompts)]

    def annotator(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float(v) for v in scorer(prompts, completions)]

    annotator.__name__ = "annotator"
    ocfg = OnlineConfig(algo=algo, prompts=items, num_generations=k,
                        max_new_tokens=task.max_new_tokens, log_completions=False)
    loss_params = dict(params or {})
    if algo == "online_dpo" and beta is not None:
        loss_params.setdefault("beta", beta)   # the DPO family's arena beta
    cfg = TrainConfig(model=str(sft_path), output=str(out), max_steps=steps, batch_size=batch_size, lr=lr,
                      warmup_ratio=warmup_ratio, seed=seed, progress=False, max_length=64, max_prompt_length=32,
                      device="cpu", overwrite=True, save_final=False, save_every=0, loss_params=loss_params,
                      loss="dpo" if algo == "online_dpo" else ocfg.algorithm.loss)
    return train_online(cfg, ocfg, model=policy, tokenizer=tok, reward_functions=[annotator], loss_given=True)


__all__ = ["online_steps", "train_online_entry"]
