"""``preftune online``: on-policy training -- the policy generates, a reward scores, the policy learns.

Every ``preftune train`` option applies (model, optimizer, LoRA, checkpoints, --resume, --loss and its
hyperparameters); the online options below say what to sample and how to score it.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

ONLINE_HELP = {
    "algo": "the algorithm: {algos}",
    "prompts": "prompt file (JSONL/JSON/CSV/Parquet or a datasets directory) with a `prompt` column (a string or "
               "a list of {{role, content}} messages); the other columns go to the reward function by name",
    "prompt_column": "the column holding the prompt",
    "task": "an arena task: its true reward, and its prompts when --prompts is not given (see `preftune arena --help`)",
    "task_prompts": "how many prompts to sample from --task when --prompts is not given",
    "reward_fn": "FILE.py:FUNCTION called as fn(prompts=[...], completions=[...], **columns) -> list of float or "
                 "None (may be async); comma-separated for several",
    "reward_model": "reward-model directory (preftune rm train's final/ or any one-label sequence classifier); "
                    "comma-separated for several",
    "reward_weights": "weights of the reward sources, in the order --reward-fn, --reward-model, --task "
                      "(default: 1 each)",
    "preference_fn": "FILE.py:FUNCTION(prompts, completions_a, completions_b) -> P(a better than b), to judge "
                     "online_dpo's pairs instead of a reward (needs --num-generations 2)",
    "num_generations": "samples per prompt, K (default: the algorithm's: grpo 8, rloo 4, reinforce 1, "
                       "online_dpo 2, iterative_dpo 4)",
    "max_new_tokens": "longest completion in tokens (TRL: --max-completion-length)",
    "temperature": "sampling temperature", "top_p": "nucleus sampling (1: off)", "top_k": "top-k sampling (0: off)",
    "num_iterations": "optimizer passes over each generation batch (grpo family; > 1 uses importance ratios "
                      "against the sampler's log-probs)",
    "generation_batch_size": "sequences per model.generate call",
    "on_bad_reward": "error (default): a reward that is NaN, the wrong count or raises stops the run with the step "
                     "and prompt; skip: such completions get no score (advantage 0) and are counted",
    "log_completions": "write every completion to OUTPUT/completions.jsonl",
    "rounds": "iterative_dpo, rso, sppo, inpo, upo, drift, osp: rounds of generate -> label -> train",
    "rso_beta": "rso: beta of the rejection sampler's target pi_sft exp(r / beta) (small: nearly best-of-K)",
    "upo_estimator": "upo: the preference estimator, a reward-model directory (preftune rm train --disable-dropout false) judged with MC dropout",
    "mc_dropout_passes": "upo: T, the estimator's stochastic forward passes per pair (BALD and the majority vote)",
    "mc_dropout_rate": "upo: > 0 sets every dropout rate of the estimator for MC dropout (0: the estimator's own)",
    "upo_easy_rate": "upo: share of the pairs the estimator agrees with drawn as easy, with weight 1 - BALD",
    "upo_hard_rate": "upo: share of the pairs the estimator agrees with drawn as hard, with weight BALD",
    "egpo_pairs": "egpo: sample the pairs y, y' from the policy being stepped from (policy) or from pi_ref (ref)",
    "egpo_half_step": "egpo: false drops the extragradient half step: plain online IPO (the authors' estimate_extra_grad=False)",
    "osp_judge": "osp: who judges the K samples: self (the policy, with --osp-template), reward (--reward-fn/--reward-model/--task) or preference (--preference-fn)",
    "osp_template": "osp: the self-judge's prompt, a Python format string with the fields prompt, a and b",
    "osp_verdicts": "osp: the self-judge's two answers, comma-separated: 'a is better', 'b is better'",
    "osp_pairing": "osp: ranked pairing of the K ranked samples: nested (1st with Kth, 2nd with (K-1)th, ...) or all",
    "generation_process": "grpo, rloo, reinforce, online_dpo: generate and score in a separate process the trainer starts, which gets the weights after each step (docs/online-async.md)",
    "max_staleness": "--generation-process: generation batch g is sampled with the weights of N optimizer steps before it is trained on, overlapping generation and training (N > 0: grpo family only, the sampler's log-probs correct the clipped ratio); 0: exactly the in-process run",
    "weight_sync_timeout": "--generation-process: seconds any wait on the other process may take (a generation batch; a training step); past it the run ends with one line",
    "dsat_column": "drift: the --prompts column with each row's dissatisfied response (a string or an assistant message)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..online.config import ALGORITHMS, OnlineConfig
    from .train import _metavar, add_train_options

    algos = "; ".join(f"{a.name} ({a.description})" for a in ALGORITHMS.values())
    p = sub.add_parser(
        "online", help="on-policy training: generate, score, learn (GRPO, RLOO, online/iterative DPO, ...)",
        description="Online training: the policy samples K completions per prompt, a reward function, reward "
                    "model or arena task scores them, and the policy learns from its own samples. The run "
                    "directory is that of `preftune train` (config.yaml, metrics.jsonl, checkpoints/, final/) plus "
                    "completions.jsonl. --batch-size counts completions for the group algorithms (grpo, rloo, "
                    "reinforce: a multiple of --num-generations, as TRL's GRPO) and pairs for online_dpo.",
        epilog="example: preftune online --algo grpo --model runs/sft --prompts prompts.jsonl "
               "--reward-fn rewards.py:fn --output runs/grpo --max-steps 100 --num-generations 8 --batch-size 32")
    # the sampling options win over objective hyperparameters of the same name (temperature)
    add_train_options(p, taken=frozenset(f.name for f in dataclasses.fields(OnlineConfig)))
    g = p.add_argument_group("online options")
    for f in dataclasses.fields(OnlineConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f"on__{f.name}", "default": argparse.SUPPRESS, "metavar": _metavar(f),
                              "help": ONLINE_HELP.get(f.name, f.name).format(algos=algos) + f" (default: {default})"}
        if f.name == "algo":
            kw.update(choices=list(ALGORITHMS), metavar=None)
        if "bool" in str(f.type):
            kw.update(nargs="?", const=True)
        g.add_argument("--" + f.name.replace("_", "-"), **kw)
    g.add_argument("--max-completion-length", dest="on__max_new_tokens", default=argparse.SUPPRESS, metavar="N",
                   help="= --max-new-tokens (TRL's name)")
    p.set_defaults(func=run)


def configs_from_args(args: argparse.Namespace) -> tuple[Any, Any, bool]:
    """(TrainConfig, OnlineConfig, whether --loss was given) from the command line and an optional recipe."""
    import yaml

    from ..errors import ConfigError
    from ..online.config import OnlineConfig, split_options
    from ..train.config import TrainConfig
    from .train import config_from_args

    values = vars(args)
    online = {k[4:]: values.pop(k) for k in list(values) if k.startswith("on__")}
    recipe: dict[str, Any] = {}
    if args.config:
        try:
            recipe = yaml.safe_load(open(args.config, encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config '{args.config}': {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{args.config}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"{args.config}: a recipe must be a mapping of option: value")
    r_online, r_rest = split_options(recipe)
    online_cfg = OnlineConfig(**{**r_online, **online})
    loss_given = "loss" in values or "loss" in r_rest or "loss_type" in r_rest
    if not loss_given:  # the algorithm's objective, so that --beta, --epsilon, ... are checked against it
        r_rest["loss"] = values["loss"] = online_cfg.algorithm.loss
    if args.config:
        from ..train.config import COMMAND_LINE, _build, _split

        cli = {k: v for k, v in values.items() if k not in ("func", "command", "config", "global_no_progress")}
        overrides = {**{k[5:]: cli.pop(k) for k in list(cli) if k.startswith("trl__")}, **cli}
        overrides.update({k[4:]: overrides.pop(k) for k in list(overrides) if k.startswith("hp__")})
        rf, rp = _split(r_rest, str(args.config))        # the recipe's training keys, TRL names read as preftune's
        of, op = _split(overrides, COMMAND_LINE)          # the command line wins over the recipe
        origins = {k: COMMAND_LINE for k in [*of, *op]}
        train_cfg = _build(TrainConfig, {**rf, **of}, {**rp, **op}, origins, str(args.config))
    else:
        train_cfg = config_from_args(args)
    return train_cfg, online_cfg, loss_given


def run(args: argparse.Namespace) -> int:
    from ..online import train_online
    from .train import report_run

    train_cfg, online_cfg, loss_given = configs_from_args(args)
    result = train_online(train_cfg, online_cfg, loss_given=loss_given)
    return report_run(result, ("loss", "reward", "kl"), "policy")
