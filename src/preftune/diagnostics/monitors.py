"""The diagnostics as training monitors: callbacks that measure the policy on the trainer's
fixed probe set (``TrainState.probe``) every ``every`` steps and return metrics named
``diagnostics/<monitor>/<metric>``, which the trainer writes to ``metrics.jsonl``.

>>> from preftune.diagnostics.monitors import make_monitors
>>> [type(m).__name__ for m in make_monitors(["ranking_accuracy", "ches"], every=10)]
['RankingAccuracyMonitor', 'ChesMonitor']

Reference log-probs come from ``state.reference.logps(batch)`` (None for reference-free
runs); the reference is frozen, so they are computed once and cached. Each monitor also
reports ``diagnostics/<monitor>/seconds``, its own cost. ``python -m
preftune.diagnostics.monitors`` measures every monitor on a tiny model with a 16-pair probe.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..data.types import TokenizedPair
from ..errors import ConfigError
from ..callbacks import Callback, TrainState
from ._common import eval_mode, model_device, pad_id_of, pair_logps, pearson
from .displacement import ches_scores
from .entanglement import gradient_entanglement
from .length import eos_id_of, sample_lengths, unique_prompts
from .overopt import DEFAULT_K, overoptimisation_warning, topk_indicators
from .ranking import accuracies, idealized_ranking_accuracy, resolve_alpha


def _beta(state: TrainState, default: float = 0.1) -> float:
    b = getattr(state.objective, "beta", None)
    return float(b) if isinstance(b, (int, float)) and b > 0 else default


def _clean(out: dict[str, Any]) -> dict[str, float]:
    """Plain finite floats only: None and NaN are left out, booleans become 0/1."""
    res = {}
    for k, v in out.items():
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            res[k] = v
    return res


class DiagnosticMonitor(Callback):
    """Base: runs :meth:`measure` every ``every`` optimizer steps on the probe pairs."""

    name = ""

    def __init__(self, every: int = 10):
        if every < 1:
            raise ConfigError(f"monitor '{self.name}': every must be >= 1, got {every}")
        self.every = every

    def pairs(self, state: TrainState) -> list[TokenizedPair]:
        return [p for p in state.probe if isinstance(p, TokenizedPair)]

    def pad_id(self, state: TrainState) -> int:
        return pad_id_of(state.model, state.tokenizer)

    def on_step_end(self, state: TrainState, metrics: dict[str, float]) -> dict[str, float] | None:
        if state.step % self.every != 0:
            return None
        pairs = self.pairs(state)
        if not pairs:
            return None
        t0 = time.perf_counter()
        with eval_mode(state.model):
            out = self.measure(state, pairs)
        out["seconds"] = time.perf_counter() - t0
        return _clean({f"diagnostics/{self.name}/{k}": v for k, v in out.items()})

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    # the reference is frozen: its log-probs on the fixed probe are computed once
    def reference_logps(self, state: TrainState, pairs: list[TokenizedPair]):
        key = (id(state.reference), len(pairs))
        if getattr(self, "_ref_key", None) != key:
            ref = state.reference
            self._ref = None if ref is None else pair_logps(ref, pairs, self.pad_id(state), 8, model_device(state.model))
            self._ref_key = key
        return self._ref


class RankingAccuracyMonitor(DiagnosticMonitor):
    """P02: policy and reference ranking accuracy on the probe, idealized accuracy, gap."""

    name = "ranking_accuracy"

    def __init__(self, every: int = 10, alpha: float | None = None, prob_column: str = "preference_prob"):
        super().__init__(every)
        self.alpha, self.prob_column = alpha, prob_column

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        pc, pr, lc, lr = pair_logps(state.model, pairs, self.pad_id(state))  # type: ignore[misc]
        acc, acc_n = accuracies(pc, pr, lc, lr)
        out: dict[str, Any] = {"accuracy": acc, "accuracy_normalized": acc_n}
        ref = self.reference_logps(state, pairs)
        if ref is not None:
            out["ref_accuracy"], out["ref_accuracy_normalized"] = accuracies(ref[0], ref[1], lc, lr)
            a, _ = resolve_alpha(pairs, self.alpha, self.prob_column)
            out["idealized_accuracy"] = idealized_ranking_accuracy(ref[0], ref[1], a, _beta(state))
            out["alignment_gap"] = out["idealized_accuracy"] - acc
        return out


class ChesMonitor(DiagnosticMonitor):
    """P16: CHES and length-normalised CHES of the probe pairs under the current policy."""

    name = "ches"

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        r = ches_scores(state.model, pairs, tokenizer=state.tokenizer)
        return {"mean": float(r.scores.mean()), "max": float(r.scores.max()),
                "normalized_mean": float(r.normalized.mean()), "normalized_max": float(r.normalized.max())}


class EntanglementMonitor(DiagnosticMonitor):
    """P08: chosen/rejected gradient cosine and the share of pairs whose log-probs would move
    the same way (one forward + two backward passes per probe pair)."""

    name = "entanglement"

    def __init__(self, every: int = 10, params: str | None = None, max_pairs: int | None = None,
                 length_normalized: bool = False):
        super().__init__(every)
        self.params, self.max_pairs, self.length_normalized = params, max_pairs, length_normalized

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        r = gradient_entanglement(state.model, pairs, tokenizer=state.tokenizer, params=self.params,
                                  max_pairs=self.max_pairs, length_normalized=self.length_normalized)
        s = r.summary()
        return {k: s[k] for k in ("cosine_mean", "inner_mean", "norm_chosen_mean", "norm_rejected_mean",
                                  "entangled_frac", "chosen_down_frac", "rejected_up_frac")}


class TopkEntropyMonitor(DiagnosticMonitor):
    """P46: top-k entropy and top-k mass on the probe's chosen responses; ``warning`` is 1 when
    both have fallen at each of the last ``window`` measurements."""

    name = "topk_entropy"

    def __init__(self, every: int = 10, k: int = DEFAULT_K, window: int = 3):
        super().__init__(every)
        self.k, self.window = k, window
        self.entropy: list[float] = []
        self.mass: list[float] = []

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        r = topk_indicators(state.model, pairs, tokenizer=state.tokenizer, k=self.k)
        self.entropy.append(r.entropy)
        self.mass.append(r.mass)
        return {"entropy": r.entropy, "mass": r.mass,
                "warning": overoptimisation_warning(self.entropy, self.mass, self.window)}


class LengthBiasMonitor(DiagnosticMonitor):
    """P38/P52: correlation of the implicit reward with response length on the probe, and the
    mean length of the policy's samples on a few probe prompts against their length at the
    start of training (the policy then equals its reference)."""

    name = "length_bias"

    def __init__(self, every: int = 10, sample_prompts: int = 4, max_new_tokens: int = 32, seed: int = 0):
        super().__init__(every)
        self.sample_prompts, self.max_new_tokens, self.seed = sample_prompts, max_new_tokens, seed
        self.start_length: float | None = None

    def sample_length(self, state: TrainState, pairs: list[TokenizedPair]) -> float | None:
        if self.sample_prompts <= 0:
            return None
        prompts = unique_prompts(pairs, self.sample_prompts)
        n = sample_lengths(state.model, prompts, pad_id=self.pad_id(state),
                           eos_id=eos_id_of(state.model, state.tokenizer), max_new_tokens=self.max_new_tokens,
                           seed=self.seed)
        return float(n.mean())

    def on_train_start(self, state: TrainState) -> dict[str, float] | None:
        pairs = self.pairs(state)
        if pairs:
            with eval_mode(state.model):
                self.start_length = self.sample_length(state, pairs)
        return None

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ref = self.reference_logps(state, pairs)
        if ref is not None:
            pc, pr, lc, lr = pair_logps(state.model, pairs, self.pad_id(state))  # type: ignore[misc]
            beta = _beta(state)
            rewards = np.concatenate([beta * (pc - ref[0]), beta * (pr - ref[1])])
            out["reward_length_pearson"] = pearson(rewards, np.concatenate([lc, lr]))
        length = self.sample_length(state, pairs)
        if self.start_length is None:
            self.start_length = length
        out["sample_length"] = length
        if length is not None and self.start_length:
            out["sample_length_ratio"] = length / self.start_length
        return out


class LogpTrackingMonitor(DiagnosticMonitor):
    """P16/P13: mean change of the chosen and rejected log-probs against the reference (or,
    reference-free, against the policy at its first measurement) and the share of pairs whose
    chosen log-prob has fallen (likelihood displacement)."""

    name = "logp_tracking"

    def __init__(self, every: int = 10):
        super().__init__(every)
        self.start: tuple[np.ndarray, np.ndarray] | None = None

    def on_train_start(self, state: TrainState) -> dict[str, float] | None:
        pairs = self.pairs(state)
        if pairs and self.reference_logps(state, pairs) is None:
            with eval_mode(state.model):
                pc, pr, _, _ = pair_logps(state.model, pairs, self.pad_id(state))  # type: ignore[misc]
            self.start = (pc, pr)
        return None

    def measure(self, state: TrainState, pairs: list[TokenizedPair]) -> dict[str, Any]:
        pc, pr, lc, lr = pair_logps(state.model, pairs, self.pad_id(state))  # type: ignore[misc]
        ref = self.reference_logps(state, pairs)
        if ref is not None:
            base = (ref[0], ref[1])
        else:
            if self.start is None:
                self.start = (pc, pr)
            base = self.start
        dc, dr = pc - base[0], pr - base[1]
        return {"chosen": float(pc.mean()), "rejected": float(pr.mean()), "chosen_change": float(dc.mean()),
                "rejected_change": float(dr.mean()), "chosen_down_frac": float((dc < 0).mean()),
                "both_down_frac": float(((dc < 0) & (dr < 0)).mean()),
                "against": 0.0 if ref is not None else 1.0}  # 0: the reference, 1: the policy at start


MONITORS: dict[str, type[DiagnosticMonitor]] = {
    m.name: m for m in (RankingAccuracyMonitor, ChesMonitor, EntanglementMonitor, TopkEntropyMonitor,
                        LengthBiasMonitor, LogpTrackingMonitor)}


def register_monitor(cls: type[DiagnosticMonitor]) -> type[DiagnosticMonitor]:
    """Class decorator: make a :class:`DiagnosticMonitor` available by name (``--monitor NAME``)."""
    from ..registry import add

    return add(MONITORS, cls.name, cls, "monitor")


def make_monitors(names: list[str], every: int, **options: Any) -> list[Callback]:
    """Monitors by name (``ranking_accuracy``, ``ches``, ``entanglement``, ``topk_entropy``,
    ``length_bias``, ``logp_tracking``), each running every ``every`` steps.

    ``options`` maps a monitor name to keyword arguments of its class, e.g.
    ``make_monitors(["entanglement"], 50, entanglement={"params": "lm_head", "max_pairs": 4})``.
    """
    unknown = [n for n in names if n not in MONITORS]
    if unknown:
        raise ConfigError(f"unknown monitor(s) {', '.join(map(repr, unknown))}; available: {', '.join(MONITORS)}")
    bad = [k for k in options if k not in MONITORS]
    if bad:
        raise ConfigError(f"options given for unknown monitor(s) {', '.join(bad)}; available: {', '.join(MONITORS)}")
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"monitor_every must be an integer >= 1, got {every!r}")
    return [MONITORS[n](every, **options.get(n, {})) for n in dict.fromkeys(names)]


# ----------------------------------------------------------------------------- cost measurement


def measure_costs(pairs: int = 16, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of each monitor on a tiny Llama (2 layers, hidden 64, vocab
    512) with a probe of ``pairs`` pairs (prompts 24 tokens, responses 16-31 tokens)."""
    from pathlib import Path

    import torch

    from ..models.tiny import build_model
    from ..reference import FrozenModel

    torch.manual_seed(seed)
    V = 512
    model = build_model(V, hidden_size=64, num_layers=2, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def toks(n: int) -> list[int]:
        return torch.randint(7, V, (n,), generator=g).tolist()

    probe = [TokenizedPair(toks(24), toks(16 + i % 16), toks(16 + (i * 7) % 16), row=i) for i in range(pairs)]
    state = TrainState(config=None, model=model, tokenizer=None, reference=FrozenModel.copy_of(model), objective=None,
                       output_dir=Path("."), probe=probe)
    costs = {}
    for mon in make_monitors(list(MONITORS), every=1):
        mon.on_train_start(state)
        times = []
        for step in range(1, repeats + 1):
            state.step = step
            t0 = time.perf_counter()
            mon.on_step_end(state, {})
            times.append(time.perf_counter() - t0)
        costs[mon.name] = float(np.median(times))
    return costs


if __name__ == "__main__":  # pragma: no cover
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    for name, sec in measure_costs().items():
        print(f"{name:<18} {sec:.3f} s/call")

__all__ = ["MONITORS", "register_monitor", "ChesMonitor", "DiagnosticMonitor", "EntanglementMonitor",
           "LengthBiasMonitor", "LogpTrackingMonitor", "RankingAccuracyMonitor", "TopkEntropyMonitor",
           "make_monitors", "measure_costs"]
