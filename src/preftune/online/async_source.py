"""The trainer's side of ``preftune online --generation-process``: a rollout source whose generation batches are
made by a separate process (:mod:`preftune.online.actor`) and whose policy weights go there after each optimizer
step.

:func:`make_async_source` is :func:`~preftune.online.rollout.make_source` with the generation moved out: the
returned source is a :class:`~preftune.online.rollout.GroupSource` (or ``PairSource``) whose ``_fill`` receives
the generation batch instead of generating it, so serving, importance-ratio reuse (``num_iterations``), the
completions log and checkpoints are the in-process source's. What it adds:

* it starts the generation process itself (``python -m preftune.online.actor``; no launcher) and joins it in a
  private two-process gloo group (see the actor's docstring for the messages);
* after optimizer step ``v`` it sends the weights of version ``v`` when a generation batch needs them:
  generation batch ``g`` is sampled with version ``max(0, g*I - N)`` (``N = --max-staleness``, ``I =
  --num-iterations``), so with ``N > 0`` the generation process samples batch ``g`` while the trainer trains on
  batch ``g - 1``, and the samples it trains on are exactly ``N`` steps old (the first ``N`` steps: fewer);
  ``policy_version`` in ``completions.jsonl`` is the version that sampled;
* with ``N > 0`` the sampler's per-token log-probs come with the samples as ``old_token_logps``, so GRPO's
  clipped ratio pi_theta / pi_old (Shao et al. 2024 eq. 3) has the sampler as pi_old -- the correction
  ``num_iterations > 1`` uses in-process. Objectives without that ratio (rloo, reinforce) and pair objectives
  are on-policy here: ``N > 0`` is refused for them;
* every wait has the timeout ``--weight-sync-timeout``; a timeout, or a generation process that died, ends the
  run with one line naming what did not answer, after the generation process is stopped;
* checkpoints: the generation batches already sampled with weights older than the checkpoint's (``N > 0``) are
  received and saved with it, with the generation process's prompt cursor, so ``--resume`` continues with the
  same samples; at ``N = 0`` the state is the in-process source's (a run may resume across the two).

The generation process stops when the run ends (the final checkpoint), when this source is garbage-collected or
the interpreter exits, and by itself when the trainer's process is gone or a wait times out.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError, DataError, PreftuneError
from .actor import (BATCH_DATA, BATCH_HDR, KIND_STOP, KIND_WEIGHTS, STARTUP_S, WEIGHTS_DATA, WEIGHTS_HDR, make_group,
                    weight_layout)
from .config import OnlineConfig
from .prompts import Prompt
from .rewards import CombinedReward, RewardError
from .rollout import Entry, GroupSource, PairSource, RolloutSource, _entry_from_state, _entry_state


class GenerationProcessError(PreftuneError):
    """The generation process did not answer in time, died, or failed."""


_ERRORS = {"RewardError": RewardError, "ConfigError": ConfigError, "DataError": DataError}


class _Child:
    """The generation process, its store, its group and the folder it reads."""

    def __init__(self, spec: dict[str, Any], tokenizer: Any, timeout: float):
        import torch.distributed as dist

        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="preftune-generator-"))
        tokenizer.save_pretrained(str(self.dir / "tokenizer"))
        self.store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=datetime.timedelta(seconds=STARTUP_S),
                                   wait_for_workers=False)
        spec = {**spec, "port": self.store.port, "parent_pid": os.getpid(), "sys_path": list(sys.path)}
        (self.dir / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        self.log = open(self.dir / "log.txt", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "preftune.online.actor", str(self.dir)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pg: Any = None
        self._pg_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.sends: list[tuple[Any, Any]] = []
        self.closed = False

    def connect_async(self, model_info: dict[str, Any]) -> None:
        """Hand the model's description over and build the group in the background (the child builds its model
        meanwhile; the trainer goes on setting up)."""
        self.store.set("model", json.dumps(model_info))

        def build() -> None:
            try:
                self.pg = make_group(self.store, 0, STARTUP_S)
            except BaseException as e:  # reported by wait_connected
                self._pg_error = e

        self._thread = threading.Thread(target=build, daemon=True)
        self._thread.start()

    def child_error(self) -> tuple[type, str] | None:
        try:
            if self.store.check(["error"]):
                d = json.loads(self.store.get("error").decode())
                return _ERRORS.get(d["type"], GenerationProcessError), d["message"]
        except Exception:
            pass
        return None

    def log_tail(self) -> str:
        try:
            lines = [x for x in (self.dir / "log.txt").read_text(errors="replace").splitlines()
                     if x.startswith("preftune generation process:")]  # its own last word, not library warnings
            return lines[-1].strip()[:300] if lines else ""
        except OSError:
            return ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pg is not None and self.proc.poll() is None:
            try:  # a polite stop; the process may be busy generating ahead, so it is not waited for long
                self.pg.send([torch.tensor([KIND_STOP, -1], dtype=torch.int64)], 1, WEIGHTS_HDR)
            except Exception:
                pass
        for wait, then in ((2.0, "terminate"), (5.0, "kill"), (None, None)):
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                getattr(self.proc, then)()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Remote(RolloutSource):
    """What the group and pair sources share when a separate process generates (before them in the MRO)."""

    def _init_remote(self, spec: dict[str, Any], staleness: int, timeout: float) -> None:
        self.staleness, self.timeout = staleness, timeout
        self.iterations = self.online.num_iterations
        self._spec = spec
        self._child = _Child(spec, self.tok, timeout)
        self._finalizer = weakref.finalize(self, self._child.close)
        self._connected = False
        self._sent = -1                    # the last weights version sent
        self._first_need = 0               # the version the generation process's first batch needs
        self._next_recv = 0                # the next generation batch to receive
        self._ahead: list[dict[str, Any]] = []  # received, not yet in use: {"entries", "epoch", "cursor", ...}
        self._child_start: dict[str, Any] = {"generation": 0, "epoch": 0, "cursor": 0, "skipped": {}}
        self._total: int | None = None
        self._wait_s = 0.0
        self._layout: Any = None
        self._names: list[str] = []

    # ------------------------------------------------------------------ the loop's interface
    def bind(self, *, model: Any, device: torch.device, objective: Any = None, engine: Any = None,
             config: Any = None, **kw: Any) -> None:
        from ..models.loading import is_peft, unwrap

        try:
            if is_peft(model):
                raise ConfigError("--generation-process sends the full policy weights after each step; a LoRA policy "
                                  "(--lora-r) is not supported: drop --lora-r or --generation-process")
            if engine is not None and getattr(engine, "world", 1) > 1:
                raise ConfigError("--generation-process runs with one training process; drop --distributed/torchrun "
                                  "or --generation-process")
            if getattr(objective, "rollout_extras", None) is not None:
                raise ConfigError(f"--generation-process: objective '{objective.name}' needs the trainer's own "
                                  "modules at sampling time (its value head); run it in-process")
            if self.staleness > 0 and not getattr(objective, "reuses_samples", False):
                raise ConfigError(f"--max-staleness {self.staleness}: objective '{getattr(objective, 'name', '?')}' "
                                  "is on-policy (no importance ratio against the sampler); use --max-staleness 0, or "
                                  "grpo/dapo/bnpo/dr_grpo")
        except ConfigError:
            self.close()
            raise
        super().bind(model=model, device=device, objective=objective, engine=engine, config=config, **kw)
        if config is not None:
            per_epoch = getattr(self, "batches_per_epoch", None)
            self._total = config.max_steps or max(1, math.ceil(config.epochs * max(1, (per_epoch or 1)
                                                                                   // config.grad_accum)))
        base = unwrap(model)
        sd = base.state_dict()
        seen: set[tuple[int, str, tuple[int, ...]]] = set()
        self._names = []
        for name, t in sd.items():  # tied weights (embeddings = output layer) travel once
            key = (t.data_ptr(), str(t.dtype), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                self._names.append(name)
        entries = [[n, list(sd[n].shape), str(sd[n].dtype).replace("torch.", "")] for n in self._names]
        self._layout = weight_layout(entries)
        folder = self._child.dir / "model"
        base.config.save_pretrained(str(folder))
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(str(folder))
        floats = [str(sd[n].dtype) for n in self._names if sd[n].is_floating_point()]
        r = self._spec["reward"]
        self._child.connect_async({
            "weights": entries, "attn": getattr(base.config, "_attn_implementation", None),
            "dtype": (floats[0] if floats else "torch.float32").replace("torch.", ""),
            "device": str(device), "reward_max_length": (config.max_length or 1024) if config is not None else 1024,
            "reward_dtype": config.dtype if config is not None else r["dtype"]})

    def next(self) -> Any:
        self._send_due()
        return super().next()

    def flush(self, step: int) -> None:
        super().flush(step)
        if not self._child.closed and self.model is not None:
            self._send_due()  # the generation process may start on the next batch while the step's callbacks run

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        done = self._total is not None and self.served // max(1, self.grad_accum) >= self._total
        if not self._child.closed and not done:
            self._drain()
        state["ahead"] = [{**b, "entries": [_dump(e) for e in b["entries"]]} for b in self._ahead]
        state["child"] = self._child_next_state()
        state["max_staleness"] = self.staleness
        if done:
            self.close()  # the final checkpoint: nothing more to generate
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if int(state.get("max_staleness", 0)) != self.staleness:
            self.close()
            raise ConfigError(f"the checkpoint was made with --max-staleness {state.get('max_staleness', 0)}, this "
                              f"run has {self.staleness}: the samples would differ")
        self._ahead = [{**b, "entries": [_undump(e, self.kind_name) for e in b["entries"]]}
                       for b in state.get("ahead", [])]
        child = state.get("child") or {"generation": self.generation, "epoch": self.epoch,
                                       "cursor": self.cursor, "skipped": dict(self.skipped)}
        self._child_start = dict(child)
        self._next_recv = int(child["generation"])

    def run_settings(self) -> dict[str, Any]:
        d = super().run_settings()
        if self.staleness:  # at 0 the samples are the in-process run's: the same run
            d["online"] = {**d["online"], "max_staleness": self.staleness}
        return d

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generation_process": {
            "pid": self._child.proc.pid, "max_staleness": self.staleness, "weight_sync_timeout": self.timeout}}

    def close(self) -> None:
        """Stop the generation process (idempotent)."""
        self._finalizer()

    # ------------------------------------------------------------------ generation batches from the other process
    def _need(self, g: int) -> int:
        return max(0, g * self.iterations - self.staleness)

    def _needed(self, v: int) -> bool:
        return v == 0 or (v + self.staleness) % self.iterations == 0

    def _fill(self) -> None:
        self._send_due()
        t0 = time.perf_counter()
        batch = self._ahead.pop(0) if self._ahead else self._receive()
        self._wait_s = time.perf_counter() - t0
        version = self.served // max(1, self.grad_accum)
        for e in batch["entries"]:
            e.metrics["timing/wait_for_generation_s"] = self._wait_s
            e.metrics["policy_lag"] = float(version - batch["version"])
            self._pending.extend(e.records)
        self.buffer = batch["entries"]
        self.buffer_pos = 0
        self.generation += 1
        self.epoch, self.cursor = int(batch["epoch"]), int(batch["cursor"])
        self.skipped = {str(k): int(v) for k, v in batch["skipped"].items()}

    def _child_next_state(self) -> dict[str, Any]:
        """Where the generation process continues after a resume: after the last batch received."""
        if self._next_recv == int(self._child_start["generation"]):
            return dict(self._child_start)
        b = self._last
        return {"generation": self._next_recv, "epoch": b["epoch"], "cursor": b["cursor"], "skipped": b["skipped"]}

    def _drain(self) -> None:
        """Receive the batches sampled with weights older than the current ones: a resumed run cannot remake them."""
        s = self.served // max(1, self.grad_accum)
        while self._need(self._next_recv) < s:
            self._ahead.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        g = self._next_recv
        self._ensure_connected()
        entries: list[Entry] = []
        body: dict[str, Any] = {}
        for m in range(self.grad_accum):
            what = f"micro-batch {m} of generation batch {g}"
            hdr = torch.zeros(4, dtype=torch.int64)
            self._wait(lambda: self._child.pg.recv([hdr], 1, BATCH_HDR), what)
            if (int(hdr[1]), int(hdr[2])) != (g, m):
                self._fail(what, RuntimeError(f"got micro-batch {int(hdr[2])} of generation batch {int(hdr[1])}"))
            data = torch.empty(int(hdr[0]), dtype=torch.uint8)
            self._wait(lambda: self._child.pg.recv([data], 1, BATCH_DATA), what)
            body = json.loads(bytes(data.numpy()).decode())
            entries.append(_undump(body["entry"], self.kind_name))
        self._next_recv += 1
        self._last = {"entries": entries, "epoch": body["epoch"], "cursor": body["cursor"],
                      "skipped": body["skipped"], "version": body["version"]}
        return self._last

    def _send_due(self) -> None:
        s = self.served // max(1, self.grad_accum)
        # the batch that version s is for, g = (s + N) / I, is trained at step g*I = s + N: none past the last step
        useless = self._total is not None and s > 0 and s + self.staleness >= self._total
        if s > self._sent and s >= self._first_need and self._needed(s) and not useless and not self._child.closed:
            self._ensure_connected()
            self._send_weights(s)

    def _send_weights(self, version: int) -> None:
        from ..models.loading import unwrap

        child = self._child
        for work, _ in child.sends:  # the previous version has arrived before its buffers go
            self._wait(lambda w=work: w, f"the generation process to take the weights of version {self._sent}")
        sd = unwrap(self.model).state_dict()
        hdr = torch.tensor([KIND_WEIGHTS, version], dtype=torch.int64)
        what = f"the generation process to take the weights of version {version}"
        sends = [(self._call(lambda: child.pg.send([hdr], 1, WEIGHTS_HDR), what), hdr)]
        with torch.no_grad():
            for _, items in self._layout:
                # as raw bytes: the transport need not know bf16, fp8, ...
                flat = torch.cat([sd[name].detach().reshape(-1).cpu() for name, *_ in items]).view(torch.uint8)
                sends.append((self._call(lambda f=flat: child.pg.send([f], 1, WEIGHTS_DATA), what), flat))
        child.sends = sends
        self._sent = version

    def _ensure_connected(self) -> None:
        if self._connected:
            return
        child = self._child
        if child.closed:
            raise GenerationProcessError("the generation process was stopped already")
        start = self._child_start
        self._first_need = self._need(int(start["generation"]))
        child.store.set("start", json.dumps(start))
        deadline = time.monotonic() + max(STARTUP_S, self.timeout)
        while child._thread is not None and child._thread.is_alive():
            child._thread.join(0.2)
            if child.proc.poll() is not None or time.monotonic() > deadline:
                self._fail("the generation process to start", RuntimeError("timed out" if child.proc.poll() is None
                                                                            else "exited"))
        if child.pg is None:
            self._fail("the generation process to start", child._pg_error or RuntimeError("no group"))
        self._connected = True

    def _call(self, post: Any, what: str) -> Any:
        try:
            return post()
        except RuntimeError as e:
            self._fail(what, e)

    def _wait(self, post: Any, what: str) -> None:
        work = self._call(post, what)
        try:
            work.wait(datetime.timedelta(seconds=self.timeout))
        except RuntimeError as e:
            self._fail(what, e)

    def _fail(self, what: str, err: BaseException) -> None:
        """Stop the generation process and raise one line: what did not answer, and why."""
        child = self._child
        timed_out = "imed out" in str(err) or "timeout" in str(err).lower()
        try:
            code = child.proc.wait(timeout=0.1 if timed_out else 3.0)
        except subprocess.TimeoutExpired:
            code = None
        found = child.child_error()
        pid = child.proc.pid
        tail = child.log_tail()
        self.close()
        if found is not None:
            cls, msg = found
            raise cls(msg if cls is not GenerationProcessError else f"the generation process (pid {pid}) failed: {msg}")
        if code is not None:
            raise GenerationProcessError(f"the generation process (pid {pid}) exited with code {code} while the "
                                         f"trainer waited for {what}" + (f"; its last words: {tail}" if tail else ""))
        if timed_out:
            raise GenerationProcessError(f"--weight-sync-timeout {self.timeout:g}: the generation process (pid {pid}) "
                                         f"did not answer: no {what} within {self.timeout:g} s (it was stopped; raise "
                                         "--weight-sync-timeout if a generation batch takes that long)")
        why = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise GenerationProcessError(f"the exchange with the generation process (pid {pid}) failed while the trainer "
                                     f"waited for {what}: {why}")


class AsyncGroupSource(_Remote, GroupSource):
    """:class:`GroupSource` (grpo, rloo, reinforce) with generation in a separate process."""


class AsyncPairSource(_Remote, PairSource):
    """:class:`PairSource` (online_dpo) with generation in a separate process (``--max-staleness 0``)."""


def _dump(e: Entry) -> dict[str, Any]:
    return {**_entry_state(e), "records": e.records, "seq_records": e.seq_records}


def _undump(d: dict[str, Any], kind: str) -> Entry:
    e = _entry_from_state(d, kind)
    e.records, e.seq_records, e.uses = list(d.get("records", [])), list(d.get("seq_records", [])), int(d.get("uses", 0))
    return e


def make_async_source(online: OnlineConfig, prompts: Sequence[Prompt], reward: CombinedReward | None, *,
                      tokenizer: Any, **kw: Any) -> RolloutSource:
    """:func:`~preftune.online.rollout.make_source` with generation and scoring in a separate process."""
    staleness = int(getattr(online, "max_staleness", 0))
    timeout = float(getattr(online, "weight_sync_timeout", 600.0))
    if staleness < 0:
        raise ConfigError(f"--max-staleness must be >= 0, got {staleness}")
    if not timeout > 0:
        raise ConfigError(f"--weight-sync-timeout must be > 0 seconds, got {timeout}")
    src = online.algorithm.source
    if src not in ("group", "pair"):
        raise ConfigError(f"--generation-process: {online.algo} runs in rounds; it takes grpo, rloo, reinforce or "
                          "online_dpo")
    if src == "pair" and staleness:
        raise ConfigError(f"--max-staleness {staleness}: {online.algo} trains on pairs of the current policy here; "
                          "use --max-staleness 0")
    task_obj = None
    if online.task:
        from ..arena.tasks import get_task

        task_obj = get_task(online.task)
    named = len(online.reward_fn) + len(online.reward_model) + (1 if online.task else 0)
    if reward is not None and len(reward.sources) != named:
        raise ConfigError("--generation-process rebuilds the reward in its own process from --reward-fn files, "
                          "--reward-model directories and --task; a Python reward function passed in memory cannot "
                          "go there: put it in a file and pass --reward-fn FILE.py:FUNCTION")
    rows = []
    for p in prompts:
        row = {"text": p.text, "ids": list(p.ids), "row": p.row, "columns": p.columns, "raw": p.raw}
        try:
            json.dumps(row)
        except (TypeError, ValueError):
            raise ConfigError(f"--generation-process: prompt row {p.row} has a column that is not plain data "
                              "(JSON); it cannot be sent to the generation process") from None
        rows.append(row)
    spec = {"online": {**online.to_dict(), "prompts": ""}, "prompts": rows, "threads": torch.get_num_threads(),
            "timeout": timeout, "staleness": staleness, "num_iterations": online.num_iterations,
            "grad_accum": kw.get("grad_accum", 1), "batch_prompts": kw["batch_prompts"], "seed": kw.get("seed", 0),
            "layout": kw.get("layout", "auto"), "chunk_size": kw.get("chunk_size", 1024),
            "name": kw.get("name", "prompts"),
            "reward": {"reward_fn": list(online.reward_fn), "reward_model": list(online.reward_model),
                       "task": online.task, "task_module": type(task_obj).__module__ if task_obj else None,
                       "weights": list(online.reward_weights), "dtype": "fp32"}}
    cls = AsyncGroupSource if src == "group" else AsyncPairSource
    source = cls(prompts, reward, online, tokenizer=tokenizer, **kw)
    source._init_remote(spec, staleness, timeout)
    return source


__all__ = ["AsyncGroupSource", "AsyncPairSource", "GenerationProcessError", "make_async_source"]
