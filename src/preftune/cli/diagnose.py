"""``preftune diagnose``: run the diagnostics on a model, its reference and a preference data
set; write ``diagnostics.json`` and ``report.html`` (with PNG plots) to ``--output``.

A model is a ``save_pretrained`` directory or hub name (e.g. a run's ``final/``), or one of the
trainer's own checkpoints, ``RUN/checkpoints/step-N``: its ``model.safetensors`` holds only the
trainable weights (the LoRA adapter's, under LoRA), so it is read as the run's base model
(``RUN/config.yaml``) with those weights loaded on top -- see :func:`load_any_model`.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, Iterator


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose", help="ranking accuracy, CHES, gradient entanglement, top-k entropy and length bias of a model",
        description="Measure a model against its reference on preference pairs: ranking accuracy and its "
                    "idealized value (P02), CHES likelihood-displacement scores (P16), gradient entanglement "
                    "(P08), top-k entropy/mass (P46) and length bias (P38, P52). Writes diagnostics.json and "
                    "report.html with PNG plots. See docs/diagnostics.md.")
    p.add_argument("--model", required=True,
                   help="model to diagnose: a local directory or hub name, or a training checkpoint "
                        "RUN/checkpoints/step-N (read as the run's base model with the checkpoint's weights)")
    p.add_argument("--ref-model", default=None,
                   help="reference model, any form --model takes (default: the model itself, i.e. the model "
                        "before preference training)")
    p.add_argument("--data", required=True, help="preference data file or directory (any format preftune reads)")
    p.add_argument("--output", required=True, help="directory for diagnostics.json, report.html and the plots")
    p.add_argument("--max-pairs", type=int, default=256, help="diagnose at most this many pairs (default 256)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of: ranking_accuracy, ches, entanglement, topk, length_bias, "
                        "logp_change (default all)")
    p.add_argument("--beta", type=float, default=0.1,
                   help="DPO beta for the idealized accuracy, difficulty and implicit rewards (default 0.1)")
    p.add_argument("--k", type=int, default=10, help="k of the top-k entropy and mass (default 10)")
    p.add_argument("--drop", type=float, default=0.05,
                   help="fraction of highest-CHES pairs the report lists as candidates to drop (default 0.05)")
    p.add_argument("--entanglement-pairs", type=int, default=16,
                   help="pairs for gradient entanglement, which costs a backward pass per response (default 16)")
    p.add_argument("--entanglement-params", default=None,
                   help="regular expression selecting the parameters for gradient entanglement (default all)")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoint directories, oldest first: top-k entropy/mass is tracked across "
                        "them and the P46 warning raised when both fall")
    p.add_argument("--sample-prompts", type=int, default=8,
                   help="prompts to sample from policy and reference for the length comparison; 0 skips (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length cap of those samples (default 64)")
    p.add_argument("--max-length", type=int, default=1024, help="truncate prompt+response to this many tokens")
    p.add_argument("--max-prompt-length", type=int, default=512, help="truncate prompts to this many tokens")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="what to do with a malformed row: stop with an error, or skip and count it")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (default fp32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling for the length comparison")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (tokenizing, model loading)")
    p.set_defaults(func=run)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled`` False, silence the progress bars of transformers, datasets and the hub
    (model and data loading) for the duration, then restore them as they were."""
    if enabled:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tf

    was = (tf.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(), not hub.are_progress_bars_disabled())
    tf.disable_progress_bar()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if was[0]:
            tf.enable_progress_bar()
        if was[1]:
            datasets.enable_progress_bars()
        if was[2]:
            hub.enable_progress_bars()


def is_run_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a trainer checkpoint directory (``checkpoints/step-N``), not a
    ``save_pretrained`` one: trainer files present, no ``config.json``."""
    p = Path(path)
    return (p.is_dir() and not (p / "config.json").is_file()
            and ((p / "manifest.json").is_file() or (p / "trainer_state.pt").is_file()))


def load_checkpoint_model(path: str | Path, *, dtype: str = "fp32", device: str = "cpu") -> tuple[Any, str]:
    """The model a trainer checkpoint ``RUN/checkpoints/step-N`` holds, and its base model's name.

    The checkpoint is verified first (every file against ``manifest.json``). The model is the
    run's base model (``RUN/config.yaml`` key ``model``), under LoRA with the run's adapter
    settings, with the checkpoint's trainable weights loaded on top; a LoRA model is merged,
    so the result is a plain transformers model, as the run's ``final/`` would be. Returned in
    eval mode. Raises a one-line ``CheckpointError`` / ``ConfigError`` when it cannot.
    """
    from safetensors.torch import load_file

    import yaml

    from ..errors import CheckpointError
    from ..models.loading import LoraSettings, apply_lora, load_model
    from ..train.checkpoint import verify_checkpoint

    ckpt = Path(path)
    verify_checkpoint(ckpt)
    run_dir = ckpt.resolve().parent.parent
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt}: the run directory {run_dir} has no config.yaml, so the base "
                              "model its weights belong on is unknown (give a save_pretrained directory, e.g. "
                              "the run's final/)")
    try:  # the run's own resolved config: only the keys that rebuild its model are read
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: cannot read {cfg_path} ({str(e).splitlines()[0]})") from None
    base = cfg.get("model") if isinstance(cfg, dict) else None
    if not base or not isinstance(base, str):
        raise CheckpointError(f"checkpoint {ckpt}: {cfg_path} names no base model (the run was given a model "
                              "object); give a save_pretrained directory, e.g. the run's final/")
    dflt = LoraSettings()
    lora = LoraSettings(int(cfg.get("lora_r") or 0), cfg.get("lora_alpha", dflt.alpha),
                        cfg.get("lora_dropout", dflt.dropout), cfg.get("lora_target") or dflt.target_modules)
    model = load_model(base, dtype=dtype, device=device, trust_remote_code=bool(cfg.get("trust_remote_code")))
    if lora.r > 0:
        model = apply_lora(model, lora)
    weights = load_file(str(ckpt / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(weights))
    unexpected = sorted(set(weights) - set(model.state_dict()))
    if missing or unexpected:
        what = base + (f" with LoRA r={lora.r}" if lora.r > 0 else "")
        detail = "; ".join(x for x in (f"missing {missing[:3]}" if missing else "",
                                       f"unexpected {unexpected[:3]}" if unexpected else "") if x)
        raise CheckpointError(f"checkpoint {ckpt} does not match its run's model {what} ({detail})")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape: another model, or other LoRA settings
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        raise CheckpointError(f"checkpoint {ckpt} does not match its run's model {base} "
                              f"({lines[-1] if lines else type(e).__name__})") from None
    if lora.r > 0:
        model = model.merge_and_unload()
    return model.eval(), base


def load_any_model(path: str, *, dtype: str = "fp32", device: str = "cpu") -> tuple[Any, str]:
    """A model to diagnose and where its tokenizer is: a trainer checkpoint (see
    :func:`load_checkpoint_model`), else ``load_model(path)`` and ``path`` itself."""
    from ..models.loading import load_model

    if is_run_checkpoint(path):
        return load_checkpoint_model(path, dtype=dtype, device=device)
    return load_model(path, dtype=dtype, device=device), path


def load_pairs(data: str, tokenizer, *, max_pairs: int | None, max_length: int | None,
               max_prompt_length: int | None, on_bad_row: str, progress: bool = False,
               skipped: dict[str, int] | None = None) -> list:
    """Read ``data`` with ``preftune.data.load_examples`` and tokenize the first ``max_pairs`` pairs.

    Data that is not pairs (unpaired, ranked) is refused in one line. With ``on_bad_row="skip"``
    the rows skipped (reading or tokenizing) are counted by reason into ``skipped``.
    """
    from ..data import load_examples, tokenize_examples

    res = load_examples(data, on_bad_row=on_bad_row, kind="pair")
    examples = res.examples[:max_pairs] if max_pairs else res.examples
    tres = tokenize_examples(examples, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                             on_bad_row=on_bad_row, progress=progress)
    if skipped is not None:
        for counts in (res.skipped, tres.skipped):
            for k, n in counts.items():
                skipped[k] = skipped.get(k, 0) + n
    return list(tres.items)


def run(args: argparse.Namespace) -> int:
    with progress_bars(not args.no_progress):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..diagnostics.report import check_only, run_diagnostics, write_report
    from ..errors import ConfigError
    from ..models.loading import load_tokenizer

    only = check_only([s.strip() for s in args.only.split(",") if s.strip()] if args.only else None)
    if not 0.0 <= args.drop < 1.0:
        raise ConfigError(f"--drop must be in [0, 1), got {args.drop}")
    if args.beta <= 0:
        raise ConfigError(f"--beta must be > 0, got {args.beta}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ConfigError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    model, tokenizer_from = load_any_model(args.model, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(tokenizer_from)
    ref = load_any_model(args.ref_model, dtype=args.dtype, device=args.device)[0] if args.ref_model else None
    skipped: dict[str, int] = {}
    pairs = load_pairs(args.data, tokenizer, max_pairs=args.max_pairs, max_length=args.max_length,
                       max_prompt_length=args.max_prompt_length, on_bad_row=args.on_bad_row,
                       progress=not args.no_progress, skipped=skipped)
    if skipped:
        print(f"preftune diagnose: skipped bad rows ({sum(skipped.values())}): "
              + ", ".join(f"{k}: {n}" for k, n in sorted(skipped.items())))
    checkpoints = []
    if args.checkpoints:
        for path in (s.strip() for s in args.checkpoints.split(",") if s.strip()):
            checkpoints.append((path, load_any_model(path, dtype=args.dtype, device=args.device)[0]))
    results = run_diagnostics(model, ref, pairs, tokenizer=tokenizer, only=only, beta=args.beta, k=args.k,
                              drop=args.drop, entanglement_pairs=args.entanglement_pairs,
                              entanglement_params=args.entanglement_params, sample_prompts=args.sample_prompts,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                              checkpoints=checkpoints)
    results["meta"] = {"model": args.model, "ref_model": args.ref_model or "(the model itself)", "data": args.data,
                       "skipped": skipped}
    if tokenizer_from != args.model:
        results["meta"]["base_model"] = tokenizer_from
    out = write_report(results, args.output)
    print(f"preftune diagnose: {len(pairs)} pairs -> {out / 'report.html'}")
    rk = results.get("ranking_accuracy")
    if rk:
        s = rk["summary"]
        print(f"  ranking accuracy {s['accuracy']:.3f} (reference {s['ref_accuracy']:.3f}, "
              f"idealized {s['idealized_accuracy']:.3f})")
    return 0
