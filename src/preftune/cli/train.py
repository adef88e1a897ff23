"""``preftune train``: train a model on preference data with any registered objective.

Every ``TrainConfig`` field is an option (``--batch-size 8``); every objective
hyperparameter known to the registry is an option too (``--beta 0.1``) and goes to the
objective, which validates it. ``--config recipe.yaml`` gives defaults that options override.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

HELP = {
    "model": "model directory or hub name (AutoModelForCausalLM.from_pretrained)",
    "data": "training data: .jsonl/.json/.parquet/.csv file, a datasets directory, or a hub name "
            "(in Python also a datasets.Dataset or a list of dicts)",
    "output": "run directory (config.yaml, metrics.jsonl, checkpoints/, final/)",
    "eval_data": "held-out data, evaluated every --eval-every steps (without --eval-every: once, at the end)",
    "split": "split to read from a datasets directory / hub dataset",
    "eval_split": "split of --eval-data (defaults to --split)",
    "loss": "objective name, or a weighted sum such as 'dpo:1.0,sft:0.2' (weights finite and > 0; "
            "TRL names sigmoid, robust, sigmoid_norm work too; see `preftune objectives`)",
    "ref": "reference log-probs: model (frozen copy), adapter (LoRA off), precomputed (cached on disk), none, "
           "or auto (adapter under LoRA, none for reference-free objectives, else model)",
    "ref_model": "checkpoint to use as the reference instead of --model",
    "ref_cache_dir": "where --ref precomputed caches log-probs (default OUTPUT/ref_cache)",
    "max_steps": "optimizer steps (overrides --epochs)",
    "epochs": "passes over the training data",
    "batch_size": "pairs per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (AdamW; also --learning-rate)",
    "lr_schedule": "linear, cosine or constant after warmup",
    "warmup_ratio": "share of steps spent warming up linearly",
    "warmup_steps": "warmup steps (overrides --warmup-ratio)",
    "weight_decay": "AdamW weight decay",
    "adam_beta1": "AdamW beta1", "adam_beta2": "AdamW beta2", "adam_eps": "AdamW epsilon",
    "max_grad_norm": "clip the gradient norm to this value (none: no clipping)",
    "seed": "random seed (data order, initialisation of adapters)",
    "dtype": "fp32, bf16 or fp16",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory",
    "disable_dropout": "set every dropout probability of the policy and reference to 0, as TRL's "
                       "disable_dropout=True (false keeps the model's dropout)",
    "lora_r": "LoRA rank; 0 trains all weights",
    "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "lora_target": "LoRA target modules (peft syntax, comma-separated; default all-linear)",
    "trust_remote_code": "allow model repositories to run their own code (off by default)",
    "device": "auto, cpu, cuda, cuda:N",
    "distributed": "under torchrun or accelerate launch: ddp (auto: DistributedDataParallel), fsdp2 (torch's "
                   "fully_shard: parameters, gradients and optimizer state sharded) or deepspeed (ZeRO, the "
                   "[deepspeed] extra); --batch-size is per process: the global batch is batch-size x processes "
                   "x grad-accum (docs/distributed.md)",
    "dist_timeout": "seconds a collective waits for the other processes before the run fails",
    "deepspeed_stage": "with --distributed deepspeed: ZeRO stage 2 (optimizer state and gradients sharded) or 3 "
                       "(parameters too) (docs/distributed-deepspeed.md)",
    "reward_head": "reward models (preftune rm train): score adds a sequence-classification head (final/ loads with "
                   "AutoModelForSequenceClassification); value adds a linear value head on the causal LM's last "
                   "hidden state, read at the last real token, saved beside the body as value_head.safetensors "
                   "(TRL's AutoModelForCausalLMWithValueHead)",
    "max_length": "longest prompt+response in tokens; longer responses are truncated",
    "max_prompt_length": "longest prompt in tokens",
    "truncation": "prompt truncation: keep_end (last tokens) or keep_start",
    "on_bad_row": "error (default) stops at the first bad row; skip skips and counts by reason",
    "layout": "auto (pairs and ranked lists: packed on CPU, prefix_shared on CUDA; padded otherwise), padded, prefix_shared "
              "(the prompt computed once per pair, list or online group) or packed (no padding)",
    "group_by_length": "batch sequences of similar length together",
    "chunk_size": "positions per chunk of the LM head when computing log-probs",
    "eval_every": "evaluate on --eval-data every N steps (needs --eval-data; none or 0: at the end only)",
    "eval_batch_size": "batch size for evaluation and reference precomputation",
    "log_every": "write a metrics.jsonl record every N steps",
    "save_every": "write a checkpoint every N steps (none or 0: no periodic checkpoints)",
    "keep_checkpoints": "checkpoints to keep",
    "resume": "continue the run in --output: --resume alone from its latest checkpoint, --resume PATH from "
              "that checkpoint directory",
    "resume_fallback": "with --resume: skip a corrupted newest checkpoint for the last good one",
    "restart": "start over a run whose metrics exist but that has no checkpoint to resume (what --resume "
               "finds nothing for): its metrics are discarded",
    "overwrite": "replace an existing run in --output",
    "save_final": "save final/ (save_pretrained model + tokenizer)",
    "report_to": "also log to tensorboard and/or wandb (comma-separated; none: neither)",
    "monitor": "diagnostics to track while training, comma-separated "
               "(ranking_accuracy, ches, entanglement, topk_entropy, length_bias, logp_tracking)",
    "monitor_every": "run the monitors every N steps",
    "on_nonfinite": "stop (default) or skip an update whose loss or gradient is NaN/inf",
    "progress": "show a progress bar (--no-progress: none)",
}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def _is_switch(f: dataclasses.Field) -> bool:
    """A bool option (or resume, a bool or a path): ``--flag`` alone means true."""
    return "bool" in str(f.type)


def _metavar(f: dataclasses.Field) -> str:
    t = str(f.type)
    if f.name == "resume":
        return "PATH"
    if "bool" in t:
        return "BOOL"
    if "list" in t:
        return "A,B"
    if "int" in t:
        return "N"
    if "float" in t:
        return "X"
    return "VALUE"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on preference data",
        description="Train a causal LM on preference data with any registered objective. "
                    "Options override --config; objective hyperparameters (e.g. --beta) go to the objective. "
                    "Values are checked against each option's type (--lr 1e-3, --resume, --no-progress). "
                    "TRL/transformers TrainingArguments names are accepted too, in recipes and as options "
                    "(learning_rate, per_device_train_batch_size, bf16, ...).",
        epilog="example: preftune train --model runs/tiny --data pairs.jsonl --loss dpo --beta 0.1 "
               "--output runs/x --max-steps 100")
    add_train_options(p)
    p.set_defaults(func=run)


def add_train_options(p: argparse.ArgumentParser, *, taken: frozenset[str] = frozenset()) -> None:
    """Every TrainConfig field, every objective hyperparameter and TRL's names as options of ``p`` (shared by
    ``preftune train``, ``preftune rm train`` and ``preftune online``). ``taken``: option names the caller defines
    itself (``preftune online``'s sampling ``--temperature``), left out here."""
    from ..objectives import available, objective_class
    from ..train.config import TRL_NAMES, TRL_VALUE_NAMES, TrainConfig

    p.add_argument("--config", help="YAML recipe with any of the options below (keys as in config.yaml)")
    g = p.add_argument_group("training options")
    for name, f in TrainConfig.__dataclass_fields__.items():
        if name == "loss_params":
            continue
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # Values travel as text and are checked by TrainConfig against the field's type (one set of rules
        # and messages for recipes, options and Python).
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "metavar": _metavar(f),
                              "help": f"{HELP.get(name, name)} (default: {default})"}
        if _is_switch(f):
            kw.update(nargs="?", const=True)
        g.add_argument(flag, **kw)
        if name == "progress":
            g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                           default=argparse.SUPPRESS, help="no progress bars (same as --progress false)")
    h = p.add_argument_group("objective hyperparameters (see `preftune objectives NAME`)")
    seen: dict[str, Any] = {}
    for name in available():
        for hname, info in objective_class(name).hyperparameters().items():
            seen.setdefault(hname, (info, []))[1].append(name)
    for hname, (info, owners) in sorted(seen.items()):
        if hname in taken:
            continue
        d = info["default"]
        ty = _bool if isinstance(d, bool) else (float if isinstance(d, (int, float)) else str)
        owners_s = ", ".join(owners[:6]) + (" ..." if len(owners) > 6 else "")
        h.add_argument("--" + hname.replace("_", "-"), dest=f"hp__{hname}", type=ty, default=argparse.SUPPRESS,
                       metavar="BOOL" if ty is _bool else ("X" if ty is float else "VALUE"),
                       help=f"{info['help']} [{owners_s}]")
    t = p.add_argument_group("TRL / transformers names (the same options, as TrainingArguments spells them)")
    taken = set(p._option_string_actions)
    for alias, target in {**TRL_NAMES, **{k: v[0] for k, v in TRL_VALUE_NAMES.items()}}.items():
        flag = "--" + alias.replace("_", "-")
        if flag in taken:  # never shadow an option or hyperparameter of the same spelling
            continue
        f = TrainConfig.__dataclass_fields__[target]
        kw = {"dest": f"trl__{alias}", "default": argparse.SUPPRESS, "metavar": _metavar(f),
              "help": f"= --{target.replace('_', '-')}"}
        if alias in TRL_VALUE_NAMES:
            kw["help"] = {"bf16": "= --dtype bf16", "fp16": "= --dtype fp16", "disable_tqdm": "= --no-progress",
                          "precompute_ref_log_probs": "= --ref precomputed"}.get(
                alias, f"steps or no (no: --{target.replace('_', '-')} 0)")
            if alias in ("bf16", "fp16", "disable_tqdm", "precompute_ref_log_probs"):
                kw.update(nargs="?", const=True, metavar="BOOL")
            else:
                kw["metavar"] = "{steps,no}"
        elif _is_switch(f):
            kw.update(nargs="?", const=True)
        t.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig

    values = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "global_no_progress")}
    hparams = {k[4:]: values.pop(k) for k in list(values) if k.startswith("hp__")}
    aliases = {k[5:]: values.pop(k) for k in list(values) if k.startswith("trl__")}
    overrides = {**aliases, **values, **hparams}
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def run(args: argparse.Namespace) -> int:
    from ..train import train

    return report_run(train(config_from_args(args)), ("loss", "rewards/accuracies", "rewards/margins"), "model")


def report_run(result: Any, keys: tuple[str, ...], what: str) -> int:
    """The end of a training command: its last metrics and where the model is, on stderr; the exit code."""
    if result.interrupted:
        return 130
    if os.environ.get("RANK", "0") not in ("", "0"):  # under a launcher, rank 0 reports for every process
        return 0
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in keys if k in last)
    print(f"preftune: trained {result.steps} steps; {summary}", file=sys.stderr)
    if result.final_dir:
        print(f"preftune: {what} saved to {result.final_dir}", file=sys.stderr)
    return 0
