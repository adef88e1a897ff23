"""``preftune train``: train a model on preference data with any registered objective.

Every ``TrainConfig`` field is an option (``--batch-size 8``); every objective
hyperparameter known to the registry is an option too (``--beta 0.1``) and goes to the
objective, which validates it. ``--config recipe.yaml`` gives defaults that options override.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

HELP = {
    "model": "model directory or hub name (AutoModelForCausalLM.from_pretrained)",
    "data": "training data: .jsonl/.json/.parquet/.csv file, a datasets directory, or a hub name",
    "output": "run directory (config.yaml, metrics.jsonl, checkpoints/, final/)",
    "eval_data": "held-out data evaluated every --eval-every steps",
    "split": "split to read from a datasets directory / hub dataset",
    "eval_split": "split of --eval-data (defaults to --split)",
    "loss": "objective name, or a weighted sum such as 'dpo:1.0,sft:0.2' (see `preftune objectives`)",
    "ref": "reference log-probs: model (frozen copy), adapter (LoRA off), precomputed (cached on disk), none, "
           "or auto (adapter under LoRA, none for reference-free objectives, else model)",
    "ref_model": "checkpoint to use as the reference instead of --model",
    "ref_cache_dir": "where --ref precomputed caches log-probs (default OUTPUT/ref_cache)",
    "max_steps": "optimizer steps (overrides --epochs)",
    "epochs": "passes over the training data",
    "batch_size": "pairs per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (AdamW)",
    "lr_schedule": "linear, cosine or constant after warmup",
    "warmup_ratio": "share of steps spent warming up linearly",
    "warmup_steps": "warmup steps (overrides --warmup-ratio)",
    "weight_decay": "AdamW weight decay",
    "adam_beta1": "AdamW beta1", "adam_beta2": "AdamW beta2", "adam_eps": "AdamW epsilon",
    "max_grad_norm": "clip the gradient norm to this value",
    "seed": "random seed (data order, initialisation of adapters)",
    "dtype": "fp32, bf16 or fp16",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory",
    "lora_r": "LoRA rank; 0 trains all weights",
    "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "lora_target": "LoRA target modules (peft syntax; default all-linear)",
    "trust_remote_code": "allow model repositories to run their own code (off by default)",
    "device": "auto, cpu, cuda, cuda:N",
    "max_length": "longest prompt+response in tokens; longer responses are truncated",
    "max_prompt_length": "longest prompt in tokens",
    "truncation": "prompt truncation: keep_end (last tokens) or keep_start",
    "on_bad_row": "error (default) stops at the first bad row; skip skips and counts by reason",
    "layout": "auto (packed for pairs, padded otherwise), padded, prefix_shared (prompt computed once per pair) or packed (no padding)",
    "group_by_length": "batch sequences of similar length together",
    "chunk_size": "positions per chunk of the LM head when computing log-probs",
    "eval_every": "evaluate on --eval-data every N steps",
    "eval_batch_size": "batch size for evaluation and reference precomputation",
    "log_every": "write a metrics.jsonl record every N steps",
    "save_every": "write a checkpoint every N steps",
    "keep_checkpoints": "checkpoints to keep",
    "resume": "continue the run in --output from its latest checkpoint",
    "resume_fallback": "with --resume: skip a corrupted newest checkpoint for the last good one",
    "overwrite": "replace an existing run in --output",
    "save_final": "save final/ (save_pretrained model + tokenizer)",
    "report_to": "also log to tensorboard and/or wandb (comma-separated)",
    "monitor": "diagnostics to track while training, comma-separated "
               "(ranking_accuracy, ches, entanglement, topk_entropy, length_bias, logp_tracking)",
    "monitor_every": "run the monitors every N steps",
    "on_nonfinite": "stop (default) or skip an update whose loss or gradient is NaN/inf",
    "progress": "show a progress bar",
}


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def _opt_int(s: str) -> int | None:
    return None if s.lower() in ("none", "null") else int(s)


def _opt_float(s: str) -> float | None:
    return None if s.lower() in ("none", "null") else float(s)


def _list(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _type_for(f: dataclasses.Field) -> Any:
    t = str(f.type)
    if "bool" in t:
        return _bool
    if "list" in t:
        return _list
    if "int" in t:
        return _opt_int
    if "float" in t:
        return _opt_float
    return str


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..objectives import available, objective_class
    from ..train.config import TrainConfig

    p = sub.add_parser(
        "train", help="train a model on preference data",
        description="Train a causal LM on preference data with any registered objective. "
                    "Options override --config; objective hyperparameters (e.g. --beta) go to the objective.",
        epilog="example: preftune train --model runs/tiny --data pairs.jsonl --loss dpo --beta 0.1 "
               "--output runs/x --max-steps 100")
    p.add_argument("--config", help="YAML recipe with any of the options below (keys as in config.yaml)")
    g = p.add_argument_group("training options")
    defaults = TrainConfig.__dataclass_fields__
    for name, f in defaults.items():
        if name == "loss_params":
            continue
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        ty = _type_for(f)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": f"{HELP.get(name, name)} (default: {default})"}
        if ty is _bool:
            kw.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        else:
            kw.update(type=ty)
        g.add_argument(flag, **kw)
    h = p.add_argument_group("objective hyperparameters (see `preftune objectives NAME`)")
    seen: dict[str, Any] = {}
    for name in available():
        for hname, info in objective_class(name).hyperparameters().items():
            seen.setdefault(hname, (info, []))[1].append(name)
    for hname, (info, owners) in sorted(seen.items()):
        d = info["default"]
        ty = _bool if isinstance(d, bool) else (float if isinstance(d, (int, float)) else str)
        owners_s = ", ".join(owners[:6]) + (" ..." if len(owners) > 6 else "")
        h.add_argument("--" + hname.replace("_", "-"), dest=f"hp__{hname}", type=ty, default=argparse.SUPPRESS,
                       help=f"{info['help']} [{owners_s}]")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig

    values = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    hparams = {k[4:]: values.pop(k) for k in list(values) if k.startswith("hp__")}
    overrides = {**values, **hparams}
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def run(args: argparse.Namespace) -> int:
    from ..train import train

    cfg = config_from_args(args)
    result = train(cfg)
    if result.interrupted:
        return 130
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in ("loss", "rewards/accuracies", "rewards/margins") if k in last)
    print(f"preftune: trained {result.steps} steps; {summary}", file=sys.stderr)
    if result.final_dir:
        print(f"preftune: model saved to {result.final_dir}", file=sys.stderr)
    return 0
