"""``preftune arena``: run objectives against each other on a task with a known true reward."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError


def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _assignments(items: list[str] | None, what: str, *, many: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{what} '{item}' is not NAME=VALUE")
        out[key.strip().replace("-", "_")] = [_value(v) for v in val.split(",")] if many else _value(val)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..arena.models import SFTConfig
    from ..arena.run import ArenaConfig
    from ..arena.tasks import TASKS

    d, s = ArenaConfig(), SFTConfig()
    p = sub.add_parser(
        "arena", help="compare objectives on a task whose true reward is known (CPU, minutes)",
        description="Build (or load from the cache) a tiny SFT model for a task, sample answers, label preference "
                    "pairs by the task's true reward (or, with --labeller reward_model, by a reward model trained on "
                    "such pairs), train every chosen objective from the SFT model, evaluate on held-out prompts, "
                    "and write leaderboard.md and report.html. See docs/arena.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--task", default=d.task, choices=sorted(TASKS),
                   help="sort: correctness with partial credit; concise: length-biased annotator, padding is "
                        "penalised; refuse: refuse-or-comply, answers one word apart")
    g.add_argument("--objectives", default="",
                   help="comma-separated objectives, 'all' (every registered one that fits the data), or "
                        "compositions such as dpo+sft:0.2; empty: dpo and three others")
    g.add_argument("--online", default="",
                   help="online algorithms to run beside the objectives (grpo, rloo, reinforce, ppo, online_dpo), "
                        "on the same prompts and annotator at an equal budget of reward calls "
                        "(train-prompts x samples-per-prompt); see docs/online.md")
    g.add_argument("--online-lr", type=float, default=None, help="learning rate of the online contestants "
                                                                  "(default: --lr)")
    g.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1); each has its own SFT model and data")
    g.add_argument("--seed-list", default=None, help="explicit comma-separated seeds (overrides --seeds)")
    g.add_argument("--output", default=d.output, help="run directory for the report, data and per-objective runs")
    g.add_argument("--cache-dir", default=None,
                   help="where SFT models are cached (default $PREFTUNE_ARENA_CACHE or ~/.cache/preftune/arena)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("preference data")
    g.add_argument("--train-prompts", type=int, default=d.train_prompts, help="training prompts per seed")
    g.add_argument("--samples-per-prompt", type=int, default=d.samples_per_prompt,
                   help="answers sampled from the SFT model per prompt")
    g.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (data and eval)")
    g.add_argument("--pairs", default=d.pairs, choices=("best_worst", "all"),
                   help="one pair per prompt (best vs worst sample) or every pair of samples with different scores")
    g.add_argument("--keep-ties", action="store_true", help="keep pairs whose scores tie (margin 0)")
    g.add_argument("--noise", type=float, default=d.noise,
                   help="label-flip rate: exactly round(noise * pairs) pairs get chosen and rejected swapped")
    g = p.add_argument_group("labeller (who labels the pairs the policies train on)")
    g.add_argument("--labeller", default=d.labeller, choices=("true_reward", "reward_model"),
                   help="true_reward: the task's annotator; reward_model: a reward model (the SFT model with a new "
                        "score head) trained on other prompts' pairs labelled by the annotator, so reward-model error "
                        "and over-optimisation show up (the report gives its accuracy against the true reward)")
    g.add_argument("--rm-train-prompts", type=int, default=d.rm_train_prompts,
                   help="prompts whose sampled answers, labelled by the annotator, train the reward model")
    g.add_argument("--rm-steps", type=int, default=d.rm_steps, help="reward-model optimizer steps")
    g.add_argument("--rm-batch-size", type=int, default=d.rm_batch_size, help="reward-model pairs per step")
    g.add_argument("--rm-lr", type=float, default=d.rm_lr, help="reward-model learning rate")
    g.add_argument("--rm-members", type=int, default=d.rm_members,
                   help="reward models in an ensemble (seeds seed, seed+1, ...); > 1 labels by mean - k * std")
    g.add_argument("--rm-k", type=float, default=d.rm_k, help="k of the ensemble's conservative score mean - k * std")
    g = p.add_argument_group("training (the same for every objective)")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per objective")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (AdamW, linear decay)")
    g.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="warm-up share of the steps")
    g.add_argument("--beta", type=lambda v: None if v.lower() == "none" else float(v), default=d.beta,
                   help="beta of every objective whose registry default is the DPO family's 0.1 (dpo, ipo, rpo, "
                        "rdpo, ...); 'none' keeps registry defaults; --param/--sweep beta win over it")
    g.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="objective hyperparameter, for every objective that declares it (beta=0.2) or for one "
                        "(dpo.beta=0.2); repeatable")
    g.add_argument("--sweep", action="append", metavar="NAME=V1,V2",
                   help="one contestant per value for objectives that declare NAME (beta=0.05,0.1,0.5); repeatable")
    g.add_argument("--save-models", action="store_true", help="keep each trained policy in runs/<objective>/seedN/final")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="held-out prompts per seed")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples, help="answers sampled per held-out prompt")
    g = p.add_argument_group("SFT model (part of the cache key)")
    g.add_argument("--sft-demos", type=int, default=s.demos, help="demonstrations to fit")
    g.add_argument("--sft-steps", type=int, default=s.steps, help="SFT optimizer steps")
    g.add_argument("--sft-batch-size", type=int, default=s.batch_size, help="SFT batch size")
    g.add_argument("--sft-lr", type=float, default=s.lr, help="SFT learning rate")
    g.add_argument("--sft-hidden-size", type=int, default=s.hidden_size, help="model width")
    g.add_argument("--sft-num-layers", type=int, default=s.num_layers, help="transformer layers")
    g.add_argument("--sft-num-heads", type=int, default=s.num_heads, help="attention heads")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..arena.models import SFTConfig
    from ..arena.run import ArenaConfig

    if args.seed_list:
        try:
            seeds = [int(x) for x in args.seed_list.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--seed-list '{args.seed_list}' is not a list of integers") from None
    else:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        seeds = list(range(args.seeds))
    sft = SFTConfig(demos=args.sft_demos, steps=args.sft_steps, batch_size=args.sft_batch_size, lr=args.sft_lr,
                    hidden_size=args.sft_hidden_size, num_layers=args.sft_num_layers, num_heads=args.sft_num_heads)
    return ArenaConfig(
        task=args.task, objectives=[o.strip() for o in args.objectives.split(",") if o.strip()], seeds=seeds,
        output=args.output, cache_dir=args.cache_dir, train_prompts=args.train_prompts,
        samples_per_prompt=args.samples_per_prompt, temperature=args.temperature, pairs=args.pairs,
        keep_ties=args.keep_ties, noise=args.noise, labeller=args.labeller, rm_train_prompts=args.rm_train_prompts,
        rm_steps=args.rm_steps, rm_batch_size=args.rm_batch_size, rm_lr=args.rm_lr, rm_members=args.rm_members,
        rm_k=args.rm_k, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_ratio=args.warmup_ratio, beta=args.beta, params=_assignments(args.param, "--param"),
        sweep=_assignments(args.sweep, "--sweep", many=True), save_models=args.save_models,
        eval_prompts=args.eval_prompts, eval_samples=args.eval_samples, sft=sft, threads=args.threads,
        progress=not args.no_progress, online=[o.strip() for o in args.online.split(",") if o.strip()],
        online_lr=args.online_lr)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..arena.run import run_arena

    cfg = config_from_args(args)
    run_arena(cfg.task, config=cfg)
    out = Path(cfg.output)
    print((out / "leaderboard.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.html'}")
    print(f"leaderboard: {out / 'leaderboard.md'}")
    return 0
