"""The objective interface: stats in, per-example loss and named metrics out.

An objective is a small dataclass whose fields are its hyperparameters. Hyperparameters are
declared with :func:`hp`, which records a help text and the allowed range; they are
validated once, when the objective is built, with a message that says what is allowed.

Three kinds of input:

* :class:`PairStats` -- a chosen and a rejected response per prompt (DPO and its family);
* :class:`UnpairedStats` -- one response per prompt with a desirable/undesirable label (KTO, BCO, NPO);
* :class:`ListStats` -- K ranked responses per prompt (Plackett-Luce, TPO).

All log-probabilities are *summed over response tokens* unless a field says otherwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError

# ----------------------------------------------------------------------------- stats


@dataclass
class PairStats:
    """Per-pair statistics for paired objectives. Shapes: ``[B]`` unless noted.

    The ``*_token_logps`` fields are ``[B, T]`` per-token log-probs of the response tokens,
    zero outside ``chosen_mask`` / ``rejected_mask`` (``[B, T]`` bool). Token-level objectives
    need them; the trainer fills them only when the objective asks (``Objective.needs``).
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    reference_chosen_logps: Tensor | None = None
    reference_rejected_logps: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    policy_chosen_token_logps: Tensor | None = None
    policy_rejected_token_logps: Tensor | None = None
    reference_chosen_token_logps: Tensor | None = None
    reference_rejected_token_logps: Tensor | None = None
    chosen_mask: Tensor | None = None
    rejected_mask: Tensor | None = None
    score_chosen: Tensor | None = None
    score_rejected: Tensor | None = None
    margin: Tensor | None = None
    weight: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.policy_chosen_logps.shape[0]

    @property
    def has_reference(self) -> bool:
        return self.reference_chosen_logps is not None and self.reference_rejected_logps is not None


@dataclass
class UnpairedStats:
    """Per-example statistics for unpaired (thumbs-up/down) objectives. Shapes ``[B]``.

    ``label`` is bool: True for a desirable completion. ``kl_policy_logps`` /
    ``kl_reference_logps`` are log-probs of *mismatched* prompt-completion pairs, used by
    KTO's batch estimate of the KL term (optional).
    """

    policy_logps: Tensor
    label: Tensor
    reference_logps: Tensor | None = None
    lengths: Tensor | None = None
    policy_token_logps: Tensor | None = None
    reference_token_logps: Tensor | None = None
    mask: Tensor | None = None
    kl_policy_logps: Tensor | None = None
    kl_reference_logps: Tensor | None = None
    weight: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.policy_logps.shape[0]

    @property
    def has_reference(self) -> bool:
        return self.reference_logps is not None


@dataclass
class ListStats:
    """Statistics for listwise objectives: K responses per prompt. Shapes ``[B, K]``.

    ``scores`` are the given preference scores (higher is better); ``valid`` masks padded
    list entries (lists may have different lengths within a batch).
    """

    policy_logps: Tensor
    scores: Tensor
    reference_logps: Tensor | None = None
    lengths: Tensor | None = None
    valid: Tensor | None = None
    policy_token_logps: Tensor | None = None
    reference_token_logps: Tensor | None = None
    mask: Tensor | None = None
    weight: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.policy_logps.shape[0]

    @property
    def has_reference(self) -> bool:
        return self.reference_logps is not None


Stats = PairStats | UnpairedStats | ListStats
KIND_OF_STATS: dict[str, type] = {"pair": PairStats, "unpaired": UnpairedStats, "list": ListStats}


@dataclass
class ObjectiveOutput:
    """``loss``: per-example loss ``[B]`` (the trainer takes the mean). ``metrics``: named scalars."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- hyperparameters


def hp(default: Any, help: str, *, low: float | None = None, high: float | None = None,
       low_open: bool = False, high_open: bool = False, choices: tuple | None = None) -> Any:
    """Declare a hyperparameter: a dataclass field with a help text and its allowed values.

    ``low``/``high`` bound numbers (closed unless ``low_open``/``high_open``); ``choices``
    lists the allowed values of a categorical one.
    """
    meta = {"help": help, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "choices": choices}
    return field(default=default, metadata={"hp": meta})


def _describe_range(meta: dict) -> str:
    if meta["choices"] is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta["low"], meta["high"]
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta['low_open'] else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if meta['high_open'] else '<='} {hi:g}")
    return " and ".join(parts) if parts else "any value"


# ----------------------------------------------------------------------------- objective base


class Objective:
    """Base class of every objective. Subclasses are dataclasses of hyperparameters.

    Class attributes describe the objective for the registry, the trainer and the docs:

    * ``name`` -- registry name; ``paper`` -- citation with equation (``"P12 eq. 5"``);
    * ``kind`` -- ``"pair"``, ``"unpaired"`` or ``"list"``: which stats type it takes;
    * ``needs_reference`` -- whether reference log-probs must be given;
    * ``needs`` -- optional stats fields it reads (``"chosen_lengths"``, ``"token_logps"``,
      ``"margin"``, ...), so the trainer computes only what is used.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    kind: ClassVar[str] = "pair"
    needs_reference: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every hyperparameter against its declared range. Subclasses may add checks."""
        for f in dataclasses.fields(self):
            if "hp" in f.metadata:
                _check_one(self, f)

    def __call__(self, stats: Stats) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # state ----------------------------------------------------------------------------
    # An objective may own trainable parameters (SparsePO's learned masks) or running state (BCO's
    # reward shift, LCPO's noise-rate estimate). It holds them as ``torch.nn.Module`` attributes
    # (buffers for running state), so that :func:`objective_state` finds them: the trainer puts their
    # parameters in the optimizer beside the policy's, and saves and restores their state dict in
    # every checkpoint. Called alone, an objective keeps its state on itself as usual.
    def children(self) -> list["Objective"]:
        """The objectives this one is built from (a composition's terms, a wrapper's base)."""
        return []

    def bind(self, model: Any) -> None:
        """Build what depends on the policy (e.g. a head sized by its hidden size) before training.
        Most objectives need nothing; a composition or wrapper binds its parts."""
        for child in self.children():
            child.bind(model)

    def own_modules(self) -> dict[str, torch.nn.Module]:
        """This objective's own state modules (not its children's), by attribute name."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.nn.Module)}

    # helpers shared by subclasses -------------------------------------------------------
    def check_stats(self, stats: Stats) -> None:
        expected = KIND_OF_STATS[self.kind]
        if not isinstance(stats, expected):
            raise TypeError(f"objective '{self.name}' takes {expected.__name__}, got {type(stats).__name__}")
        if self.needs_reference and not stats.has_reference:
            raise ValueError(f"objective '{self.name}' needs reference log-probs; none were given "
                             "(use a reference source other than 'none')")

    @classmethod
    def hyperparameters(cls) -> dict[str, dict]:
        """Name -> {default, help, allowed} for every hyperparameter."""
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            meta = f.metadata.get("hp")
            if meta is None:
                continue
            out[f.name] = {"default": f.default, "help": meta["help"], "allowed": _describe_range(meta)}
        return out

    def config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if "hp" in f.metadata}


class ObjectiveState(torch.nn.Module):
    """Everything an objective (and its parts) owns, as one module: ``parameters()`` go to the
    optimizer, ``state_dict()`` to checkpoints. Own modules keep their attribute names
    (``sparse_mask_head.proj.weight``); a part's modules are nested under ``term<i>`` / ``base``."""


def objective_state(objective: "Objective") -> ObjectiveState:
    """The :class:`ObjectiveState` of ``objective``: its modules and those of its parts (shared, not
    copied: training the returned module trains the objective)."""
    st = ObjectiveState()
    for name, mod in objective.own_modules().items():
        st.add_module(name, mod)
    for i, child in enumerate(objective.children()):
        sub = objective_state(child)
        if len(sub.state_dict()):
            st.add_module("base" if isinstance(objective, Wrapper) else f"term{i}", sub)
    return st


def walk(objective: "Objective"):
    """``objective`` and, depth first, every objective it is built from."""
    yield objective
    for child in objective.children():
        yield from walk(child)


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: add an objective dataclass to the registry under ``cls.name``."""
    from ..registry import add

    return add(_REGISTRY, cls.name, cls, "objective")


def available() -> list[str]:
    """Sorted names of all registered objectives."""
    _load_builtin()
    return sorted(_REGISTRY)


# Other names of registered objectives: TRL's ``DPOConfig.loss_type`` names where they mean the same
# objective. A registered name always wins over an alias.
ALIASES: dict[str, str] = {
    "sigmoid": "dpo",          # TRL's default loss_type
    "robust": "rdpo",          # TRL's robust DPO (Chowdhury et al. 2024); preftune's default eps is 0.1
    "sigmoid_norm": "ln_dpo",  # TRL's length-normalized sigmoid loss
}


def objective_class(name: str) -> type[Objective]:
    """The registered objective class of ``name`` (or of an alias in :data:`ALIASES`)."""
    _load_builtin()
    if name not in _REGISTRY and isinstance(name, str) and ALIASES.get(name) in _REGISTRY:
        name = ALIASES[name]
    if name not in _REGISTRY:
        aliases = ", ".join(f"{a} (= {t})" for a, t in ALIASES.items() if t in _REGISTRY)
        raise ConfigError(f"unknown objective '{name}'; available: {', '.join(sorted(_REGISTRY))}"
                          + (f"; TRL names: {aliases}" if aliases else ""))
    return _REGISTRY[name]


def get(name: str, **hparams: Any) -> Objective:
    """Build a registered objective with the given hyperparameters.

    Raises ``ValueError`` (``ConfigError``) for an unknown name or hyperparameter, listing the valid ones.
    """
    cls = objective_class(name)
    valid = cls.hyperparameters()
    if issubclass(cls, Wrapper):
        # Hyperparameters the wrapper does not declare go to its base objective (validated there).
        own = {k: v for k, v in hparams.items() if k in valid}
        base_hp = {k: v for k, v in hparams.items() if k not in valid}
        return cls(**own, base_hparams=base_hp)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        listing = ", ".join(f"{k} (default {v['default']!r})" for k, v in valid.items()) or "none"
        raise ConfigError(f"objective '{name}' has no hyperparameter {', '.join(unknown)}; valid: {listing}")
    return cls(**hparams)


def _load_builtin() -> None:
    # Importing the package registers the built-in objectives (each module decorates its classes).
    from . import _builtin  # noqa: F401


# ----------------------------------------------------------------------------- shared metric helpers


def mean_metric(x: Tensor) -> Tensor:
    return x.detach().float().mean()


def reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, stats: PairStats | None = None) -> dict[str, Tensor]:
    """TRL-named reward metrics from per-pair implicit rewards (and log-probs if ``stats`` given)."""
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    m = {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
        "rewards/accuracies": (c > r).float().mean(),
    }
    if stats is not None:
        m["logps/chosen"] = mean_metric(stats.policy_chosen_logps)
        m["logps/rejected"] = mean_metric(stats.policy_rejected_logps)
    return m


def logratios(stats: PairStats) -> tuple[Tensor, Tensor]:
    """Policy/reference log-ratios of chosen and rejected: log pi(y|x) - log pi_ref(y|x)."""
    assert stats.reference_chosen_logps is not None and stats.reference_rejected_logps is not None
    return (stats.policy_chosen_logps - stats.reference_chosen_logps,
            stats.policy_rejected_logps - stats.reference_rejected_logps)


def apply_weight(loss: Tensor, weight: Tensor | None) -> Tensor:
    """Multiply a per-example loss by an optional per-example weight column."""
    return loss if weight is None else loss * weight.to(loss.dtype)


Factory = Callable[..., Objective]


# ----------------------------------------------------------------------------- wrappers


@dataclass
class Wrapper(Objective):
    """An objective that reweights or augments any *base* objective (LCPO, MADPO, WPO).

    ``base`` is a registered name (or an already built :class:`Objective`); ``base_hparams``
    are passed to it. ``get("lcpo", base="ipo", beta=0.5)`` sends ``beta`` to IPO because the
    wrapper does not declare it. The wrapper takes the base's kind, reference need and needs,
    plus its own ``extra_needs``.
    """

    base: Any = hp("dpo", "name of the wrapped objective (any registered pair objective)")
    base_hparams: dict = field(default_factory=dict, repr=False)
    extra_needs: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "base" and "hp" in f.metadata:
                _check_one(self, f)
        if isinstance(self.base, Objective):
            self.base_objective = self.base
        elif isinstance(self.base, str):
            self.base_objective = get(self.base, **self.base_hparams)
        else:
            raise ConfigError(f"objective '{self.name}': base must be an objective name, got {self.base!r}")
        if not getattr(self.base_objective, "accepts_weights", True):
            raise ConfigError(f"objective '{self.name}' reweights pairs; '{self.base_objective.name}' sorts its "
                              "batch into quantiles, where per-pair weights would land on other pairs")
        if self.base_objective.kind != "pair":
            raise ConfigError(f"objective '{self.name}' wraps pair objectives; '{self.base_objective.name}' "
                              f"takes {self.base_objective.kind} data")
        self.needs_reference = self.base_objective.needs_reference or type(self).needs_reference_own  # type: ignore[misc]
        self.needs = tuple(sorted(set(self.base_objective.needs) | set(self.extra_needs)))  # type: ignore[misc]

    needs_reference_own: ClassVar[bool] = False

    def children(self) -> list[Objective]:
        return [self.base_objective]

    def config(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if "hp" in f.metadata and f.name != "base"}
        out["base"] = self.base_objective.name
        out.update({f"base.{k}": v for k, v in self.base_objective.config().items()})
        return out


def _check_one(obj: Objective, f: dataclasses.Field) -> None:
    meta = f.metadata["hp"]
    value = getattr(obj, f.name)
    ok = True
    if meta["choices"] is not None:
        ok = value in meta["choices"]
    elif meta["low"] is not None or meta["high"] is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            ok = False
        else:
            lo, hi = meta["low"], meta["high"]
            if lo is not None and (value < lo or (meta["low_open"] and value == lo)):
                ok = False
            if hi is not None and (value > hi or (meta["high_open"] and value == hi)):
                ok = False
    if not ok:
        raise ConfigError(
            f"objective '{obj.name}': {f.name}={value!r} is not allowed; "
            f"{f.name} must be {_describe_range(meta)} ({meta['help']})")


# ----------------------------------------------------------------------------- pair helpers


def swap_pair(stats: PairStats) -> PairStats:
    """The same pairs with chosen and rejected exchanged (the label flipped)."""
    sw = {"policy_chosen_logps": "policy_rejected_logps", "reference_chosen_logps": "reference_rejected_logps",
          "chosen_lengths": "rejected_lengths", "policy_chosen_token_logps": "policy_rejected_token_logps",
          "reference_chosen_token_logps": "reference_rejected_token_logps", "chosen_mask": "rejected_mask",
          "score_chosen": "score_rejected"}
    sw.update({v: k for k, v in sw.items()})
    kw = {f.name: getattr(stats, sw.get(f.name, f.name)) for f in dataclasses.fields(stats)}
    if stats.margin is not None:
        kw["margin"] = -stats.margin
    return PairStats(**kw)


def require(stats: Any, name: str, *fields: str) -> None:
    """Raise a clear error when an objective's optional stats fields are missing."""
    missing = [f for f in fields if getattr(stats, f, None) is None]
    if missing:
        raise ValueError(f"objective '{name}' needs stats fields {', '.join(missing)}; "
                         f"they were not given (does the objective declare them in `needs`?)")


def require_extras(stats: Any, name: str, *keys: str) -> None:
    missing = [k for k in keys if k not in stats.extras]
    if missing:
        raise ValueError(f"objective '{name}' needs extras {', '.join(repr(k) for k in missing)} in its stats; "
                         "see docs/objectives.md for what the trainer must supply")


def masked_mean(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)
