"""Data kinds: one description per kind of training example, instead of string switches.

A :class:`DataKind` says everything the trainer, the reference cache and the batch sources need
to know about one kind of example:

* ``example_type`` / ``tokenized_type`` -- the typed record and its tokenized form;
* ``collators`` -- one function ``(items, pad_id) -> SequenceBatch`` per layout, and the default
  layout (``layout=auto``);
* ``length`` -- the token count of a tokenized item (length-grouped batching);
* ``sequences`` -- how a batch orders its sequences: ``"blocked"`` (sequence ``j * B + b`` is the
  j-th sequence of example b; pairs: all chosen, then all rejected) or ``"example_major"``
  (``b * K + j``; ranked lists);
* ``stats`` -- the function that turns the policy's (and reference's) per-sequence log-probs into
  the stats object its objectives take (:class:`~preftune.objectives.base.PairStats`, ...);
* ``groups`` -- which sequences the forward's own metrics are reported for, by name (pairs:
  ``chosen`` and ``rejected``, as TRL's ``logits/chosen``).

Adding a kind (later: prompt-only batches for online training, scored pairs for reward models) is
one :func:`register_kind` call in a new module; nothing in ``train/`` changes.

>>> from preftune.kinds import get_kind
>>> get_kind("pair").default_layout, sorted(get_kind("pair").collators)
('packed', ['packed', 'padded', 'prefix_shared'])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import ConfigError

Collator = Callable[[Sequence[Any], int], Any]


@dataclass(frozen=True)
class DataKind:
    name: str
    example_type: type
    tokenized_type: type
    collators: dict[str, Collator]
    default_layout: str
    length: Callable[[Any], int]
    stats: Callable[..., Any]
    sequences: str = "blocked"                       # or "example_major"
    description: str = ""
    groups: Callable[[Any], dict[str, Any]] | None = None  # metric name -> bool mask over the batch's sequences
    extra: dict[str, Any] = field(default_factory=dict)
    cuda_layout: str | None = None  # 'auto' on a CUDA device, where it differs from default_layout
    # under 'auto': items -> whether the automatic block layout suits this batch; when it does not, the batch is
    # collated padded instead (ranked lists: K long completions after one prompt make one very long row)
    auto_block_ok: Callable[[Sequence[Any]], bool] | None = None

    def collator(self, layout: str, pad_id: int, device: Any = None) -> Callable[[Sequence[Any]], Any]:
        """``items -> SequenceBatch`` for ``layout`` (``'auto'``: this kind's default on ``device``). The returned
        function carries ``pad_id`` and ``layout`` as attributes (suppliers re-collate with it)."""
        on_cuda = getattr(device, "type", device) == "cuda"
        auto = self.cuda_layout if on_cuda and self.cuda_layout else self.default_layout
        name = auto if layout == "auto" else layout
        if name not in self.collators:
            raise ConfigError(f"layout '{layout}' is not available for {self.name} data; "
                              f"choose one of {', '.join(sorted(self.collators))} (or auto)")
        fn = self.collators[name]
        guard = self.auto_block_ok if layout == "auto" and name != "padded" and "padded" in self.collators else None
        padded = self.collators.get("padded")

        def collate(items: Sequence[Any]) -> Any:
            if guard is not None and not guard(items):
                return padded(items, pad_id)
            return fn(items, pad_id)

        collate.pad_id = pad_id  # type: ignore[attr-defined]
        collate.layout = name  # type: ignore[attr-defined]
        collate.kind = self  # type: ignore[attr-defined]
        return collate

    def by_example(self, x: Any, num_examples: int) -> Any:
        """``[S, ...]`` per-sequence values -> ``[B, K, ...]`` per example."""
        k = x.shape[0] // max(num_examples, 1)
        if self.sequences == "blocked":
            return x.reshape(k, num_examples, *x.shape[1:]).transpose(0, 1)
        return x.reshape(num_examples, k, *x.shape[1:])

    def by_sequence(self, x: Any) -> Any:
        """Inverse of :meth:`by_example`: ``[B, K, ...]`` -> ``[S, ...]`` in the batch's sequence order."""
        if self.sequences == "blocked":
            return x.transpose(0, 1).reshape(-1, *x.shape[2:])
        return x.reshape(-1, *x.shape[2:])


_KINDS: dict[str, DataKind] = {}


def register_kind(kind: DataKind) -> DataKind:
    from .registry import add

    return add(_KINDS, kind.name, kind, "data kind")


def get_kind(name: str) -> DataKind:
    _load_builtin()
    if name not in _KINDS:
        raise ConfigError(f"unknown data kind '{name}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def kinds() -> list[str]:
    _load_builtin()
    return sorted(_KINDS)


def kind_of(items: Sequence[Any]) -> DataKind:
    """The kind of a list of typed examples or tokenized items (all of one kind)."""
    _load_builtin()
    types = {type(x) for x in items}
    found = {k.name for k in _KINDS.values() for t in types if t in (k.example_type, k.tokenized_type)}
    if len(found) != 1 or not items:
        names = sorted(t.__name__ for t in types)
        raise ConfigError(f"examples must all be of one known kind; got {', '.join(names) or 'none'}")
    return _KINDS[found.pop()]


def _load_builtin() -> None:
    if not _KINDS:
        from . import _builtin_kinds  # noqa: F401


def batch_stats(batch: Any, policy: Any, reference: Any = None) -> Any:
    """The stats object of ``batch``'s kind from policy (and reference) per-sequence log-probs."""
    return get_kind(batch.kind).stats(batch, policy, reference)
