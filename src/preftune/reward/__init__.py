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
           "load_reward_model", "load_scorer", "train_reward_ensemble", "train_reward_model",
           # the seed papers' methods, imported on first use (see docs/reward.md)
           "GPM", "GPMHead", "LastTokenEncoder", "gpm_loss", "preference_score", "score_matrix", "policy_scores",
           "train_gpm", "PairStrength", "pair_strength", "strength_of_pairs", "with_strength", "flip_detection_auroc",
           "DensityRatioReward", "density_ratio", "fit_power_law", "PowerLawFit", "run_scaling_grid", "ScalingConfig",
           "CausalLMWithValueHead", "load_value_head_model", "load_value_reward_model",
           "train_value_head_reward_model"]

_LAZY = {"GPM": "gpm", "GPMHead": "gpm", "LastTokenEncoder": "gpm", "gpm_loss": "gpm", "preference_score": "gpm",
         "score_matrix": "gpm", "policy_scores": "gpm", "train_gpm": "gpm_train", "PairStrength": "strength",
         "pair_strength": "strength", "strength_of_pairs": "strength", "with_strength": "strength",
         "flip_detection_auroc": "strength", "DensityRatioReward": "density_ratio", "density_ratio": "density_ratio",
         "fit_power_law": "scaling", "PowerLawFit": "scaling", "run_scaling_grid": "scaling",
         "ScalingConfig": "scaling", "CausalLMWithValueHead": "value_model", "load_value_head_model": "value_model",
         "load_value_reward_model": "value_model", "train_value_head_reward_model": "value_model"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
