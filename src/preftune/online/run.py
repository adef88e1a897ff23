"""``train_online``: an online run is the trainer's loop with a rollout source and the online forward.

>>> from preftune.train import TrainConfig                                            # doctest: +SKIP
>>> from preftune.online import OnlineConfig, train_online                            # doctest: +SKIP
>>> cfg = TrainConfig(model="runs/sft", output="runs/grpo", max_steps=50, batch_size=16, lr=1e-5)  # doctest: +SKIP
>>> train_online(cfg, OnlineConfig(algo="grpo", task="sort", num_generations=4))     # doctest: +SKIP

Iterative DPO is rounds of offline runs (``round-1/``, ``round-2/``, ... in the output directory): each round
samples K responses per prompt from the round's starting policy, keeps the best and the worst as a pair
(``round-t/pairs.jsonl``), and trains DPO on them with that starting policy as the reference. A finished round
(its ``final/`` exists) is not run again, so ``--resume`` continues at the round that was interrupted.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..train.config import TrainConfig
from .config import OnlineConfig
from .forward import CompletionsLog, OnlineForward
from .prompts import Prompt, columns_for, load_prompts, task_prompts
from .rewards import build_reward
from .rollout import make_source


def online_train_config(cfg: TrainConfig, online: OnlineConfig, *, loss_given: bool | None = None) -> TrainConfig:
    """The trainer config of an online run: the algorithm's objective unless another objective of the same data
    kind was chosen (the trainer's default ``dpo`` counts as not chosen for group algorithms), and dr_grpo's
    normaliser from ``max_new_tokens``."""
    from ..objectives import objective_class

    algo = online.algorithm
    kind = objective_class(algo.loss).kind if algo.source in ("selfplay", "custom") else \
        {"group": "list", "pair": "pair", "rounds": "pair"}[algo.source]
    loss = cfg.loss
    if loss_given is None:
        loss_given = loss != "dpo"
    if not loss_given:
        loss = algo.loss
    cls = objective_class(loss)
    if cls.kind != kind:
        raise ConfigError(f"--loss {loss} trains on {cls.kind} data, but --algo {online.algo} makes {kind} batches "
                          f"(its default: {algo.loss})")
    if online.num_iterations > 1 and not getattr(cls, "reuses_samples", False):
        raise ConfigError(f"--num-iterations {online.num_iterations}: objective '{loss}' is on-policy (no importance "
                          "ratios against the sampler); use 1, or grpo/dapo/bnpo/dr_grpo/ppo")
    params = dict(cfg.loss_params)
    if loss != cfg.loss:  # the trainer's default objective replaced: keep the hyperparameters the new one takes
        accepted = cls.hyperparameters()
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(f"objective '{loss}' (--algo {online.algo}) has no hyperparameter "
                              f"{', '.join(unknown)}; valid: {', '.join(sorted(accepted))}")
    if loss == "dr_grpo" and not params.get("length_normaliser"):
        params["length_normaliser"] = online.max_new_tokens
    return cfg.replace(loss=loss, loss_params=params) if (loss, params) != (cfg.loss, cfg.loss_params) else cfg


def load_online_prompts(cfg: TrainConfig, online: OnlineConfig, tokenizer: Any, task: Any) -> tuple[str, list[Prompt]]:
    if isinstance(online.prompts, list) and online.prompts and all(isinstance(p, Prompt) for p in online.prompts):
        return "<prompts>", list(online.prompts)  # tokenized already (the arena's)
    if online.prompts is not None and not (isinstance(online.prompts, str) and not online.prompts):
        name, prompts, skipped = load_prompts(online.prompts, tokenizer, column=online.prompt_column,
                                              max_prompt_length=cfg.max_prompt_length,
                                              truncation=cfg.truncation, on_bad_row=cfg.on_bad_row)
        if skipped:
            print(f"preftune: skipped bad prompt rows ({sum(skipped.values())}): "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
        return name, prompts
    if task is None:
        raise ConfigError("no prompts: give --prompts FILE (or --task NAME to sample the task's prompts)")
    return task_prompts(task, tokenizer, online.task_prompts, cfg.seed)


def train_online(cfg: TrainConfig, online: OnlineConfig, *, model: Any = None, tokenizer: Any = None,
                 reward_functions: Sequence[Callable[..., Any]] = (), callbacks: Sequence[Any] = (),
                 loss_given: bool | None = None) -> Any:
    """Run ``online.algo`` and return the trainer's :class:`~preftune.train.loop.RunResult` (iterative DPO: the
    last round's, with every round's history). ``reward_functions``: Python reward functions besides the
    config's (called as TRL calls them: ``fn(prompts=, completions=, **columns)``)."""
    from ..train.loop import train
    from ..train.setup import load_tokenizer_for, pick_device

    cfg = online_train_config(cfg, online, loss_given=loss_given)
    if cfg.ref == "precomputed":
        raise ConfigError("--ref precomputed needs a fixed dataset; an online run samples its own: use --ref model")
    if cfg.distributed == "deepspeed" and cfg.deepspeed_stage == 3:
        # ZeRO-3 gathers parameters in every forward: generation would need every process to run the same number
        # of decoding steps (synced_gpus), which nothing here arranges yet
        raise ConfigError("online training under DeepSpeed ZeRO-3 is not supported; use --distributed fsdp2 or "
                          "--deepspeed-stage 2")
    tokenizer = load_tokenizer_for(cfg, tokenizer)
    if online.algorithm.needs_judge and not (online.reward_fn or online.reward_model or online.task
                                             or online.preference_fn or reward_functions):
        raise ConfigError("no reward: give --reward-fn FILE.py:FN, --reward-model DIR, --task NAME or --preference-fn")
    task = _task(online)
    name, prompts = load_online_prompts(cfg, online, tokenizer, task)
    reward = None
    if online.reward_fn or online.reward_model or online.task or reward_functions:
        reward = build_reward(reward_fn=online.reward_fn, reward_model=online.reward_model, task=task,
                              weights=online.reward_weights or None, functions=reward_functions,
                              max_length=cfg.max_length or 1024, device=pick_device(cfg.device), dtype=cfg.dtype)
    elif online.algorithm.source == "group":
        raise ConfigError(f"{online.algo} needs a reward: --reward-fn, --reward-model or --task")
    if online.algorithm.runner:
        return _runner(online.algorithm)(cfg, online, prompts, reward, model=model, tokenizer=tokenizer,
                                         callbacks=callbacks)
    if online.algorithm.source == "selfplay":
        from .selfplay import train_selfplay

        return train_selfplay(cfg, online, prompts, reward, model=model, tokenizer=tokenizer, callbacks=callbacks)
    if online.algorithm.source == "rounds":
        return _iterative(cfg, online, prompts, reward, model=model, tokenizer=tokenizer, callbacks=callbacks)
    k = online.k
    if online.algorithm.source == "group":
        if cfg.batch_size % k:
            raise ConfigError(f"--batch-size {cfg.batch_size} counts completions (as TRL's GRPO): it must be a "
                              f"multiple of --num-generations {k}")
        per_batch = cfg.batch_size // k
    else:
        per_batch = cfg.batch_size  # pairs (prompts), as TRL's OnlineDPO
    from .async_source import make_async_source  # --generation-process: a process of its own generates

    source = (make_async_source if online.generation_process else make_source)(
        online, prompts, reward, tokenizer=tokenizer, layout=cfg.layout, batch_prompts=per_batch,
        grad_accum=cfg.grad_accum, seed=cfg.seed, chunk_size=cfg.chunk_size, log_dir=cfg.output, name=name)
    source.batches_per_epoch = math.ceil(len(prompts) / per_batch) * online.num_iterations  # type: ignore[attr-defined]
    return train(cfg, model=model, tokenizer=tokenizer, source=source, forward=OnlineForward(source),
                 callbacks=[*callbacks, CompletionsLog(source)])


def _runner(algo: Any) -> Callable[..., Any]:
    """The function named by a custom algorithm's ``runner`` ("package.module:function")."""
    import importlib

    mod, _, fn = algo.runner.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _task(online: OnlineConfig) -> Any:
    if not online.task:
        return None
    from ..arena.tasks import get_task

    return get_task(online.task)


# ----------------------------------------------------------------------------- iterative DPO


def _iterative(cfg: TrainConfig, online: OnlineConfig, prompts: list[Prompt], reward: Any, *, model: Any,
               tokenizer: Any, callbacks: Sequence[Any]) -> Any:
    import random

    from ..models.generate import generate
    from .rounds import pair_items, run_rounds
    from .rso import rso_accept

    k = online.k

    def make_rows(t: int, policy: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gens = generate(policy, tokenizer, [p.ids for p in prompts], n=k, max_new_tokens=online.max_new_tokens,
                        temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                        seed=cfg.seed * 1_000_003 + t, batch_size=online.generation_batch_size, progress=cfg.progress)
        texts = tokenizer.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
        total, _ = reward.parts([p.text for p in prompts for _ in range(k)], texts, columns_for(prompts, k),
                                step=t, on_bad=online.on_bad_reward, skipped={})
        rows, ties = [], 0
        rng = random.Random(f"rso-{cfg.seed}-{t}")
        for i, p in enumerate(prompts):
            scored = [(total[i * k + j], j) for j in range(k) if total[i * k + j] is not None]
            if online.algo == "rso":  # two candidates accepted by statistical rejection sampling (P34)
                acc = rso_accept(total[i * k:(i + 1) * k], 2, online.rso_beta, rng)
                scored = [(total[i * k + j], j) for j in acc]
            if len(scored) < 2 or max(scored)[0] == min(scored)[0]:
                ties += 1
                continue
            (sc, c), (sr, r) = max(scored), min(scored)
            rows.append({"prompt": p.raw, "chosen": texts[i * k + c], "rejected": texts[i * k + r],
                         "score_chosen": sc, "score_rejected": sr, "prompt_ids": p.ids,
                         "chosen_ids": gens[i * k + c].response_ids, "rejected_ids": gens[i * k + r].response_ids})
        if not rows:
            raise ConfigError(f"{online.algo} round {t}: every prompt's {k} samples tied; no pair to train on")
        xs = [x for x in total if x is not None]
        return rows, {"pairs": len(rows), "prompts": len(prompts), "ties_dropped": ties,
                      "reward_mean": sum(xs) / len(xs) if xs else float("nan")}

    return run_rounds(cfg, online.rounds, name=online.algo, kind="pair", data_file="pairs.jsonl",
                      make_rows=make_rows, make_items=pair_items, model=model, tokenizer=tokenizer,
                      callbacks=callbacks)


__all__ = ["load_online_prompts", "online_train_config", "train_online"]
