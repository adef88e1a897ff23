"""The online options (what to sample and how to score it) and the algorithms, as data.

An online run has two configurations: the trainer's :class:`~preftune.train.TrainConfig` (model, optimizer,
checkpoints, ``loss`` and its hyperparameters: ``beta``, ``epsilon``, ...) and an :class:`OnlineConfig` (the
algorithm, prompts, reward sources, sampling). A recipe or a command line holds both; :func:`split_options`
separates them by name. TRL's names are accepted where they mean the same (``max_completion_length`` is
``max_new_tokens``; ``loss_type: dapo`` selects the ``dapo`` normalisation, an objective of its own here).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..train.coerce import FieldError, coerce_value, join_strings


@dataclass(frozen=True)
class Algorithm:
    """A recipe on the loop: which rollout source, which default objective and sampling defaults."""

    name: str
    source: str            # "group": K scored samples per prompt (list kind); "pair": judged pairs; "rounds";
                           # "selfplay"; "custom": a runner of its own (``runner``)
    loss: str              # default objective (any objective of the source's data kind may replace it)
    num_generations: int
    description: str
    # "custom" algorithms: "module:function" called as fn(cfg, online, prompts, reward, model=, tokenizer=,
    # callbacks=) -> RunResult, with the trainer config, the OnlineConfig, tokenized prompts and the reward source
    # (None when only --preference-fn was given); the runner checks its own options with one-line ConfigErrors
    runner: str = ""
    needs_judge: bool = True  # False: the algorithm judges without a reward or preference function (P28's self-judging)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", "group", "grpo", 8,
              "GRPO (Shao et al. 2024): K samples per prompt, group-normalised advantages, clipped surrogate; "
              "--loss dapo|bnpo|dr_grpo picks TRL's other normalisations"),
    Algorithm("rloo", "group", "rloo", 4,
              "RLOO (Ahmadian et al. 2024): REINFORCE with the leave-one-out baseline of the prompt's other samples"),
    Algorithm("reinforce", "group", "reinforce", 1,
              "REINFORCE with a moving-average baseline (Williams 1992)"),
    Algorithm("ppo", "group", "ppo", 1,
              "PPO (Schulman et al. 2017; as P04 compares it with DPO): a value head on the policy, GAE, the KL "
              "penalty in the per-token reward, clipped policy and value losses; --num-iterations = PPO epochs"),
    Algorithm("online_dpo", "pair", "dpo", 2,
              "online DPO (Guo et al. 2024): two samples of the current policy per prompt, the better one by the "
              "reward (or --preference-fn) chosen; any pair objective (--loss ipo, ...)"),
    Algorithm("iterative_dpo", "rounds", "dpo", 4,
              "iterative DPO (Xu et al. 2023; Xiong et al. 2024): rounds of generate K -> best/worst pair -> "
              "offline DPO with the round's starting policy as reference"),
    Algorithm("rso", "rounds", "dpo", 8,
              "RSO (P34, Liu et al. 2024): rounds of K candidates, two accepted by statistical rejection sampling "
              "towards pi exp(r / beta) (--rso-beta), the better one chosen; --loss dpo (sigmoid) or hinge"),
    Algorithm("sppo", "selfplay", "sppo", 4,
              "SPPO (P61, Wu et al. 2024): rounds of K samples of pi_t, each one's win rate against the others "
              "by --preference-fn (or a reward, as Bradley-Terry), squared loss to eta (win rate - 1/2)"),
    Algorithm("drift", "custom", "dpo", 1, "DRIFT (P14, Wang et al. 2025): rounds of DPO on (a sample of pi_t, a logged dissatisfied response from --prompts' --dsat-column), pi_t as reference; no reward needed", runner="preftune.online.drift:train_drift", needs_judge=False),
    Algorithm("inpo", "selfplay", "inpo", 2,
              "INPO (P11, Zhang et al. 2024): rounds of pairs of pi_t labelled by --preference-fn, squared loss "
              "(h_t - eta/2)^2 towards pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t))"),
    Algorithm("egpo", "custom", "egpo", 1, "EGPO (P47, Zhou et al. 2025): extragradient steps on the online IPO loss (--tau) -- a half step against opponents y'' of pi_t, then the step from the saved parameters and optimizer state against opponents of the half-step policy; --num-generations opponents per prompt, judged by --preference-fn (or a reward, as Bradley-Terry)", runner="preftune.online.egpo:train_egpo"),
    Algorithm("upo", "custom", "dpo", 4, "UPO (P54, Wang et al. 2024): rounds of K samples -> reward-labelled pairs -> an MC-dropout estimator (--upo-estimator) drops pairs it votes against and samples easy/hard ones by BALD -> DPO", runner="preftune.online.upo:train_upo"),
    Algorithm("osp", "custom", "spce", 4, "OSP (P28, Zhai et al. 2024): rounds of K samples of pi_t judged by pi_t itself (--osp-template; no reward needed), ranked pairing into pairs with preference strengths, soft-preference cross-entropy (spce)", runner="preftune.online.self_preferring:train_self_preferring", needs_judge=False),
)}


@dataclass
class OnlineConfig:
    algo: str = "grpo"
    prompts: Any = ""                    # a prompt file (JSONL/JSON/CSV/Parquet/dataset dir) or, in Python, rows
    prompt_column: str = "prompt"
    task: str | None = None              # an arena task: its prompts (when --prompts is absent) and true reward
    task_prompts: int = 256              # prompts sampled from --task when no --prompts is given
    reward_fn: list[str] = field(default_factory=list)     # FILE.py:FUNCTION, several allowed
    reward_model: list[str] = field(default_factory=list)  # reward-model directories
    reward_weights: list[float] = field(default_factory=list)
    preference_fn: str | None = None     # FILE.py:FUNCTION(prompts, a, b) -> P(a > b), for online_dpo
    num_generations: int | None = None   # K; default: the algorithm's
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_iterations: int = 1              # optimizer passes over each generation batch (TRL's num_iterations)
    generation_batch_size: int = 64      # sequences per model.generate call
    on_bad_reward: str = "error"
    log_completions: bool = True
    rounds: int = 3                      # iterative_dpo, rso, sppo, inpo
    rso_beta: float = 0.5                # rso: the temperature of the rejection sampler's target pi exp(r / beta)
    egpo_pairs: str = "policy"           # egpo: y, y' sampled from the policy stepped from ("policy") or pi_ref ("ref")
    egpo_half_step: bool = True          # egpo: False drops the extragradient half step (online IPO, an ablation)
    upo_estimator: str = ""              # upo: the preference estimator, a reward-model directory (MC dropout)
    mc_dropout_passes: int = 10          # upo: T stochastic forward passes of the estimator (the authors' 10)
    mc_dropout_rate: float = 0.0         # upo: > 0 sets every dropout rate of the estimator (0: keep its own)
    upo_easy_rate: float = 0.5           # upo: share of the agreeing pairs drawn as easy (weight 1 - BALD)
    upo_hard_rate: float = 0.1           # upo: share of the agreeing pairs drawn as hard (weight BALD)
    dsat_column: str = "rejected"        # drift: the --prompts column holding the logged dissatisfied response
    osp_judge: str = "self"              # osp: who judges the samples: self (the policy), reward or preference
    osp_template: str = "{prompt} A:{a} B:{b} better:"  # osp: the self-judge's prompt ({prompt}, {a}, {b})
    osp_verdicts: str = "A,B"            # osp: the judge's two answers, 'a is better' and 'b is better'
    osp_pairing: str = "nested"          # osp: ranked pairing: nested (1st-Kth, 2nd-(K-1)th, ...) or all
    generation_process: bool = False     # generate and score in a separate process (online/async_source.py)
    max_staleness: int = 0               # --generation-process: batches sampled with weights N optimizer steps old
    weight_sync_timeout: float = 600.0   # --generation-process: seconds any wait on the other process may take

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "prompts":
                continue
            v = getattr(self, f.name)
            if f.name in ("reward_fn", "reward_model") or f.name == "reward_weights":
                v = join_strings(v) if isinstance(v, str) else v
            try:
                setattr(self, f.name, coerce_value(f.name, v, _TYPES[f.name]))
            except FieldError as e:
                raise ConfigError(str(e)) from None
        self.validate()

    @property
    def algorithm(self) -> Algorithm:
        return ALGORITHMS[self.algo]

    @property
    def k(self) -> int:
        return self.num_generations or self.algorithm.num_generations

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.algo in ALGORITHMS, f"--algo {self.algo}: unknown; choose one of {', '.join(ALGORITHMS)}")
        need(self.num_generations is None or self.num_generations >= 1,
             f"num_generations must be >= 1, got {self.num_generations}")
        src = self.algorithm.source
        need(src != "pair" or self.k >= 2, f"{self.algo} samples a pair per prompt: num_generations must be >= 2")
        need(src != "rounds" or self.k >= 2, f"{self.algo} picks best and worst of K: num_generations must be >= 2")
        need(src != "selfplay" or self.k >= 2, f"{self.algo} judges samples against each other: num_generations >= 2")
        need(self.algo != "rloo" or self.k >= 2, "rloo's leave-one-out baseline needs num_generations >= 2")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        need(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        need(self.num_iterations == 1 or src == "group",
             f"num_iterations > 1 reuses a generation batch with importance ratios: grpo and ppo take it, "
             f"not {self.algo}")
        need(self.generation_batch_size >= 1, "generation_batch_size must be >= 1")
        need(self.on_bad_reward in ("error", "skip"), f"on_bad_reward must be error or skip, got {self.on_bad_reward}")
        need(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        need(self.rso_beta > 0, f"rso_beta must be > 0, got {self.rso_beta}")
        need(self.task_prompts >= 1, f"task_prompts must be >= 1, got {self.task_prompts}")
        need(not self.generation_process or src in ("group", "pair"),
             f"--generation-process takes grpo, rloo, reinforce or online_dpo, not {self.algo}")
        need(self.max_staleness >= 0, f"max_staleness must be >= 0, got {self.max_staleness}")
        need(self.weight_sync_timeout > 0, f"weight_sync_timeout must be > 0, got {self.weight_sync_timeout}")
        need(self.generation_process or self.max_staleness == 0, "--max-staleness needs --generation-process")
        need(self.preference_fn is None or src in ("pair", "selfplay", "custom"),
             f"--preference-fn judges pairs of samples: it is for online_dpo, sppo and inpo, not {self.algo}")
        need(self.preference_fn is None or src in ("selfplay", "custom") or self.k == 2,
             f"--preference-fn judges two samples per prompt: --num-generations must be 2, got {self.k}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.prompts, str):
            d["prompts"] = f"<{type(self.prompts).__name__}: {len(self.prompts)} rows>" \
                if hasattr(self.prompts, "__len__") else f"<{type(self.prompts).__name__}>"
        return d


_TYPES = typing.get_type_hints(OnlineConfig)
ONLINE_KEYS = frozenset(f.name for f in dataclasses.fields(OnlineConfig))
# TRL's GRPOConfig / OnlineDPOConfig names for the same options
ONLINE_ALIASES = {"max_completion_length": "max_new_tokens", "reward_funcs": "reward_fn",
                  "per_device_generation_batch_size": "generation_batch_size"}


def split_options(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A recipe's or command line's keys -> (online options, trainer options and objective hyperparameters)."""
    online: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for raw, v in d.items():
        key = ONLINE_ALIASES.get(raw.replace("-", "_"), raw.replace("-", "_"))
        if key in ONLINE_KEYS:
            if key in online and online[key] != v:
                raise ConfigError(f"{key} is given twice, with different values ({online[key]!r} and {v!r})")
            online[key] = v
        else:
            rest[raw] = v
    return online, rest


__all__ = ["ALGORITHMS", "Algorithm", "ONLINE_KEYS", "OnlineConfig", "split_options"]
