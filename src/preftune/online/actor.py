"""The generation process of ``preftune online --generation-process``: a second process that holds its own copy
of the policy, generates and scores the generation batches, and sends them to the trainer.

It is the in-process rollout source (:class:`~preftune.online.rollout.GroupSource` / ``PairSource``) driven from
afar: the same prompts, the same permutation per epoch, the same seeds per (generation batch, micro-batch), the
same reward checks -- so with ``--max-staleness 0`` its samples are token for token the in-process run's. What
differs is which weights it samples with: generation batch ``g`` (trained on at optimizer steps
``g*I ... g*I + I - 1``, ``I = --num-iterations``) is generated with the weights of version
``max(0, g*I - N)``, ``N = --max-staleness`` -- the oldest the bound allows, always, so that a run does not
depend on timing (it reproduces, and resumes to the same samples). The sampler's per-token log-probs are sent
with the samples when ``N > 0`` or ``I > 1`` (``old_token_logps``: the clipped ratio pi_theta / pi_old of GRPO,
Shao et al. 2024 eq. 3, with pi_old the policy that sampled).

Bounded staleness as NeMo-RL bounds it (NVIDIA-NeMo/RL, nemo_rl/algorithms/async_utils.py, ReplayBuffer.sample:
``min_valid_version = max(0, current_weight_version - max_age_steps)``,
commit 7d16e59e4a79257d69ff8f424e2cac12890afcb0);
there the age varies between 0 and the bound with timing, here it is the bound (deterministic).

Started by the trainer (:mod:`preftune.online.async_source`) as ``python -m preftune.online.actor DIR``, with
everything it needs in ``DIR`` (``spec.json``: the online options, the prompts, seeds; the tokenizer; later the
model's config). It joins the trainer in a private two-process gloo group over a TCPStore on a free port
(``torch.distributed.ProcessGroupGloo`` made directly: the trainer's default process group, if any, is untouched).

Messages (rank 0: the trainer, rank 1: this process):

* trainer -> generator, tag 1: ``[kind, version]`` (kind 1: weights follow, as flat buffers per dtype, tag 2;
  kind 2: stop);
* generator -> trainer, tag 3: ``[nbytes, g, m, 0]``, then tag 4: the micro-batch as JSON bytes (token ids,
  scores, records, sampler log-probs, the prompt cursor).

Every wait has the timeout ``--weight-sync-timeout``; a timeout, or a trainer that has gone, ends this process.
Errors (a reward that raised, a bad config) are written to the store as one line for the trainer to raise.
Environment hooks used only by tests: ``PREFTUNE_TEST_GENERATOR_DELAY`` (seconds to sleep before each
micro-batch) and ``PREFTUNE_TEST_GENERATOR_EXIT_AFTER`` (exit with code 9 after that many micro-batches).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

WEIGHTS_HDR, WEIGHTS_DATA, BATCH_HDR, BATCH_DATA = 1, 2, 3, 4
KIND_WEIGHTS, KIND_STOP = 1, 2
BUCKET_BYTES = 64 << 20  # weights travel in flat buffers of at most this size (one dtype each)
STARTUP_S = 600.0        # the bound on starting up (imports, loading a reward model) and on the trainer's setup


def weight_layout(entries: list[list[Any]]) -> list[tuple[str, list[tuple[str, list[int], int, int]]]]:
    """``[[name, shape, dtype], ...]`` -> buckets ``(dtype, [(name, shape, offset, numel), ...])`` of at most
    :data:`BUCKET_BYTES`, in order; both processes compute it from the same list."""
    import torch

    buckets: list[tuple[str, list[tuple[str, list[int], int, int]]]] = []
    size = 0
    for name, shape, dtype in entries:
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        if not buckets or buckets[-1][0] != dtype or (size + nbytes > BUCKET_BYTES and buckets[-1][1]):
            buckets.append((dtype, []))
            size = 0
        off = sum(n for *_, n in buckets[-1][1])
        buckets[-1][1].append((name, list(shape), off, numel))
        size += nbytes
    return buckets


def make_group(store: Any, rank: int, timeout: float) -> Any:
    """The private two-process gloo group over ``store`` (loopback: both processes are on this machine)."""
    import torch.distributed as dist

    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=timeout)
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    return dist.ProcessGroupGloo(dist.PrefixStore("pg", store), rank, 2, opts)


def _watch_parent(pid: int, folder: Path) -> None:
    """Exit when the trainer is gone (killed: no message would ever tell us), removing the folder it left."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != pid:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class Generator:
    """The generation loop: receive the weights a generation batch needs, make it with the rollout source's own
    code, send its micro-batches."""

    def __init__(self, spec: dict[str, Any], folder: Path, store: Any):
        import torch

        from ..models.loading import load_tokenizer
        from .config import OnlineConfig
        from .prompts import Prompt

        self.spec, self.folder, self.store = spec, folder, store
        torch.set_num_threads(int(spec["threads"]))
        self.timeout = float(spec["timeout"])
        self.staleness, self.iterations = int(spec["staleness"]), int(spec["num_iterations"])
        self.grad_accum = int(spec["grad_accum"])
        self.online = OnlineConfig(**{**spec["online"], "prompts": ""})
        self.tok = load_tokenizer(str(folder / "tokenizer"))
        self.prompts = [Prompt(p["text"], p["ids"], p["row"], p["columns"], p["raw"]) for p in spec["prompts"]]
        self.delay = float(os.environ.get("PREFTUNE_TEST_GENERATOR_DELAY", "0") or 0)
        self.exit_after = int(os.environ.get("PREFTUNE_TEST_GENERATOR_EXIT_AFTER", "0") or 0)
        self.sent_count = 0

    def build(self) -> None:
        """The reward and the policy's architecture, from the trainer's description (sent once it has bound its
        model); the policy's weights come with the first message."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

        from .rewards import build_reward
        from .rollout import make_source

        m = json.loads(self.store.get("model").decode())
        device = torch.device(m["device"])
        r = self.spec["reward"]
        task = _task(r["task"], r["task_module"]) if r["task"] else None
        reward = None
        if r["reward_fn"] or r["reward_model"] or task is not None:
            reward = build_reward(reward_fn=r["reward_fn"], reward_model=r["reward_model"], task=task,
                                  weights=r["weights"] or None, max_length=m["reward_max_length"], device=device,
                                  dtype=m["reward_dtype"])
        s = self.spec
        self.source = make_source(self.online, self.prompts, reward, tokenizer=self.tok, layout=s["layout"],
                                  batch_prompts=s["batch_prompts"], grad_accum=self.grad_accum, seed=s["seed"],
                                  chunk_size=s["chunk_size"], log_dir=None, name=s["name"])
        d = self.folder / "model"
        config = AutoConfig.from_pretrained(str(d))
        kw = {"attn_implementation": m["attn"]} if m.get("attn") else {}
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, m["dtype"]), **kw)
        if (d / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(str(d))
        self.model = model.to(device).eval()
        self.layout = weight_layout(m["weights"])
        self.targets = self.model.state_dict()
        missing = [n for n, *_ in m["weights"] if n not in self.targets]
        if missing:
            raise RuntimeError(f"the trainer's weights {missing[:3]} are not in the generation process's model")
        self.source.bind(model=self.model, device=device)

    def receive_weights(self, pg: Any, timeout: float, need: int) -> int:
        """The next message of the trainer: the weights' version, or -1 (stop)."""
        import torch

        hdr = torch.zeros(2, dtype=torch.int64)
        _wait(pg.recv([hdr], 0, WEIGHTS_HDR), timeout, f"the weights of version {need} from the trainer")
        kind, version = int(hdr[0]), int(hdr[1])
        if kind == KIND_STOP:
            return -1
        with torch.no_grad():
            for dtype, items in self.layout:
                dt = getattr(torch, dtype)
                raw = torch.empty(sum(n for *_, n in items) * torch.empty((), dtype=dt).element_size(),
                                  dtype=torch.uint8)
                _wait(pg.recv([raw], 0, WEIGHTS_DATA), self.timeout, f"the weights of version {version}")
                flat = raw.view(dt)
                for name, shape, off, numel in items:
                    self.targets[name].copy_(flat[off:off + numel].view(shape))
        return version

    def run(self, pg: Any) -> None:
        import torch

        from .rollout import _entry_state

        start = json.loads(self.store.get("start").decode())
        src = self.source
        src.epoch, src.cursor, src.generation = int(start["epoch"]), int(start["cursor"]), int(start["generation"])
        src.skipped = {str(k): int(v) for k, v in start.get("skipped", {}).items()}
        version, first = -1, True
        pending: list[tuple[int, Any, Any]] = []  # (generation batch, work, buffer) of sends not known complete
        while True:
            g = src.generation
            need = max(0, g * self.iterations - self.staleness)
            while version < need:
                version = self.receive_weights(pg, STARTUP_S if first else self.timeout, need)
                first = False
                if version < 0:
                    return
                # the trainer sends version v after step v, so it has received every batch trained before it
                done = (version - 1) // self.iterations
                keep = []
                for p in pending:  # completed: free their buffers
                    if p[0] > done:
                        keep.append(p)
                    else:
                        _wait(p[1], self.timeout, f"the trainer to take generation batch {p[0]}")
                pending = keep
            src.served = g * self.iterations * self.grad_accum  # the step numbers of reward messages, as in-process
            if self.delay:
                time.sleep(self.delay)
            src._fill()
            src._pending.clear()
            for e in src.buffer:
                if e.old_token_logps is None and (self.staleness > 0 or self.iterations > 1):
                    src._old_logps(e)  # the sampler's log-probs: the trainer's pi_old
                for rec in e.records:
                    rec["policy_version"] = version
            for m, e in enumerate(src.buffer):
                body = {"entry": {**_entry_state(e), "records": e.records, "seq_records": e.seq_records},
                        "epoch": src.epoch, "cursor": src.cursor, "skipped": dict(src.skipped), "version": version}
                data = torch.frombuffer(bytearray(json.dumps(body).encode()), dtype=torch.uint8)
                hdr = torch.tensor([data.numel(), g, m, 0], dtype=torch.int64)
                pending.append((g, pg.send([hdr], 0, BATCH_HDR), hdr))
                pending.append((g, pg.send([data], 0, BATCH_DATA), data))
                self.sent_count += 1
                if self.exit_after and self.sent_count >= self.exit_after:
                    time.sleep(0.5)  # let the last message leave before "crashing"
                    os._exit(9)


class Timeout(RuntimeError):
    pass


def _wait(work: Any, timeout: float, what: str) -> bool:
    try:
        work.wait(datetime.timedelta(seconds=timeout))
    except RuntimeError as e:
        if "imed out" in str(e) or "timeout" in str(e).lower():
            raise Timeout(f"waited {timeout:g} s for {what}") from None
        raise
    return True


def _task(name: str, module: str | None) -> Any:
    """An arena task by name; one registered at run time is found by importing the module that defines it."""
    from ..arena.tasks import TASKS, get_task

    if name not in TASKS and module and module != "__main__":
        import importlib

        importlib.import_module(module)
    return get_task(name)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    _watch_parent(int(spec["parent_pid"]), folder)
    sys.path[:0] = [p for p in spec.get("sys_path", []) if p not in sys.path]
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", int(spec["port"]), 2, False, timeout=datetime.timedelta(seconds=STARTUP_S))
    try:
        gen = Generator(spec, folder, store)
        store.set("ready", "1")
        store.wait(["model"], datetime.timedelta(seconds=STARTUP_S))
        gen.build()
        pg = make_group(store, 1, STARTUP_S)
        store.wait(["start"], datetime.timedelta(seconds=STARTUP_S))
        gen.run(pg)
    except BaseException as e:  # the trainer raises it: one line, with the exception's type
        try:
            store.set("error", json.dumps({"type": type(e).__name__, "message": _one_line(e)}))
        except Exception:  # the trainer is gone already
            pass
        sys.stderr.write(f"preftune generation process: {type(e).__name__}: {_one_line(e)}\n")
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)  # no teardown of the group: the trainer may have gone first


if __name__ == "__main__":
    main()
