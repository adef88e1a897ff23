"""Rollout sources: the batch sources of online training (generate -> score -> group or pair).

A rollout source is a :class:`~preftune.train.sources.BatchSource`: the loop asks it for micro-batches exactly as
it asks a fixed dataset, and the source makes them from the live policy (handed to it by ``bind`` once the loop
has built the model):

1. the next prompts -- a permutation of the prompt set per epoch, deterministic in (seed, epoch);
2. K samples per prompt with :func:`preftune.models.generate.generate` (transformers ``generate``, KV cache),
   seeded by (run seed, generation index, micro-batch): a run reproduces, and resumes to the same samples;
3. scores from the reward source (checked: one finite number or None per completion);
4. items of the objective's data kind: :class:`GroupSource` -- the K scored samples of each prompt (``list``
   kind, for GRPO, RLOO, REINFORCE); :class:`PairSource` -- the best and the worst sample (or the pair a
   preference function judges) of each prompt (``pair`` kind, for online DPO and any pair objective).

A generation batch is ``grad_accum`` micro-batches; with ``num_iterations > 1`` it is trained on that many times
(the sampler's per-token log-probs go to ``extras['old_token_logps']`` for the importance ratios) and kept in the
checkpoint, so a resumed run continues on the same samples.

Every completion is written to ``completions.jsonl`` in the run directory: step, policy version (optimizer steps
taken when it was sampled), prompt, completion, reward and each source's, whether it finished, and the sampler's
log-prob of the completion (temperature 1).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.types import TokenizedPair, TokenizedRanked
from ..errors import ConfigError
from ..kinds import get_kind
from ..models.generate import Generation, generate
from ..train.sources import BatchSource, SourceBatch
from .config import OnlineConfig
from .prompts import Prompt, columns_for
from .rewards import CombinedReward, checked_scores, load_reward_fn

LOG_NAME = "completions.jsonl"


@dataclass
class Entry:
    """One generated micro-batch: its items, the per-sequence extras to attach after collating, its metrics,
    and its completion-log records with, per sequence of the collated batch, the record it came from."""

    items: list[Any]
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    seq_records: list[int]
    old_token_logps: torch.Tensor | None = None
    uses: int = 0
    old_extras: dict[str, torch.Tensor] = field(default_factory=dict)


class RolloutSource(BatchSource):
    """What group and pair sources share: prompts, generation, scoring, buffering, the completions log."""

    kind_name = "list"
    command = "online"  # what resumes the run: preftune online --config OUTPUT/config.yaml --resume
    # every micro-batch takes batch_prompts prompts: over several processes each skips the others' prompts and
    # the samples are the one-process run's; a source that draws again on ties (pairs) gives each process
    # every world-th prompt of the epoch's permutation instead
    exact_shards = True
    rank, world = 0, 1

    def __init__(self, prompts: Sequence[Prompt], reward: CombinedReward | None, online: OnlineConfig, *,
                 tokenizer: Any, layout: str = "auto", batch_prompts: int, grad_accum: int = 1, seed: int = 0,
                 chunk_size: int = 1024, log_dir: str | Path | None = None, name: str = "prompts"):
        if batch_prompts < 1:
            raise ConfigError(f"a micro-batch must hold at least one prompt, got {batch_prompts}")
        self.prompts, self.reward, self.online, self.tok = list(prompts), reward, online, tokenizer
        self.kind = get_kind(self.kind_name)
        self.collate = self.kind.collator(layout, tokenizer.pad_token_id)
        self.batch_prompts, self.grad_accum, self.seed, self.chunk_size = batch_prompts, grad_accum, seed, chunk_size
        self.name = name
        self.preference = load_reward_fn(online.preference_fn).fn if online.preference_fn else None
        self.model: Any = None
        self.objective: Any = None
        self.infer: Any = lambda fn: fn()
        self._order: tuple[int, list[int]] | None = None  # (epoch, its prompt permutation)
        self.device = torch.device("cpu")
        self.epoch, self.cursor, self.generation = 0, 0, 0
        self.buffer: list[Entry] = []
        self.buffer_pos = 0
        self.served = 0
        self.skipped: dict[str, int] = {}
        self.log_path = Path(log_dir) / LOG_NAME if (log_dir is not None and online.log_completions) else None
        self._log_started = False
        self._pending: list[dict[str, Any]] = []
        self._current: Entry | None = None

    # ------------------------------------------------------------------ the loop's interface
    def bind(self, *, model: Any, device: torch.device, objective: Any = None, engine: Any = None, **_: Any) -> None:
        """The live policy and the objective (the loop calls this once both are built); ``engine``: how to run the
        policy outside training (under FSDP2 its sharded root's forward)."""
        self.model, self.device, self.objective = model, device, objective
        self.infer = engine.infer if engine is not None else (lambda fn: fn())
        if engine is not None and engine.world > 1 and not self.exact_shards and engine.name != "ddp":
            # each process draws again on ties as often as its own samples need: with a sharded model every
            # generate is a collective, and the processes would wait on each other forever
            raise ConfigError(f"--algo {self.online.algo} draws again on tied pairs, a number of generate calls "
                              f"that differs between processes; under --distributed {engine.name} that is a "
                              "collective each time: use --distributed ddp")

    def shard(self, rank: int, world: int) -> None:
        """Process ``rank`` of ``world`` makes micro-batches ``rank * grad_accum ... (rank + 1) * grad_accum - 1``
        of each generation batch of ``world * grad_accum``, seeded as the one-process run seeds them."""
        self.rank, self.world, self._order = rank, world, None

    def next(self) -> SourceBatch:
        if self.model is None:
            raise RuntimeError("a rollout source must be bound to the policy before use (train() does it)")
        uses = len(self.buffer) * self.online.num_iterations
        if self.buffer_pos >= uses:
            self._fill()
        entry = self.buffer[self.buffer_pos % len(self.buffer)]
        self.buffer_pos += 1
        self.served += 1
        batch = self.collate(entry.items)
        if entry.old_token_logps is not None:
            batch.extras["old_token_logps"] = entry.old_token_logps
        batch.extras.update(entry.old_extras)
        entry.uses += 1
        self._current = entry if entry.uses == 1 else None
        metrics = dict(entry.metrics)
        if self.skipped:
            metrics["skipped/bad_reward"] = float(sum(self.skipped.values()))
        return SourceBatch(batch, entry.items, metrics)

    def note_logps(self, sums: torch.Tensor) -> None:
        """The training forward's per-sequence log-probs of the batch just served: on its first use, the
        policy that sampled it, so they are the sampler's log-probs for the completions log."""
        entry = self._current
        if entry is None or entry.old_token_logps is not None:
            return
        vals = sums.detach().float().cpu().tolist()
        for s, r in enumerate(entry.seq_records):
            if r >= 0 and s < len(vals):
                entry.records[r]["logprob"] = vals[s]
        self._current = None

    def flush(self, step: int) -> None:
        """Append the records of completions trained on so far to ``completions.jsonl`` (one line each)."""
        if self.world > 1:  # rank 0 writes every process's completions, in micro-batch order
            from ..train.distributed import gather_to_main

            parts = gather_to_main(self._pending)
            self._pending = [r for part in parts for r in part] if self.rank == 0 else []
            if self.rank != 0:
                return
        if self.log_path is None:
            self._pending.clear()
            return
        if not self._log_started:  # a fresh run starts the log anew; a resumed one was truncated already
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")
            self._log_started = True
        if not self._pending:
            return
        with self.log_path.open("a", encoding="utf-8") as f:
            for rec in self._pending:
                f.write(json.dumps({"step": step, **rec}, ensure_ascii=False) + "\n")
        self._pending.clear()

    def state_dict(self) -> dict[str, Any]:
        """The position (``served`` counted over all processes, so that a checkpoint resumes on another number of
        them) and a generation batch still in use -- every process's part, gathered (a collective)."""
        state: dict[str, Any] = {"epoch": self.epoch, "cursor": self.cursor, "generation": self.generation,
                                 "served": self.served * self.world, "buffer_pos": self.buffer_pos,
                                 "skipped": dict(self.skipped), "world": self.world,
                                 "layout": getattr(self.collate, "layout", None)}
        in_use = self.buffer_pos < len(self.buffer) * self.online.num_iterations  # a generation batch still in use
        if self.world > 1:
            from ..train.distributed import gather_to_main

            parts = gather_to_main([_entry_state(e) for e in self.buffer] if in_use else [])
            if any(parts):
                state["buffers"] = parts
        elif in_use:
            state["buffer"] = [_entry_state(e) for e in self.buffer]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_world = int(state.get("world", 1))
        if saved_world != self.world and (not self.exact_shards or "buffers" in state or
                                          (saved_world == 1 and state.get("buffer"))):
            why = ("its processes took every world-th prompt" if not self.exact_shards
                   else "it stopped inside a generation batch that is trained on again (--num-iterations)")
            raise ConfigError(f"this online run was checkpointed on {saved_world} process(es) and {why}: resume it "
                              f"on {saved_world}, or from a checkpoint at the end of a generation batch")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.generation = int(state["generation"])
        self.served = int(state["served"]) // self.world
        self.skipped = {str(k): int(v) for k, v in state.get("skipped", {}).items()}
        entries = state["buffers"][self.rank] if "buffers" in state else state.get("buffer", [])
        self.buffer = [_entry_from_state(e, self.kind_name) for e in entries]
        # per-token values kept from generation time are in the layout they were collated in: checkpoints from before
        # lists had block layouts hold them padded
        saved = state.get("layout") or ("padded" if self.kind_name == "list" else None)
        if saved is not None and saved != getattr(self.collate, "layout", saved) and saved in self.kind.collators:
            for e in self.buffer:
                _relayout(e, self.kind.collators[saved](e.items, self.collate.pad_id), self.collate(e.items))
        self.buffer_pos = int(state["buffer_pos"]) if self.buffer else 0
        self._truncate_log(self.served // max(1, self.grad_accum))

    def progress(self) -> float:
        return round(self.epoch + self.cursor / max(1, len(self.prompts)), 4)

    # settings that make a different run: resuming with another sampler, reward or prompt set is refused
    IDENTITY = ("algo", "prompts", "prompt_column", "task", "task_prompts", "reward_fn", "reward_model",
                "reward_weights", "preference_fn", "num_generations", "max_new_tokens", "temperature", "top_p",
                "top_k", "num_iterations", "generation_batch_size")

    def run_settings(self) -> dict[str, Any]:
        d = self.online.to_dict()
        return {"online": {k: (self.online.k if k == "num_generations" else d[k]) for k in self.IDENTITY},
                "prompt_count": len(self.prompts)}

    def config_entries(self) -> dict[str, Any]:
        """The online options, written into ``config.yaml`` beside the trainer's (a recipe for the run)."""
        return self.online.to_dict()

    def describe(self) -> dict[str, Any]:
        return {"data_kind": self.kind_name, "prompts": len(self.prompts), "prompt_source": self.name,
                "reward": self.reward.describe() if self.reward is not None else "preference function",
                "online": self.online.to_dict()}

    # ------------------------------------------------------------------ making a generation batch
    def _next_prompts(self, n: int) -> list[Prompt]:
        out: list[Prompt] = []
        while len(out) < n:
            order = self._epoch_order()
            take = order[self.cursor:self.cursor + n - len(out)]
            out += [self.prompts[i] for i in take]
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def _epoch_order(self) -> list[int]:
        """This epoch's permutation of the prompts (this process's share of it for a source that draws again on
        ties), made once per epoch."""
        cached = self._order
        if cached is None or cached[0] != self.epoch:
            order = torch.randperm(len(self.prompts),
                                   generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch)).tolist()
            if not self.exact_shards and self.world > 1:
                order = order[self.rank::self.world] or order[:1]
            self._order = cached = (self.epoch, order)
        return cached[1]

    def _fill(self) -> None:
        version = self.served // max(1, self.grad_accum)  # optimizer steps taken so far
        self.buffer = []
        for m in range(self.grad_accum * self.world):  # the generation batch of all processes
            if m // self.grad_accum != self.rank:  # another process's micro-batch: pass over its prompts
                if self.exact_shards:
                    self._next_prompts(self.batch_prompts)
                continue
            seed = (self.seed * 1_000_003 + self.generation * 7919 + m) % (2 ** 63)
            self.buffer.append(self._make_entry(seed, version))
        self.buffer_pos = 0
        self.generation += 1

    def _sample(self, prompts: list[Prompt], seed: int) -> tuple[list[Generation], list[str], float]:
        o = self.online
        t0 = time.perf_counter()
        gens = self.infer(lambda: generate(
            self.model, self.tok, [p.ids for p in prompts], n=self.online.k, max_new_tokens=o.max_new_tokens,
            temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seed=seed, batch_size=o.generation_batch_size))
        texts = self.tok.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
        return gens, texts, time.perf_counter() - t0

    def _score(self, prompts: list[Prompt], texts: list[str]) -> tuple[list[float | None], dict[str, list]]:
        k = self.online.k
        ptexts = [p.text for p in prompts for _ in range(k)]
        step = self.served // max(1, self.grad_accum) + 1
        if self.reward is None:
            return [None] * len(texts), {}
        return self.reward.parts(ptexts, texts, columns_for(prompts, k), step=step, on_bad=self.online.on_bad_reward,
                                 skipped=self.skipped)

    def _records(self, prompts: list[Prompt], gens: list[Generation], texts: list[str], total: list[float | None],
                 per: dict[str, list], version: int) -> list[dict[str, Any]]:
        k = self.online.k
        recs = []
        for i, (g, t) in enumerate(zip(gens, texts)):
            recs.append({"policy_version": version, "prompt": prompts[i // k].text, "prompt_row": prompts[i // k].row,
                         "sample": i % k, "completion": t, "reward": total[i],
                         "rewards": {name: v[i] for name, v in per.items()} if len(per) > 1 else None,
                         "finished": g.finished, "completion_tokens": len(g.response_ids), "logprob": None})
        return recs

    def _metrics(self, gens: list[Generation], total: list[float | None], per: dict[str, list],
                 seconds: float) -> dict[str, float]:
        lengths = [len(g.response_ids) for g in gens]
        done = [len(g.response_ids) for g in gens if g.finished]
        m = {"completions/mean_length": sum(lengths) / len(lengths), "completions/min_length": float(min(lengths)),
             "completions/max_length": float(max(lengths)),
             "completions/clipped_ratio": 1 - len(done) / len(gens),
             "completions/mean_terminated_length": sum(done) / len(done) if done else 0.0,
             "timing/generation_s": seconds}
        for name, vals in per.items():
            xs = [v for v in vals if v is not None]
            if xs:
                mu = sum(xs) / len(xs)
                m[f"rewards/{name}/mean"] = mu
                m[f"rewards/{name}/std"] = (sum((x - mu) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
        return m

    def _old_logps(self, entry: Entry) -> None:
        """The sampler's per-token log-probs (no gradient), for the importance ratios of later iterations."""
        from ..models.logprobs import sequence_logps
        from ..models.scoring import eval_mode

        batch = self.collate(entry.items).to(self.device)
        with torch.no_grad(), eval_mode(self.model):
            lp = self.infer(lambda: sequence_logps(self.model, batch, per_token=True, chunk_size=self.chunk_size))
        entry.old_token_logps = lp.token_logps.detach().cpu()
        extra = getattr(self.objective, "rollout_extras", None)
        if extra is not None:  # e.g. PPO's value estimates of the sampling policy
            with torch.no_grad(), eval_mode(self.model):
                entry.old_extras = {k: v.detach().cpu() for k, v in self.infer(lambda: extra(self.model, batch)).items()}
        sums = lp.sums.float().cpu().tolist()
        for s, r in enumerate(entry.seq_records):
            if r >= 0:
                entry.records[r]["logprob"] = sums[s]

    def _make_entry(self, seed: int, version: int) -> Entry:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self, entry: Entry) -> Entry:
        if self.online.num_iterations > 1:
            self._old_logps(entry)
        self._pending.extend(entry.records)
        return entry

    # ------------------------------------------------------------------ the completions log on resume
    def _truncate_log(self, step: int) -> None:
        self._log_started = True
        if self.rank != 0 or self.log_path is None or not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                break  # a torn last line
        from ..io import write_text

        write_text(self.log_path, "".join(x + "\n" for x in keep))


class GroupSource(RolloutSource):
    """K scored samples per prompt, as a ``list``-kind item: GRPO, RLOO, REINFORCE."""

    kind_name = "list"

    def _make_entry(self, seed: int, version: int) -> Entry:
        prompts = self._next_prompts(self.batch_prompts)
        gens, texts, secs = self._sample(prompts, seed)
        total, per = self._score(prompts, texts)
        k = self.online.k
        items = [TokenizedRanked(p.ids, [gens[i * k + j].response_ids for j in range(k)],
                                 [math.nan if total[i * k + j] is None else float(total[i * k + j])  # type: ignore[arg-type]
                                  for j in range(k)], row=p.row)
                 for i, p in enumerate(prompts)]
        recs = self._records(prompts, gens, texts, total, per, version)
        return self._finish(Entry(items, self._metrics(gens, total, per, secs), recs, list(range(len(recs)))))


class PairSource(RolloutSource):
    """A judged pair per prompt, as a ``pair``-kind item: online DPO (and any pair objective). With a reward, the
    best and the worst of the K samples (prompts whose samples all tie are dropped, counted); with a preference
    function ``fn(prompts, completions_a, completions_b) -> P(a > b)``, samples 0 and 1 by that probability."""

    exact_shards = False  # ties are drawn again: how many prompts a micro-batch takes depends on the samples

    kind_name = "pair"
    MAX_DRAWS = 16

    def _make_entry(self, seed: int, version: int) -> Entry:
        items: list[TokenizedPair] = []
        records: list[dict[str, Any]] = []
        chosen_rec: list[int] = []
        rejected_rec: list[int] = []
        metrics: dict[str, float] = {}
        ties = draws = 0
        while len(items) < self.batch_prompts:
            if draws == self.MAX_DRAWS:
                raise ConfigError(f"online pairs: {self.MAX_DRAWS} draws of {self.batch_prompts} prompts gave "
                                  f"{len(items)} pairs: every sample of a prompt got the same score ({ties} ties). "
                                  "Is the reward constant? Raise --temperature or --num-generations")
            prompts = self._next_prompts(self.batch_prompts - len(items))
            gens, texts, secs = self._sample(prompts, (seed + draws * 104729) % (2 ** 63))
            draws += 1
            total, per = self._score(prompts, texts)
            recs = self._records(prompts, gens, texts, total, per, version)
            judged = self._judge(prompts, texts, total)
            base = len(records)
            records += recs
            if not metrics:
                metrics = self._metrics(gens, total, per, secs)
                xs = [t for t in total if t is not None]
                if xs:
                    mu = sum(xs) / len(xs)
                    metrics["reward"] = mu
                    metrics["reward_std"] = (sum((x - mu) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
            for i, (p, pick) in enumerate(zip(prompts, judged)):
                if pick is None:
                    ties += 1
                    continue
                c, r = pick
                items.append(TokenizedPair(p.ids, gens[c].response_ids, gens[r].response_ids, row=p.row))
                recs[c]["role"], recs[r]["role"] = "chosen", "rejected"
                chosen_rec.append(base + c)
                rejected_rec.append(base + r)
        metrics["pairs/ties_dropped"] = float(ties)
        return self._finish(Entry(items, metrics, records, chosen_rec + rejected_rec))

    def _judge(self, prompts: list[Prompt], texts: list[str], total: list[float | None]) -> list[tuple[int, int] | None]:
        """Per prompt: (chosen, rejected) sample indices into the flat generation list, or None (a tie)."""
        k = self.online.k
        out: list[tuple[int, int] | None] = []
        if self.preference is not None:
            a = [texts[i * k] for i in range(len(prompts))]
            b = [texts[i * k + 1] for i in range(len(prompts))]
            step = self.served // max(1, self.grad_accum) + 1
            pref = _PreferenceReward(self.preference)
            probs = checked_scores(pref, [p.text for p in prompts], a, {"completions_b": b}, step=step,
                                   on_bad=self.online.on_bad_reward, skipped=self.skipped)
            for i, p in enumerate(probs):
                if p is None or p == 0.5:
                    out.append(None)
                elif not 0.0 <= p <= 1.0:
                    raise ConfigError(f"step {step}: --preference-fn returned {p} for prompt {i}; a probability in "
                                      "[0, 1] is expected")
                else:
                    out.append((i * k, i * k + 1) if p > 0.5 else (i * k + 1, i * k))
            return out
        for i in range(len(prompts)):
            scored = [(total[i * k + j], i * k + j) for j in range(k) if total[i * k + j] is not None]
            if len(scored) < 2:
                out.append(None)
                continue
            best, worst = max(scored, key=lambda t: t[0]), min(scored, key=lambda t: t[0])
            out.append(None if best[0] == worst[0] else (best[1], worst[1]))
        return out


class _PreferenceReward:
    """A preference function ``fn(prompts, completions_a, completions_b)`` seen through the reward checks."""

    name = "preference_fn"

    def __init__(self, fn: Any):
        self.fn = fn

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[Any]:
        return self.fn(prompts, completions, columns["completions_b"])

    def describe(self) -> str:
        return f"preference function {getattr(self.fn, '__name__', 'fn')}"


def _relayout(e: Entry, old: Any, new: Any) -> None:
    """Move an entry's per-token values ``[S, T]`` from batch ``old``'s positions to batch ``new``'s (the same items in
    another layout: each sequence's response tokens, in order)."""
    def move(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(new.seq_mask.shape)
        out[new.seq_mask] = t[old.seq_mask]
        return out

    if e.old_token_logps is not None:
        e.old_token_logps = move(e.old_token_logps)
    e.old_extras = {k: move(v) if v.dim() == 2 and v.shape == old.seq_mask.shape else v for k, v in e.old_extras.items()}


def _entry_state(e: Entry) -> dict[str, Any]:
    if isinstance(e.items[0], TokenizedRanked):
        items = [{"p": it.prompt_ids, "c": it.completion_ids,
                  "s": [None if math.isnan(s) else s for s in it.scores], "row": it.row} for it in e.items]
    else:
        items = [{"p": it.prompt_ids, "c": [it.chosen_ids, it.rejected_ids], "row": it.row} for it in e.items]
    return {"items": items, "metrics": e.metrics, "uses": e.uses,
            "old": e.old_token_logps.tolist() if e.old_token_logps is not None else None,
            "old_dtype": str(e.old_token_logps.dtype).replace("torch.", "") if e.old_token_logps is not None else None,
            "old_extras": {k: {"v": v.tolist(), "dtype": str(v.dtype).replace("torch.", "")}
                           for k, v in e.old_extras.items()}}


def _entry_from_state(d: dict[str, Any], kind: str) -> Entry:
    if kind == "list":
        items: list[Any] = [TokenizedRanked(x["p"], x["c"], [math.nan if s is None else s for s in x["s"]], row=x["row"])
                            for x in d["items"]]
    else:
        items = [TokenizedPair(x["p"], x["c"][0], x["c"][1], row=x["row"]) for x in d["items"]]
    old = torch.tensor(d["old"], dtype=getattr(torch, d["old_dtype"])) if d.get("old") is not None else None
    extras = {k: torch.tensor(v["v"], dtype=getattr(torch, v["dtype"])) for k, v in d.get("old_extras", {}).items()}
    return Entry(items, dict(d["metrics"]), [], [], old, int(d.get("uses", 0)), extras)


def make_source(online: OnlineConfig, prompts: Sequence[Prompt], reward: CombinedReward | None, **kw: Any) -> RolloutSource:
    """The rollout source of ``online.algo``."""
    src = online.algorithm.source
    if src == "group":
        return GroupSource(prompts, reward, online, **kw)
    if src == "pair":
        return PairSource(prompts, reward, online, **kw)
    raise ConfigError(f"algorithm {online.algo} has no single rollout source (it runs in rounds)")


__all__ = ["Entry", "GroupSource", "LOG_NAME", "PairSource", "RolloutSource", "make_source"]
