"""Reward sources behind one interface: ``source(prompts, completions, columns) -> list[float | None]``.

* :class:`FunctionReward` -- a Python function from a file the user names (``--reward-fn rewards.py:fn``), called
  as TRL calls reward functions: ``fn(prompts=[...], completions=[...], **columns)`` where ``columns`` are the
  prompt file's other fields, one list entry per completion. It may be ``async``; it may return ``None`` for
  "no score". Nothing else is imported from data: the file is code the user chose to run.
* :class:`ModelReward` -- a reward model (preftune's ``rm train`` output or any one-label sequence classifier),
  through :class:`preftune.reward.RewardModel` (batched, no gradient).
* :class:`TaskReward` -- an arena task's true reward.
* :class:`CombinedReward` -- several sources with weights: the weighted sum over the sources that scored a
  completion (``None`` when none did), as TRL's ``reward_weights``.

A source that returns the wrong number of scores, NaN or infinity, or raises, is a :class:`RewardError` naming the
step and the prompt -- or, with ``on_bad_reward='skip'``, its scores become ``None`` and are counted.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, PreftuneError


class RewardError(PreftuneError):
    """A reward source failed on a batch (wrong count, NaN, an exception)."""


class RewardSource:
    """``__call__(prompts, completions, columns) -> list[float | None]``, one score per completion."""

    name: str = "reward"

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[Any]:
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> str:
        return self.name


class FunctionReward(RewardSource):
    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward_fn")

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[Any]:
        out = self.fn(prompts=prompts, completions=completions, **columns)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
        return out

    def describe(self) -> str:
        return f"function {self.name}"


async def _awaited(aw: Any) -> Any:
    return await aw


class ModelReward(RewardSource):
    """A sequence-classifier reward model's score of each (prompt, completion)."""

    def __init__(self, model: Any, name: str = "reward_model"):
        self.model, self.name = model, name

    @classmethod
    def from_pretrained(cls, path: str, **kw: Any) -> "ModelReward":
        from ..reward import RewardModel

        if not Path(path).is_dir():
            raise ConfigError(f"--reward-model {path}: no such directory")
        return cls(RewardModel.from_pretrained(path, **kw), name=Path(path).name or "reward_model")

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[Any]:
        return [float(s) for s in self.model.score(prompts, completions).tolist()]

    def describe(self) -> str:
        return f"reward model {self.name}"


class TaskReward(RewardSource):
    """An arena task's true reward (``task.reward(prompt, response)``)."""

    def __init__(self, task: Any):
        self.task, self.name = task, f"task_{task.name}"

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[Any]:
        return [float(self.task.reward(p, c)) for p, c in zip(prompts, completions)]

    def describe(self) -> str:
        return f"arena task {self.task.name}'s true reward"


class CombinedReward(RewardSource):
    """``sum_i w_i r_i`` over the sources that scored a completion; ``None`` when none did."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None):
        if not sources:
            raise ConfigError("no reward source: give --reward-fn, --reward-model or --task")
        weights = list(weights) if weights else [1.0] * len(sources)
        if len(weights) != len(sources):
            raise ConfigError(f"--reward-weights has {len(weights)} weights for {len(sources)} reward sources")
        self.sources, self.weights = list(sources), [float(w) for w in weights]
        self.name = "+".join(s.name for s in self.sources)

    def parts(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]], *,
              step: int, on_bad: str, skipped: dict[str, int]) -> tuple[list[float | None], dict[str, list]]:
        """The combined scores and each source's checked scores (for per-source metrics)."""
        per: dict[str, list] = {}
        for s in self.sources:
            per[s.name] = checked_scores(s, prompts, completions, columns, step=step, on_bad=on_bad, skipped=skipped)
        total: list[float | None] = []
        for i in range(len(completions)):
            vals = [(w, per[s.name][i]) for s, w in zip(self.sources, self.weights) if per[s.name][i] is not None]
            total.append(sum(w * v for w, v in vals) if vals else None)
        return total, per

    def describe(self) -> str:
        if len(self.sources) == 1:
            return self.sources[0].describe()
        return " + ".join(f"{w:g} x {s.describe()}" for s, w in zip(self.sources, self.weights))


def checked_scores(source: RewardSource, prompts: list[str], completions: list[str], columns: dict[str, list[Any]],
                   *, step: int, on_bad: str = "error", skipped: dict[str, int] | None = None) -> list[float | None]:
    """``source``'s scores, checked: one per completion, each a finite number or None. A failure is a one-line
    :class:`RewardError` naming the step and prompt, or (``on_bad='skip'``) None scores counted in
    ``skipped[source.name]``."""
    skipped = {} if skipped is None else skipped

    def bad(msg: str, n: int) -> list[None]:
        if on_bad != "skip":
            raise RewardError(f"step {step}: reward {source.describe()}: {msg}; fix it, or pass --on-bad-reward skip "
                              "to skip such completions (counted)")
        skipped[source.name] = skipped.get(source.name, 0) + n
        return [None] * len(completions)

    try:
        out = source(prompts, completions, columns)
    except PreftuneError:
        raise
    except Exception as e:  # the user's code may raise anything
        return bad(f"raised {type(e).__name__}: {_short(e)} (first prompt {_quote(prompts[0]) if prompts else ''})",
                   len(completions))
    try:
        out = list(out)
    except TypeError:
        return bad(f"returned {type(out).__name__}, expected a list of {len(completions)} numbers", len(completions))
    if len(out) != len(completions):
        return bad(f"returned {len(out)} scores for {len(completions)} completions", len(completions))
    scores: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            scores.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            if on_bad != "skip":
                raise RewardError(f"step {step}: reward {source.describe()} returned {v!r} for completion {i} "
                                  f"of prompt {_quote(prompts[i])}; return a finite number or None, or pass "
                                  "--on-bad-reward skip")
            skipped[source.name] = skipped.get(source.name, 0) + 1
            scores.append(None)
            continue
        scores.append(f)
    return scores


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""


def _quote(text: str, n: int = 60) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= n else text[:n] + "...")


def load_reward_fn(spec: str) -> FunctionReward:
    """``path/to/file.py:function`` -> the function, imported from that file only (code the user named)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ConfigError(f"--reward-fn {spec!r}: expected FILE.py:FUNCTION")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--reward-fn {spec}: no such file {path}")
    mod_name = f"preftune_user_reward_{abs(hash(str(p.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--reward-fn {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"--reward-fn {spec}: importing {path} failed ({type(e).__name__}: {_short(e)})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(f"--reward-fn {spec}: {path} has no function {name!r} (functions: {', '.join(found) or 'none'})")
    return FunctionReward(fn, name)


def build_reward(*, reward_fn: Sequence[str] = (), reward_model: Sequence[str] = (), task: Any = None,
                 weights: Sequence[float] | None = None, functions: Sequence[Callable[..., Any]] = (),
                 max_length: int = 1024, device: Any = "cpu", dtype: str = "fp32") -> CombinedReward:
    """The reward sources a run names, in order: ``--reward-fn`` files, Python ``functions``, ``--reward-model``
    directories, then the task's true reward."""
    sources: list[RewardSource] = [load_reward_fn(s) for s in reward_fn]
    sources += [f if isinstance(f, RewardSource) else FunctionReward(f) for f in functions]
    sources += [ModelReward.from_pretrained(p, max_length=max_length, device=device, dtype=dtype) for p in reward_model]
    if task is not None:
        sources.append(TaskReward(task))
    names = [s.name for s in sources]
    for i, s in enumerate(sources):  # per-source metrics are keyed by name
        if names.count(s.name) > 1:
            s.name = f"{s.name}_{i}"
    return CombinedReward(sources, weights)


__all__ = ["CombinedReward", "FunctionReward", "ModelReward", "RewardError", "RewardSource", "TaskReward",
           "build_reward", "checked_scores", "load_reward_fn"]
