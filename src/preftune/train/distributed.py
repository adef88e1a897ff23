"""Running one training loop on many processes, through torch's own engines: DDP and FSDP2 (``fully_shard``).

``torchrun`` or ``accelerate launch`` start the processes and set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``; :func:`make_engine` reads them, forms the process group (gloo on CPU, nccl on CUDA) and returns
an :class:`Engine` that the loop asks for everything that differs between one process and many:

* ``wrap`` -- the policy and the objective's own modules under one root module (:class:`_Root`), wrapped in
  ``DistributedDataParallel`` or sharded with ``fully_shard`` (each decoder layer a unit, the root holding the
  embeddings, final norm, head and objective state); the frozen reference is sharded the same way under FSDP2;
* ``call`` -- every computation with the policy runs as the root's forward (``engine.call(fn)``): DDP prepares
  its gradient all-reduce there and FSDP2 gathers the root's parameters there. preftune's forward reads the
  decoder and the head separately (chunked log-probs), so the model's own ``forward`` is not the place;
* ``sync`` -- gradients are all-reduced (reduce-scattered) only on the last micro-batch of a step;
* metrics are averaged over ranks; the gradient norm is the global one; only rank 0 writes;
* ``full_model_state``/``full_optimizer_state`` -- checkpoints hold full, unsharded tensors in the one-process
  format (the optimizer's state keyed by parameter index), so a run resumes on any number of processes.

The global batch is TRL's: ``batch_size`` (per process) x processes x ``grad_accum``. Each rank takes every
``world``-th micro-batch of the one-process order (:class:`ShardedSource`), so the examples of an optimizer step
are the same whatever the number of processes when ``batch_size`` is: a 2-process run with ``grad_accum`` A
reproduces the 1-process run with ``grad_accum`` 2A (tests/test_distributed.py).

Why not ``accelerate.Accelerator``: on CPU it forms no process group without ``ACCELERATE_USE_CPU`` and silently
drops an FSDP config, so the FSDP path tested here would not be the one shipped; ``accelerate launch`` works as
the launcher (it sets the same environment variables). DeepSpeed ZeRO goes through ``deepspeed.initialize``
(:class:`DeepSpeedEngine`, the ``[deepspeed]`` extra).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import zlib
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError

ENGINES = ("auto", "ddp", "fsdp2", "deepspeed")


def launched_world() -> int:
    """The number of processes the launcher started (1 without one)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class _Root(torch.nn.Module):
    """The policy and the objective's own modules as one module whose forward runs a closure, so that every
    use of the policy is inside the forward the engine instruments."""

    def __init__(self, policy: torch.nn.Module, state: torch.nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.state = state if state is not None else torch.nn.Module()

    def forward(self, fn: Callable[[], Any]) -> Any:  # type: ignore[override]
        return fn()


class Engine:
    """One process: nothing is wrapped, reduced or gathered."""

    name = "single"
    rank, world, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: Any, state: Any, reference: Any = None) -> None:
        pass

    def call(self, fn: Callable[[], Any]) -> Any:
        """A training computation with the policy (gradients flow)."""
        return fn()

    def infer(self, fn: Callable[[], Any]) -> Any:
        """A computation with the policy outside training (generation, the sampler's log-probs)."""
        return fn()

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        yield

    # the optimizer's life: an engine that owns the optimizer (DeepSpeed) replaces these
    def prepare_optimizer(self, optimizer: Any, scheduler: Any) -> tuple[Any, Any]:
        return optimizer, scheduler

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: Any) -> None:
        optimizer.step()

    def zero_grad(self, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=True)

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def reduce_sum(self, x: float) -> float:
        return x

    def barrier(self) -> None:
        pass

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float | None) -> float:
        from .optim import grad_norm

        return grad_norm(list(params), max_norm)

    def full_model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        """The trainable parameters, full, on CPU (on rank 0; None elsewhere)."""
        from .checkpoint import trainable_state

        return trainable_state(model)

    def full_state_tensors(self, module: Any) -> dict[str, torch.Tensor] | None:
        from .checkpoint import state_tensors

        return state_tensors(module)

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        return optimizer.state_dict()

    def load_model_state(self, model: Any, weights: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(weights, strict=False)

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def full_final_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict for ``final/`` (None: ``save_pretrained`` reads the model itself)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "processes": self.world}

    def close(self, ok: bool = True) -> None:
        pass


class _Distributed(Engine):
    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = device
        self.root: Any = None

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.root(fn) if self.root is not None else fn()

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        # the ranks normally report the same keys; a cheap check (a checksum's max and min) instead of sending the
        # names every step, and on a mismatch (a metric only some micro-batches have) the keys they share
        keys = sorted(values)
        h = float(zlib.crc32("\0".join(keys).encode()))
        check = torch.tensor([h, -h], dtype=torch.float64, device=self._comm_device())
        self.dist.all_reduce(check, op=self.dist.ReduceOp.MAX)
        if check[0].item() != h or -check[1].item() != h:
            keys = sorted(set.intersection(*map(set, self.gather_objects(keys))))
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        self.dist.all_reduce(t)
        return {**values, **{k: v / self.world for k, v in zip(keys, t.tolist())}}

    def reduce_sum(self, x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64, device=self._comm_device())
        self.dist.all_reduce(t)
        return float(t.item())

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        self.dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def full_model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        return super().full_model_state(model) if self.is_main else None

    def full_state_tensors(self, module: Any) -> dict[str, torch.Tensor] | None:
        return super().full_state_tensors(module) if self.is_main else None

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        return optimizer.state_dict() if self.is_main else None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "processes": self.world, "backend": self.dist.get_backend()}

    def close(self, ok: bool = True) -> None:
        # after a run: a barrier before the group goes (without it, one rank's teardown aborts another's last
        # collective). After an error: no collective -- the other ranks may be waiting in another one; leaving
        # lets the launcher end them, and the original error is what gets reported
        if self.dist.is_initialized():
            if ok:
                self.dist.barrier()
            self.dist.destroy_process_group()


class DDPEngine(_Distributed):
    """``torch.nn.parallel.DistributedDataParallel`` over the root module: gradients averaged over ranks."""

    name = "ddp"

    def wrap(self, model: Any, state: Any, reference: Any = None) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        root = _Root(model, state)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # a trainable parameter may get no gradient (an objective's module that sits out a batch, the untied LM
        # head of a value-head reward model, an MoE expert no token reached): look for unused parameters each step
        # (an extra pass over the graph) rather than fail at the next all-reduce. Buffers are not broadcast from
        # rank 0: an objective's running statistics stay each process's own (docs/distributed.md)
        self.root = DDP(root, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        if last:
            yield
        else:
            with self.root.no_sync():
                yield


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks (``_no_split_modules``, as accelerate's auto-wrap policy reads them)."""
    from ..models.loading import unwrap

    base = unwrap(model)
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # no declaration: the children of the longest ModuleList
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        layers = list(max(lists, key=len)) if lists else []
    return layers


def loss_through(root: Callable[[Callable[[], Any]], Any], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (-> (loss, metrics, stats)) as ``root``'s forward with only the loss returned through it: FSDP2
    and DeepSpeed hook every tensor a root returns for backward, and the metrics and stats that come with the loss
    are views FSDP2 warns about (and are never backpropagated through)."""
    rest: list[Any] = []

    def loss_only() -> Any:
        out = fn()
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            rest.append(out[1:])
            return out[0]
        return out

    first = root(loss_only)
    return (first, *rest[0]) if rest else first


def gather_to_main(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on rank 0 (``[]`` elsewhere); one process: ``[obj]``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


class FSDP2Engine(_Distributed):
    """torch's ``fully_shard`` (FSDP2): every decoder layer its own unit, the root holding the rest; parameters
    sharded over a 1-D device mesh (an explicit CPU mesh on CPU), bf16 compute with fp32 gradient reduction
    when ``dtype`` is bf16."""

    name = "fsdp2"

    def __init__(self, device: torch.device, mixed_precision: str | None = None):
        super().__init__(device)
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(device.type, (self.world,))
        self.mp = mixed_precision
        self.ref_root: Any = None

    def _shard(self, model: Any, state: Any) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw: dict[str, Any] = {"mesh": self.mesh}
        if self.mp == "bf16":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, **kw)
        root = _Root(model, state)
        fully_shard(root, **kw)
        return root

    def wrap(self, model: Any, state: Any, reference: Any = None) -> None:
        import inspect

        from ..models.loading import unwrap

        if "state_dict" not in inspect.signature(unwrap(model).save_pretrained).parameters:
            raise ConfigError(f"{type(unwrap(model)).__name__} cannot write final/ from gathered shards (its "
                              "save_pretrained takes no state_dict); use --distributed ddp")
        # every process starts from rank 0's weights, as DDP makes sure: a freshly initialised head (a reward
        # model's score head) would otherwise differ from process to process and be sharded as one tensor
        for t in [*model.parameters(), *model.buffers(), *(state.parameters() if state is not None else [])]:
            self.dist.broadcast(t.data, src=0)
        self.root = self._shard(model, state)
        ref_model = getattr(reference, "model", None)
        if ref_model is not None and ref_model is not model and getattr(reference, "kind", "") == "model":
            # the frozen reference sharded like the policy; its computations run as its root's forward
            self.ref_root = self._shard(ref_model, None)
            reference.call = self.ref_root

    def call(self, fn: Callable[[], Any]) -> Any:
        return loss_through(self.root, fn)

    def infer(self, fn: Callable[[], Any]) -> Any:
        return self.root(fn)  # the root's parameters are gathered only inside its forward

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        self.root.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            self.root.set_requires_gradient_sync(True)

    def grad_norm(self, params: Sequence[torch.nn.Parameter], max_norm: float | None) -> float:
        grads = [p for p in params if p.grad is not None]
        if not grads:
            return 0.0
        total = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
        return float(_full(total))

    def full_model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return self._gather({k: v for k, v in model.state_dict().items() if k in names})

    def full_state_tensors(self, module: Any) -> dict[str, torch.Tensor] | None:
        return self._gather(dict(module.state_dict()))

    def full_final_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        return self._gather(dict(model.state_dict()))

    def _gather(self, sd: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        # one tensor at a time (each gather is a collective: every rank takes part); only rank 0 keeps them, so
        # the other ranks never hold more than one full tensor
        full: dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            t = _full(v).detach().contiguous().cpu()
            if self.is_main:
                full[k] = t
        return full if self.is_main else None

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        sd = optimizer.state_dict()
        state: dict[Any, dict[str, Any]] = {}
        for i, s in sd["state"].items():
            entry = {k: (_full(v).cpu() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
            if self.is_main:
                state[i] = entry
        return {"state": state, "param_groups": sd["param_groups"]} if self.is_main else None

    def load_model_state(self, model: Any, weights: dict[str, torch.Tensor]) -> None:
        current = model.state_dict()
        model.load_state_dict({k: _like(v, current[k]) for k, v in weights.items() if k in current}, strict=False)

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        conv = {}
        for i, s in state["state"].items():
            p = params[int(i)]
            conv[i] = {k: (_like(v, p) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in s.items()}
        optimizer.load_state_dict({"state": conv, "param_groups": state["param_groups"]})


def _full(t: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _like(full: torch.Tensor, ref: Any) -> Any:
    """``full`` laid out as ``ref``: sharded like a DTensor parameter, else as is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.dtype), ref.device_mesh, ref.placements)
    return full


def make_engine(cfg: Any, device: torch.device) -> Engine:
    """The engine the launcher and ``cfg.distributed`` ask for; forms the process group when there are several
    processes. One process: :class:`Engine` (``distributed`` other than auto is refused without a launcher)."""
    world = launched_world()
    choice = getattr(cfg, "distributed", "auto")
    if world <= 1:
        if choice not in ("auto",):
            raise ConfigError(f"--distributed {choice} needs several processes: launch with `torchrun "
                              f"--nproc-per-node N -m preftune ...` or `accelerate launch`")
        return Engine()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    if choice in ("auto", "ddp"):
        return DDPEngine(device)
    if choice == "fsdp2":
        return FSDP2Engine(device, "bf16" if cfg.dtype == "bf16" else None)
    if choice == "deepspeed":
        from .deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(device, cfg)
    raise ConfigError(f"--distributed {choice}: unknown; choose one of {', '.join(ENGINES)}")


def rank_device(device: torch.device) -> torch.device:
    """Each process its own GPU (``LOCAL_RANK``); CPU processes share the CPU."""
    if device.type == "cuda" and launched_world() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


class ShardedSource:
    """Rank ``rank``'s share of a batch source: every ``world``-th micro-batch of the one-process order, the
    others skipped (``skip()``: not collated). Position, epochs and state are the one-process source's, so a
    checkpoint resumes on any number of processes."""

    def __init__(self, base: Any, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def next(self) -> Any:
        out = None
        for r in range(self.world):
            if r == self.rank:
                out = self.base.next()
            else:
                self.base.skip()
        return out


__all__ = ["DDPEngine", "ENGINES", "Engine", "FSDP2Engine", "ShardedSource", "decoder_layers", "launched_world",
           "make_engine", "rank_device"]
