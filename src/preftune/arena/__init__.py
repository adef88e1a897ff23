"""The arena: objectives against each other on tasks whose true reward is known.

>>> from preftune.arena import Task, run_arena                    # doctest: +SKIP
>>> results = run_arena("sort", objectives=["dpo", "ipo"], seeds=[0], out_dir="runs/a")
>>> results["dpo"]["win_rate_vs_sft"]

Pipeline (one module per stage): :mod:`.tasks` (prompts, true reward, imperfect
demonstrations) -> :mod:`.models` (cached SFT model, sampling) -> :mod:`.labelling`
(pairs, ranked lists, label noise) -> :func:`preftune.train.train` per objective ->
:mod:`.evaluate` (held-out true reward, win rate, KL, length, ranking accuracy) ->
:mod:`.report` (``leaderboard.md``, ``report.html``, plots). See ``docs/arena.md``.
"""
from .evaluate import evaluate_policy, win_rate
from .labelling import PreferenceData, flip_labels, label, make_pairs, make_ranked
from .models import SFTConfig, default_cache_dir
from .run import ArenaConfig, default_objectives, resolve_objectives, run_arena
from .tasks import TASKS, ConciseTask, RefuseTask, SortTask, Task, get_task
from . import annotators  # noqa: F401,E402  (registers sort_style: sort labelled by a style-biased annotator)

__all__ = ["ArenaConfig", "ConciseTask", "PreferenceData", "RefuseTask", "SFTConfig", "SortTask", "TASKS", "Task",
           "default_cache_dir", "default_objectives", "evaluate_policy", "flip_labels", "get_task", "label",
           "make_pairs", "make_ranked", "resolve_objectives", "run_arena", "win_rate"]
