"""DeepSpeed ZeRO stage 2 and 3 as a training engine (``--distributed deepspeed``, the ``[deepspeed]`` extra).

The loop's engine seam (:mod:`preftune.train.distributed`) with ``deepspeed.initialize`` behind it -- the real
DeepSpeed engine and ZeRO optimizer, never a re-implementation:

* ``wrap`` puts the policy and the objective's modules under one root (:class:`~.distributed._Root`), as DDP and
  FSDP2 do; ``prepare_optimizer`` hands that root and the loop's own ``torch.optim.AdamW`` to
  ``deepspeed.initialize``. ZeRO shards AdamW's state (stage 2: and the gradients; stage 3: and the parameters)
  but the update is torch's AdamW, so a run matches the one-process run. The loop keeps its ``LambdaLR``: it
  drives the learning rate of the same parameter groups ZeRO steps.
* Gradient accumulation stays the loop's: DeepSpeed is told ``gradient_accumulation_steps: 1`` (so
  ``engine.backward`` does not divide the already divided ``loss / grad_accum`` again) and the loop's
  ``sync(last)`` marks the boundary (``set_gradient_accumulation_boundary``); ``step()`` runs once per step.
* Clipping is DeepSpeed's ``gradient_clipping: max_grad_norm``: ZeRO scales the gradients by
  ``max_norm / (norm + 1e-6)`` when that is below 1 -- the formula of ``torch.nn.utils.clip_grad_norm_``. The
  norm the loop logs (and checks for non-finite values) is read before the step from the ZeRO optimizer's own
  norm of its partitioned gradients, so it is the norm DeepSpeed clips with.
* A skipped update (``--on-nonfinite skip``) goes through DeepSpeed's own overflow path: ``step()`` sees the
  non-finite norm, drops the gradients and leaves weights and AdamW state untouched.
* Checkpoints hold full tensors in the one-process format: weights gathered (stage 3:
  ``deepspeed.zero.GatheredParameters``), AdamW's ``exp_avg``/``exp_avg_sq`` assembled per parameter from the
  shards (``deepspeed.utils.safe_get_full_optimizer_state``) and keyed by parameter index. They resume on any
  number of processes and under any engine; loading writes the shards back (``safe_set_full_*``).

preftune reads the output head's weight directly (chunked log-probs, :mod:`preftune.models.logprobs`), outside
the head module's ``forward``; under stage 3 that weight is registered as an external parameter of the root
(``deepspeed.zero.register_external_parameter``), so ZeRO gathers it for the whole computation. Every parameter
is partitioned under stage 3 (``stage3_param_persistence_threshold: 0``). The frozen reference model is not
handed to DeepSpeed: each process keeps a full copy (as TRL does for ZeRO stage 2).

Reference: DeepSpeed, https://github.com/deepspeedai/DeepSpeed (v0.19.8): ``deepspeed/runtime/engine.py``
(``DeepSpeedEngine.backward``, ``set_gradient_accumulation_boundary``, ``step``),
``deepspeed/runtime/zero/stage_1_and_2.py`` (``scaled_global_norm``, ``unscale_and_clip_grads``),
``deepspeed/runtime/zero/stage3.py`` (``_get_norm_groups``), ``deepspeed/utils/tensor_fragment.py``
(``safe_get_full_optimizer_state``); ZeRO: Rajbhandari et al. 2020, arXiv:1910.02054.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError, PreftuneError
from .distributed import _Distributed, _Root

STAGES = (2, 3)
ADAM_STATE = ("exp_avg", "exp_avg_sq")


def import_deepspeed(device: torch.device) -> Any:
    """``deepspeed``, its accelerator chosen before the import (it is fixed at import time): CPU without CUDA."""
    if device.type != "cuda" and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError:
        raise ConfigError("--distributed deepspeed needs DeepSpeed: pip install 'preftune[deepspeed]'") from None
    if device.type != "cuda":
        # DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce (C++, minutes) that only
        # its tensor-parallel inference uses; training's collectives are gloo's. Marking it incompatible (the
        # table DeepSpeed reads for exactly that) skips the build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def ds_config(cfg: Any, world: int, stage: int) -> dict[str, Any]:
    """The DeepSpeed config preftune's settings imply. Accumulation, clipping and precision are the loop's."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,          # the loop accumulates and divides; see the module docstring
        "train_batch_size": cfg.batch_size * world,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),   # 0: no clipping, as max_grad_norm null
        "bf16": {"enabled": _dtype(cfg) == "bf16"},
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
                              "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,     # torch's AdamW: ZeRO steps it on its flat fp32 partitions
        "steps_per_print": 2 ** 62,
        "wall_clock_breakdown": False,
    }


def _dtype(cfg: Any) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(cfg.dtype, cfg.dtype)


class DeepSpeedEngine(_Distributed):
    """ZeRO stage 2 (sharded AdamW state and gradients) or 3 (and parameters) through ``deepspeed.initialize``.
    The stage is ``cfg.deepspeed_stage`` (2 when the config has no such field)."""

    name = "deepspeed"

    def __init__(self, device: torch.device, cfg: Any):
        super().__init__(device)
        self.stage = getattr(cfg, "deepspeed_stage", 2)
        if self.stage not in STAGES:
            raise ConfigError(f"deepspeed_stage={self.stage} is not supported; use 2 or 3")
        if _dtype(cfg) == "fp16":
            raise ConfigError("--distributed deepspeed trains in fp32 or bf16 (fp16 needs DeepSpeed's loss scaling, "
                              "which the loop does not do); use --dtype bf16 or fp32")
        if self.stage == 3 and getattr(cfg, "monitor", False):
            raise ConfigError("--monitor runs the model on rank 0 alone, which ZeRO-3's partitioned model cannot do; "
                              "drop --monitor or use deepspeed_stage 2")
        self.cfg = cfg
        self.deepspeed = import_deepspeed(device)
        self.deepspeed.init_distributed(dist_backend=self.dist.get_backend())  # adopts the loop's process group
        self.ds: Any = None                 # the DeepSpeedEngine, after prepare_optimizer
        self.params: list[torch.nn.Parameter] = []   # the optimizer's parameters, in the one-process order
        self.groups: list[dict[str, Any]] = []       # its param_groups as state_dict() writes them
        self.norm = 0.0
        self.pending = False                # gradients complete, step not taken yet

    # ------------------------------------------------------------------ wrapping
    def wrap(self, model: Any, state: Any, reference: Any = None) -> None:
        # every process starts from rank 0's weights (a freshly initialised head would differ between processes;
        # stage 3 partitions each process's own copy)
        for t in [*model.parameters(), *model.buffers(), *(state.parameters() if state is not None else [])]:
            self.dist.broadcast(t.data, src=0)
        self.root = _Root(model, state)

    def prepare_optimizer(self, optimizer: Any, scheduler: Any) -> tuple[Any, Any]:
        # ZeRO steps the torch optimizer over its own flat partitions, and a resume rebuilds their state here
        # (load_optimizer_state): keep the per-tensor AdamW rather than the fused kernel, whose CUDA path expects
        # its state where torch's own load_state_dict puts it
        for g in optimizer.param_groups:
            if g.get("fused"):
                g["fused"] = False
        if optimizer.defaults.get("fused"):
            optimizer.defaults["fused"] = False
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.groups = optimizer.state_dict()["param_groups"]
        self.ds, zero, _, _ = self.deepspeed.initialize(
            model=self.root, optimizer=optimizer, config=ds_config(self.cfg, self.world, self.stage),
            dist_init_required=False)
        if self.stage == 3:
            self._register_read_weights()
        return zero, scheduler

    def _register_read_weights(self) -> None:
        """Parameters read outside their module's ``forward`` (the output head's, in the chunked log-probs; the
        objective's own) are gathered for the whole root forward and its backward."""
        from ..models.loading import unwrap

        head = unwrap(self.root.policy).get_output_embeddings()
        read = list(head.parameters()) if head is not None else []
        read += list(self.root.state.parameters())
        for p in read:
            self.deepspeed.zero.register_external_parameter(self.root, p)

    @property
    def zero(self) -> Any:
        return self.ds.optimizer

    # ------------------------------------------------------------------ computing
    def call(self, fn: Callable[[], Any]) -> Any:
        from .distributed import loss_through

        return loss_through(self.ds, fn)  # only the loss through DeepSpeed's hooks, as under FSDP2

    def infer(self, fn: Callable[[], Any]) -> Any:
        return self.root(fn)  # stage 3 gathers parameters in the hooks of the root and its modules

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        self.ds.set_gradient_accumulation_boundary(last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)  # gradient_accumulation_steps 1: not divided again

    def grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float | None) -> float:
        """The global norm of the accumulated gradients, as ZeRO computes it before clipping (a collective).
        Clipping itself happens in ``step()`` (``gradient_clipping``)."""
        if self.stage == 3:
            groups = self.zero._get_norm_groups()
        else:
            groups = [self.zero.scaled_global_norm()]
        norms = [float(g) for g in groups]
        # ZeRO reports a non-finite group norm as -1
        self.norm = math.sqrt(sum(n * n for n in norms)) if all(math.isfinite(n) and n >= 0 for n in norms) \
            else float("nan")
        self.pending = True
        return self.norm

    def optimizer_step(self, optimizer: Any) -> None:
        self.ds.step()
        self.pending = False

    def zero_grad(self, optimizer: Any) -> None:
        if self.pending:  # the loop skipped this step's update: discard the gradients without applying them
            if math.isfinite(self.norm):
                raise PreftuneError("under --distributed deepspeed a step with a non-finite loss but finite "
                                    "gradients cannot be skipped; use --on-nonfinite stop")
            self.ds.step()  # DeepSpeed's overflow path: no update, gradients dropped
            self.pending = False
        self.ds.zero_grad()

    # ------------------------------------------------------------------ checkpoints
    def _gathered(self, module: Any, keep: Callable[[str], bool] = lambda k: True) -> dict[str, torch.Tensor] | None:
        """``module``'s state-dict entries (those ``keep`` accepts), full, on CPU, on rank 0 (a collective)."""
        out: dict[str, torch.Tensor] = {}
        seen: dict[int, torch.Tensor] = {}
        for k, v in module.state_dict(keep_vars=True).items():
            if not keep(k):
                continue
            if hasattr(v, "ds_id"):  # a stage-3 partitioned parameter: gathered on every process, in one order
                if id(v) not in seen:
                    with self.deepspeed.zero.GatheredParameters([v], modifier_rank=None):
                        seen[id(v)] = v.detach().clone().contiguous().cpu()
                out[k] = seen[id(v)]
            else:
                out[k] = v.detach().contiguous().cpu()
        return out if self.is_main else None

    def full_model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        if self.stage == 2:  # the module's parameters are whole on every process
            return super().full_model_state(model)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return self._gathered(model, lambda k: k in names)

    def full_state_tensors(self, module: Any) -> dict[str, torch.Tensor] | None:
        return super().full_state_tensors(module) if self.stage == 2 else self._gathered(module)

    def full_final_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        return None if self.stage == 2 else self._gathered(model)

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        """AdamW's state per parameter, full, in ``torch.optim.AdamW.state_dict()``'s layout (a collective)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        # AdamW's own state is keyed by ZeRO's flat fp32 shards; it is empty before the first step, as in torch
        steps = [s["step"] for s in self.zero.optimizer.state.values() if "step" in s]
        state: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(self.params if steps else []):
            shape = p.ds_shape if hasattr(p, "ds_shape") else p.shape  # stage 3: the parameter's full shape
            state[i] = {"step": torch.as_tensor(steps[0], dtype=torch.float32).detach().clone().cpu(),
                        **{k: safe_get_full_optimizer_state(p, k).detach().reshape(shape).to(p.dtype).cpu()
                           for k in ADAM_STATE}}
        inner = self.zero.optimizer.param_groups
        groups = [{**{k: inner[j].get(k, v) for k, v in g.items() if k != "params"}, "params": g["params"]}
                  for j, g in enumerate(self.groups)]
        return {"state": state, "param_groups": groups} if self.is_main else None

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        saved = {int(i): s for i, s in state["state"].items()}
        if not saved:
            return
        if len(saved) != len(self.params) or any(set(ADAM_STATE) - set(s) for s in saved.values()):
            raise PreftuneError("this checkpoint's optimizer state has no AdamW moments for every parameter "
                                "(a parameter that never had a gradient); resume it with --distributed ddp or fsdp2")
        adam = self.zero.optimizer
        step = next(iter(saved.values()))["step"]
        # AdamW creates its state lazily, at its first step, for the flat fp32 shards ZeRO hands it: create it now
        flats = self.zero.fp32_partitioned_groups_flat if self.stage == 3 else self.zero.single_partition_of_fp32_groups
        for flat in flats:
            adam.state[flat] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(),
                                **{k: torch.zeros_like(flat) for k in ADAM_STATE}}
        if self.stage == 2:  # ZeRO-2 links its per-parameter views into the state after the first step: now
            self.zero._hp_optimizer_states_linked = False
            self.zero._lazy_init_hp_params_optimizer_state()
        for i, p in enumerate(self.params):
            for k in ADAM_STATE:
                safe_set_full_optimizer_state(p, saved[i][k].to(torch.float32).to(self.device), k)
        for g, s in zip(adam.param_groups, state["param_groups"]):
            g.update({k: v for k, v in s.items() if k != "params"})

    def load_model_state(self, model: Any, weights: dict[str, torch.Tensor]) -> None:
        """Full tensors into the module and into ZeRO's fp32 master copy (the one the optimizer updates)."""
        from deepspeed.utils import safe_set_full_fp32_param

        current = model.state_dict(keep_vars=True)
        for k, w in weights.items():
            v = current.get(k)
            if v is None:
                continue
            if not isinstance(v, torch.nn.Parameter):  # a buffer: whole on every process
                v.data.copy_(w.to(v.dtype))
                continue
            if hasattr(v, "ds_id"):
                with self.deepspeed.zero.GatheredParameters([v], modifier_rank=0):
                    if self.is_main:
                        v.data.copy_(w.to(v.dtype))
            else:
                v.data.copy_(w.to(v.dtype))
            if v.requires_grad:
                safe_set_full_fp32_param(v, w.to(torch.float32).to(self.device))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "zero_stage": self.stage}


__all__ = ["DeepSpeedEngine", "ds_config", "import_deepspeed"]
