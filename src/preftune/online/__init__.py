"""preftune.online: on-policy training -- generate, score, learn -- on the trainer's batch-source seam.

A rollout source (:mod:`preftune.online.rollout`) samples responses from the live policy, scores them with a
reward source (:mod:`preftune.online.rewards`: a Python function, a reward model, an arena task's true reward,
or several combined) and hands the loop batches of the kind the objective takes: groups of K scored responses
for GRPO/RLOO/REINFORCE (:mod:`preftune.online.objectives`), judged pairs for online DPO (any pair objective).
Iterative DPO runs rounds of generate -> label -> offline DPO with the previous round's policy as reference.
``preftune online`` is the command (:mod:`preftune.cli.online`); :func:`train_online` the Python entry point.
"""
from typing import Any

_LAZY = {"ALGORITHMS": "config", "OnlineConfig": "config", "train_online": "run"}


def __getattr__(name: str) -> Any:  # lazy: the objective registry imports preftune.online.objectives
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["ALGORITHMS", "OnlineConfig", "train_online"]
