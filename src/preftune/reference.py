"""Where reference log-probs come from. The trainer asks one interface, :class:`ReferenceSource`.

* :class:`FrozenModel` -- a frozen copy of the policy's starting point, or another checkpoint
  (``--ref-model``, e.g. the previous round of iterative training);
* :class:`AdapterDisabled` -- the policy itself with its LoRA adapters switched off: no second
  copy of the weights in memory;
* :class:`Precomputed` -- log-probs computed once and cached on disk, keyed by a fingerprint of
  the reference weights, the tokenized data and the tokenization settings; a stale cache (any
  of those changed) is detected and recomputed, never reused;
* :class:`NoReference` -- for reference-free objectives.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .data.types import SequenceBatch
from .errors import ConfigError
from .models.hidden import aligned_hidden_states, label_states
from .models.logprobs import SeqLogps, head_fn, sequence_logps


class ReferenceSource:
    kind = "abstract"
    supports_per_token = True

    def logps(self, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps | None:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


class NoReference(ReferenceSource):
    kind = "none"

    def logps(self, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps | None:
        return None


class FrozenModel(ReferenceSource):
    """A separate, frozen model in eval mode."""

    kind = "model"

    def __init__(self, model: Any, *, chunk_size: int = 1024, name: str = ""):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.chunk_size, self.name = chunk_size, name
        # runs a computation with the model: under FSDP2 its sharded root's forward (preftune.train.distributed)
        self.call: Callable[[Callable[[], Any]], Any] = lambda fn: fn()

    @classmethod
    def copy_of(cls, policy: Any, **kw: Any) -> "FrozenModel":
        return cls(copy.deepcopy(policy), **kw)

    @torch.no_grad()
    def logps(self, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps:
        return self.call(lambda: sequence_logps(self.model, batch, per_token=per_token, chunk_size=self.chunk_size))

    def hidden_states(self, batch: SequenceBatch) -> list[torch.Tensor]:
        return self.call(lambda: aligned_hidden_states(self.model, batch))

    @torch.no_grad()
    def label_states(self, batch: SequenceBatch) -> torch.Tensor:
        return self.call(lambda: label_states(self.model, batch))

    def output_head(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return head_fn(self.model, base_weights=True)

    def describe(self) -> str:
        return f"frozen model {self.name}".strip()


class AdapterDisabled(ReferenceSource):
    """The policy with LoRA adapters disabled (peft ``disable_adapter``): the base model."""

    kind = "adapter"

    def __init__(self, peft_model: Any, *, chunk_size: int = 1024):
        if not hasattr(peft_model, "disable_adapter"):
            raise ConfigError("ref='adapter' needs a LoRA (peft) policy; set lora_r > 0")
        self.model, self.chunk_size = peft_model, chunk_size

    @contextlib.contextmanager
    def _base(self) -> Iterator[Any]:
        """The base model: adapters off, eval mode (no dropout); the policy's mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def logps(self, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps:
        with self._base() as m:
            return sequence_logps(m, batch, per_token=per_token, chunk_size=self.chunk_size)

    def hidden_states(self, batch: SequenceBatch) -> list[torch.Tensor]:
        with self._base() as m:
            return aligned_hidden_states(m, batch)

    @torch.no_grad()
    def label_states(self, batch: SequenceBatch) -> torch.Tensor:
        with self._base() as m:
            return label_states(m, batch)

    def output_head(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return head_fn(self.model, base_weights=True)


class Precomputed(ReferenceSource):
    """Per-sequence summed reference log-probs looked up by example row.

    ``table`` maps an example's row id to its sequence sums (pairs: ``[chosen, rejected]``).
    Per-token reference values are not cached (they would cost ``O(tokens)`` disk);
    objectives that need them must use another source.
    """

    kind = "precomputed"
    supports_per_token = False

    def __init__(self, table: dict[int, list[float]], lengths: dict[int, list[int]], *, path: Path | None = None,
                 reused: bool = False):
        self.table, self.lengths, self.path, self.reused = table, lengths, path, reused

    def logps(self, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps:
        if per_token:
            raise ConfigError("precomputed reference log-probs are summed per sequence; this objective needs "
                              "per-token reference values: use --ref model (or adapter under LoRA)")
        try:
            vals = [self.table[r] for r in batch.rows]
        except KeyError as e:
            raise ConfigError(f"row {e.args[0]} has no precomputed reference log-prob (cache built on other data)") \
                from None
        per_example = len(vals[0])
        if per_example * len(vals) != batch.num_sequences:
            raise ConfigError("precomputed reference cache does not match the batch layout")
        # [B, k] -> the batch's sequence order (the data kind knows it)
        sums = batch.by_sequence(torch.tensor(vals, dtype=torch.float32, device=batch.seq_mask.device))
        return SeqLogps(sums=sums, lengths=batch.seq_mask.sum(-1), mask=batch.seq_mask)

    def describe(self) -> str:
        state = "reused cache" if self.reused else "computed now"
        return f"precomputed ({state}{': ' + str(self.path) if self.path else ''})"


# ----------------------------------------------------------------------------- precomputation


def model_fingerprint(model: Any) -> str:
    """A hash of the weights' values (and names, shapes, dtypes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(items: Sequence[Any], settings: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for it in items:
        d = {k: v for k, v in vars(it).items() if k not in ("extras", "truncated")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    return h.hexdigest()


def precompute(model: Any, items: Sequence[Any], collate: Callable[[Sequence[Any]], SequenceBatch], *,
               batch_size: int = 8, cache_dir: str | Path | None = None, settings: dict[str, Any] | None = None,
               chunk_size: int = 1024, progress: bool = False) -> Precomputed:
    """Compute (or load from ``cache_dir``) the reference sums of every item, keyed by row."""
    from safetensors.torch import load_file, save_file

    seen: set[int] = set()
    for it in items:
        if it.row in seen:  # e.g. pairs split into two unpaired examples: both keep the pair's row
            raise ConfigError(f"--ref precomputed looks reference log-probs up by row, and row {it.row} holds more "
                              "than one example (pairs split for an unpaired objective?); use --ref model")
        seen.add(it.row)

    from .io import atomic_path

    key = None
    path = None
    if cache_dir is not None:
        key = hashlib.blake2b((model_fingerprint(model) + data_fingerprint(items, settings or {})).encode(),
                              digest_size=16).hexdigest()
        path = Path(cache_dir) / f"ref-logps-{key}.safetensors"
        if path.exists():
            t = load_file(str(path))
            table = {int(r): v.tolist() for r, v in zip(t["rows"], t["sums"])}
            lengths = {int(r): v.tolist() for r, v in zip(t["rows"], t["lengths"])}
            if set(table) >= {it.row for it in items}:
                return Precomputed(table, lengths, path=path, reused=True)
    from tqdm.auto import tqdm

    from .models.scoring import eval_mode

    table: dict[int, list[float]] = {}
    lengths: dict[int, list[int]] = {}
    it = range(0, len(items), batch_size)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for i in tqdm(it, desc="reference log-probs", disable=not progress, leave=False):
            chunk = list(items[i:i + batch_size])
            batch = collate(chunk).to(device)  # the model's device (found on a GPU: a CPU batch failed there)
            out = sequence_logps(model, batch, chunk_size=chunk_size)
            sums, lens = batch.by_example(out.sums), batch.by_example(out.lengths)  # [B, k]
            for ex, s, n in zip(chunk, sums.tolist(), lens.tolist()):
                table[ex.row] = s
                lengths[ex.row] = n
    if path is not None:
        rows = sorted(table)
        with atomic_path(path) as tmp:
            save_file({"rows": torch.tensor(rows), "sums": torch.tensor([table[r] for r in rows]),
                       "lengths": torch.tensor([lengths[r] for r in rows])}, str(tmp), metadata={"key": key or ""})
    return Precomputed(table, lengths, path=path, reused=False)
