"""Optimizer, learning-rate schedule and gradient norm: AdamW over the policy's trainable parameters and
the objective's own (:func:`preftune.objectives.base.objective_state`)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .config import TrainConfig


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def fused_ok(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain (not sharded) float tensors on one CPU or CUDA
    device. It is transformers' default optimizer on torch >= 2.8 (``adamw_torch_fused``, TRL's too) and 4-5x faster
    than the per-tensor loop on CPU (4 vs 15-19 ms a step for a 4.5M-parameter model)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    devices = {p.device.type for p in params}
    return (bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"}
            and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
            and not any(isinstance(p, DTensor) for p in params))


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, total: int) -> tuple[Any, Any]:
    """AdamW and its LambdaLR schedule (warmup, then linear/cosine/constant) over ``total`` steps."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay, **({"fused": True} if fused_ok(params) else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, warmup, total))
    return optimizer, scheduler


def grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The global gradient norm, clipped to ``max_norm`` when given."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is not None:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in grads])))
