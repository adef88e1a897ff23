"""Every ranking method by name: ``get(name, **hyperparameters)`` returns a loss (a callable, or a module for
stateful and learnable methods), ``available()`` the names, ``describe(name)`` its paper, inputs and
hyperparameters -- so a loop can try several by changing a string (``preftune ranking list`` prints them).

>>> from preftune.ranking import get
>>> loss = get("mw", temperature=0.5)          # the Mann-Whitney / AUC loss (P43) with its hyperparameter bound
>>> sorted(available())[:3]
['aldr_kl', 'amcl', 'bpr']
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

REQUIRED = "<required>"  # a hyperparameter without a default (a size the module needs)


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    target: str                 # "module:attribute" under preftune.ranking
    inputs: str
    replaces: str = ""

    def obj(self) -> Any:
        import importlib

        mod, attr = self.target.split(":")
        return getattr(importlib.import_module(f"preftune.ranking.{mod}"), attr)

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.obj())

    def hyperparameters(self) -> dict[str, Any]:
        """Name -> default of every keyword the method takes besides its tensor inputs (:data:`REQUIRED` when it
        has none)."""
        o = self.obj()
        sig = inspect.signature(o.__init__ if inspect.isclass(o) else o)
        out = {}
        for p in sig.parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if inspect.isclass(o) or p.kind == p.KEYWORD_ONLY:
                out[p.name] = REQUIRED if p.default is p.empty else p.default
        return out


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ranklist", "P22 RankList", "ranklist:ranklist_loss", "scores [Q, C], relevance [Q, C]", "ranknet, listnet"),
    Method("ranknet", "Burges et al. 2005 (RankNet)", "ranklist:ranknet_loss", "scores [Q, C], relevance [Q, C]"),
    Method("listnet", "Cao et al. 2007 (ListNet)", "ranklist:listnet_loss", "scores [Q, C], relevance [Q, C]"),
    Method("pld", "P45 Plackett-Luce distillation", "pld:pld_loss",
           "student logits [B, C], teacher logits [B, C], labels [B]", "kd"),
    Method("kd", "Hinton et al. 2015 (CE + KL distillation)", "pld:kd_loss",
           "student logits [B, C], teacher logits [B, C], labels [B]"),
    Method("mw", "P43 Mann-Whitney / AUC loss", "mann_whitney:mw_loss", "scores [Q, C], relevance [Q, C] (0/1)",
           "infonce"),
    Method("infonce", "van den Oord et al. 2018 (InfoNCE)", "infonce:info_nce", "scores [Q, C], relevance [Q, C]"),
    Method("nt_xent", "Chen et al. 2020 (SimCLR)", "infonce:nt_xent", "two views [B, D], [B, D]"),
    Method("ldr_kl", "P44 LDR-KL", "ldr:ldr_kl_loss", "logits [B, C], labels [B]", "cross-entropy"),
    Method("aldr_kl", "P44 ALDR-KL (adaptive temperature per example)", "ldr:ALDRKLLoss",
           "logits [B, C], labels [B], dataset indices [B]", "cross-entropy"),
    Method("isogclr", "P36 iSogCLR", "isogclr:ISogCLRLoss", "two views [B, D], [B, D], dataset indices [B]",
           "nt_xent"),
    Method("amcl", "P41 AMCL (several heads, adaptive temperatures)", "amcl:AMCLLoss", "two views [B, D], [B, D]",
           "nt_xent"),
    Method("groco", "P68 GroCo (differentiable sorting network)", "groco:GroCoLoss",
           "scores [Q, C], relevance [Q, C] (0/1, the same number of positives per row)", "infonce"),
    Method("unpg", "P50 UNPG (unified negative pair generation)", "unpg:UNPGHead",
           "embeddings [B, D], labels [B] (a learnable class head)", "cosface"),
    Method("dual_head_kd", "P17 dual-head knowledge distillation", "dual_head_kd:DualHeadKDLoss",
           "main logits [B, C], auxiliary logits [B, C], teacher logits [B, C], labels [B]", "kd"),
    Method("p2c", "P49 P2C (auxiliary pairwise preference task)", "p2c:p2c_loss",
           "logits of two inputs, labels, preference scores of both, preference labels", "cross-entropy"),
    Method("denoise", "P71 personalised denoising of implicit feedback (candidate selection)", "denoise:pld_select",
           "candidate losses [U, k]", "bpr"),
    Method("bpr", "Rendle et al. 2009 (BPR)", "denoise:bpr_loss", "positive scores [B], negative scores [B]"),
    Method("saf", "P62 SAF (sharpness-aware training for free)", "saf:SAF",
           "logits [B, C], dataset indices [B], epoch (a trajectory term added to the task loss)", "sgd, sam"),
    Method("ibcl", "P75 IBCL (knowledge base of parameter distributions)", "ibcl:KnowledgeBase",
           "per-task posteriors; preference weights over tasks -> parameters", "one model per trade-off"),
    Method("uniformity", "P27 uniformity of a representation (metric)", "uniformity:uniformity", "embeddings [B, D]"),
    Method("tolerance", "P27 tolerance to semantically similar samples (metric)", "uniformity:tolerance",
           "embeddings [B, D], labels [B]"),
)}


def available() -> list[str]:
    """Names of every ranking method."""
    return sorted(METHODS)


def describe(name: str) -> dict[str, Any]:
    m = _method(name)
    return {"name": m.name, "paper": m.paper, "inputs": m.inputs, "hyperparameters": m.hyperparameters(),
            "kind": "module" if m.is_class else "function", "replaces": m.replaces}


def get(name: str, **hyperparameters: Any) -> Callable[..., Any]:
    """The method ``name`` with ``hyperparameters`` bound: a module (stateful or learnable methods: pass their
    sizes, e.g. ``get("aldr_kl", num_samples=len(train_set))``) or a function of the tensor inputs."""
    m = _method(name)
    accepted = m.hyperparameters()
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ConfigError(f"ranking method '{name}' has no hyperparameter {', '.join(unknown)}; "
                          f"valid: {', '.join(accepted) or 'none'}")
    o = m.obj()
    if inspect.isclass(o):
        missing = [k for k, v in accepted.items() if v == REQUIRED and k not in hyperparameters]
        if missing:
            raise ConfigError(f"ranking method '{name}' needs {', '.join(missing)} (e.g. get('{name}', "
                              f"{missing[0]}=...))")
        return o(**hyperparameters)
    return functools.partial(o, **hyperparameters) if hyperparameters else o


def _method(name: str) -> Method:
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(name, METHODS, n=1)
        raise ConfigError(f"unknown ranking method '{name}'" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; available: {', '.join(available())}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "available", "describe", "get"]
