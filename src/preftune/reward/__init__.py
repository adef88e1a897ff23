"""preftune.reward: reward models trained from preferences, and a batched scoring interface.

>>> from preftune.reward import train_reward_model, RewardModel       # doctest: +SKIP
>>> result = train_reward_model(TrainConfig(model="base", data="pairs.jsonl", output="runs/rm"))  # doctest: +SKIP
>>> rm = RewardModel.from_pretrained("runs/rm/final")                 # doctest: +SKIP
>>> rm.score(["What is 2+2?"], [" 4."])                               # doctest: +SKIP

A reward model is another forward on the same training loop (:class:`ScoreForward`: the model's scalar score of
each chosen and rejected sequence) with a Bradley-Terry objective (:mod:`preftune.reward.objectives`).
"""
from .ensemble import EnsembleScores, RewardEnsemble, train_reward_ensemble
from .evaluate import evaluate_reward, load_scorer
from .forward import PairScores, ScoreForward
from .model import RewardModel, load_reward_model
from .train import train_reward_model

__all__ = ["EnsembleScores", "PairScores", "RewardEnsemble", "RewardModel", "ScoreForward", "evaluate_reward",
           "load_reward_model", "load_scorer", "train_reward_ensemble", "train_reward_model"]
