"""Reward-model ensembles: N reward models (other seeds, other data orders) scored together.

>>> from preftune.reward.ensemble import RewardEnsemble, train_reward_ensemble     # doctest: +SKIP
>>> cfg = TrainConfig(model="base", data="pairs.jsonl", output="runs/rm-ens")      # doctest: +SKIP
>>> ens = train_reward_ensemble(cfg, 3)                                            # doctest: +SKIP
>>> s = ens.score(["What is 2+2?"], [" 4."])                                       # doctest: +SKIP
>>> s.mean, s.std, s.conservative                                                  # doctest: +SKIP

The spread of an ensemble's members is a cheap uncertainty estimate, and ``mean - k * std`` a conservative
reward that a policy gains less from exploiting where the members disagree (Coste et al. 2023, "Reward model
ensembles help mitigate overoptimization"; Eisenstein et al. 2023, "Helping or herding?"). ``std`` is the
population standard deviation over members (``correction=0``), so one member has spread 0.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError

SCORES = ("mean", "conservative", "std")


@dataclass
class EnsembleScores:
    """Per-response ensemble scores, each ``[N]`` float32 on the CPU; ``members`` is ``[M, N]``."""

    mean: torch.Tensor
    std: torch.Tensor
    conservative: torch.Tensor
    members: torch.Tensor
    k: float


class RewardEnsemble:
    """Scores (prompt, response) pairs with every member and combines them: ``mean``, ``std`` (the spread over
    members) and ``conservative = mean - k * std``.

    A member is anything with ``score(prompts, responses) -> [N] tensor`` (a :class:`~preftune.reward.RewardModel`,
    another ensemble's :meth:`as_reward_model`, a function wrapped in a class); each scores in its own batches
    without gradient, as ``RewardModel.score`` does."""

    def __init__(self, models: Sequence[Any], *, k: float = 1.0):
        models = list(models)
        if not models:
            raise ConfigError("a reward ensemble needs at least one member")
        bad = [i for i, m in enumerate(models) if not callable(getattr(m, "score", None))]
        if bad:
            raise ConfigError(f"ensemble member(s) {bad} have no score(prompts, responses) method")
        if not (isinstance(k, (int, float)) and k >= 0):
            raise ConfigError(f"k must be a number >= 0, got {k!r}")
        self.models, self.k = models, float(k)
        self.results: list[Any] = []   # the trainer's RunResult per member, when train_reward_ensemble built it

    def __len__(self) -> int:
        return len(self.models)

    @classmethod
    def from_pretrained(cls, paths: Sequence[str | Path], *, k: float = 1.0, **kw: Any) -> "RewardEnsemble":
        """An ensemble of saved reward models (``final/`` directories), each loaded as a ``RewardModel``."""
        from .model import RewardModel

        return cls([RewardModel.from_pretrained(p, **kw) for p in paths], k=k)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], *, k: float | None = None) -> EnsembleScores:
        """Every member's ``[N]`` scores stacked to ``[M, N]``, with their mean, spread and ``mean - k*std``
        (``k`` defaults to the ensemble's)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        k = self.k if k is None else float(k)
        rows = []
        for i, m in enumerate(self.models):
            s = torch.as_tensor(m.score(list(prompts), list(responses))).detach().float().cpu().reshape(-1)
            if s.shape[0] != len(prompts):
                raise ValueError(f"ensemble member {i} returned {s.shape[0]} scores for {len(prompts)} responses")
            rows.append(s)
        members = torch.stack(rows)
        mean = members.mean(0)
        std = members.std(0, correction=0)
        return EnsembleScores(mean, std, mean - k * std, members, k)

    def as_reward_model(self, which: str = "conservative") -> "EnsembleReward":
        """The ensemble as a plain reward model: ``score`` returns one ``[N]`` tensor (``which``: ``mean``,
        ``conservative`` or ``std``), so it goes wherever a ``RewardModel`` does (e.g. as another ensemble's
        member or as a labeller)."""
        return EnsembleReward(self, which)


class EnsembleReward:
    """:meth:`RewardEnsemble.as_reward_model`: one of the ensemble's scores as ``score(...) -> [N] tensor``."""

    def __init__(self, ensemble: RewardEnsemble, which: str = "conservative"):
        if which not in SCORES:
            raise ConfigError(f"which='{which}'; use one of {', '.join(SCORES)}")
        self.ensemble, self.which = ensemble, which

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return getattr(self.ensemble.score(prompts, responses), self.which)


def train_reward_ensemble(config: Any, n: int, *, model: Any = None, tokenizer: Any = None,
                          train_examples: Sequence[Any] | None = None, eval_examples: Sequence[Any] | None = None,
                          k: float = 1.0, callbacks: Sequence[Any] = (), max_length: int | None = None,
                          batch_size: int = 16) -> RewardEnsemble:
    """Train ``n`` reward models with :func:`~preftune.reward.train_reward_model` and return their ensemble.

    Member ``i`` trains with ``seed = config.seed + i`` (its data order and, for a causal-LM or path base, its
    new score head's initialisation) into ``<config.output>/member-i``; everything else is ``config``. ``model``
    (a sequence classifier in memory) is deep-copied per member, so those members share the initial head and
    differ by data order. The members are the trained models in memory, wrapped as ``RewardModel`` (scoring with
    ``max_length``, default ``config.max_length``); ``ensemble.results`` holds each member's ``RunResult``
    (``final_dir`` is ``member-i/final`` when ``config.save_final``)."""
    from ..train.setup import load_tokenizer_for, pick_device
    from .model import RewardModel, load_reward_model
    from .train import train_reward_model

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"an ensemble needs n >= 1 members, got {n!r}")
    if not config.output:
        raise ConfigError("no output directory: set output (members go to <output>/member-i)")
    tokenizer = load_tokenizer_for(config, tokenizer)
    members, results = [], []
    for i in range(n):
        cfg = config.replace(seed=config.seed + i, output=str(Path(config.output) / f"member-{i}"))
        if model is not None:
            m = copy.deepcopy(model)
        else:
            if not cfg.model:
                raise ConfigError("no model given: set model")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)   # the new score head of a causal LM differs per member, reproducibly
                m = load_reward_model(cfg.model, tokenizer=tokenizer, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code, device=pick_device(cfg.device))
        res = train_reward_model(cfg, model=m, tokenizer=tokenizer, train_examples=train_examples,
                                 eval_examples=eval_examples, callbacks=callbacks)
        results.append(res)
        members.append(RewardModel(res.model, res.tokenizer or tokenizer,
                                   max_length=max_length if max_length is not None else config.max_length,
                                   batch_size=batch_size))
    ens = RewardEnsemble(members, k=k)
    ens.results = results
    return ens
