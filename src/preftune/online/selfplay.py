"""Self-play preference optimization in rounds: SPPO (P61) and INPO (P11).

Both play the policy against itself under a *general* (possibly intransitive) preference ``P(y > y' | x)``
and approximate the Nash policy by online mirror descent, one round per policy ``pi_t``:

* **SPPO** (P61, Wu et al. 2024, sec. 3 and Algorithm 1): sample K responses per prompt from ``pi_t``,
  estimate each one's win rate against ``pi_t`` from the other samples,
  ``P_hat(y_i) = 1/(K-1) sum_{j != i} P(y_i > y_j)``, and fit ``pi_{t+1}`` by the SPPO objective
  ``L(theta) = E_y [(log pi_theta(y|x) / pi_t(y|x) - eta (P_hat(y) - 1/2))^2]`` -- the multiplicative-weights
  step ``pi_{t+1} ∝ pi_t exp(eta P(y > pi_t))`` with ``log Z`` approximated by ``eta / 2``. The paper applies
  the loss to every sample of ``pi_t`` (Algorithm 1's ``D_t`` holds each ``(x, y_k, P_hat(y_k))``); preftune
  follows the paper (``samples='all'``). Its convergence guarantee (Theorem 4.1) is for the *average* of the
  round policies; the last iterate of multiplicative weights may cycle around a mixed equilibrium.
  Authors' code: uclaml/SPPO @ 5e61c4e90822fe526d8bbe1a50a6e85a85c30911 -- ``sppo/trainer.py``
  ``SPPOTrainer.sppo_loss`` (``loss_type='sppo'``: ``((logits_w - (chosen_probs_win - 0.5) / beta)^2 +
  (logits_l - (chosen_probs_lose - 0.5) / beta)^2) / 2``, ``eta = 1 / beta``) applies it only to the best and
  the worst sample of each prompt (``samples='best_worst'`` here), and ``scripts/compute_prob.py``
  ``prepare_score`` averages ``P(y > y_j)`` over all K samples *including y itself* (a 1/2 term, shrinking
  the win rates towards 1/2 by (K-1)/K); preftune leaves ``y`` out by default (``win_rates(...,
  include_self=True)`` is the authors' estimator). Their ``P(y_i > y_j)`` is ``sigmoid(s_i - s_j)`` of PairRM
  scores, which is what a scalar reward gives here.
* **INPO** (P11, Zhang et al. 2024, sec. 4, Algorithm 1): the target of round t is
  ``pi_{t+1} ∝ pi_t^{1 - eta tau} pi_ref^{eta tau} exp(eta P(y > pi_t))``, learned without estimating win
  rates: pairs ``y, y' ~ pi_t`` are labelled by the preference oracle (``y_w`` drawn with probability
  ``P(y > y')``) and ``L_t(theta) = E[(h_t(y_w, y_l) - eta / 2)^2]`` with
  ``h_t = log pi_theta(y_w)/pi_theta(y_l) - eta tau log pi_ref(y_w)/pi_ref(y_l)
  - (1 - eta tau) log pi_t(y_w)/pi_t(y_l)``; its minimiser over ``pi_t``'s pairs has
  ``h = eta (P(y > pi_t) - P(y' > pi_t))`` (the IPO argument, P11 sec. 4). No public code found (searched the
  code index for INPO / "iterative Nash policy optimization").

The round runner :func:`train_selfplay` is iterative DPO's (``online/run.py``): round t generates with
``pi_t``, writes ``round-t/samples.jsonl`` (SPPO) or ``round-t/pairs.jsonl`` (INPO) with token ids, and trains
the objective offline on them with ``pi_t`` as the trainer's reference; ``round-t/`` is an ordinary run
directory, ``rounds.json`` summarises the rounds, ``final/`` is the last round's policy, and a finished round is
not run again (``--resume``). INPO's ``pi_ref`` (the first round's starting policy) enters through each pair's
``margin`` column, which the runner fills with ``log pi_ref(y_w|x) - log pi_ref(y_l|x)``.

>>> import torch
>>> from preftune.online.selfplay import win_rates
>>> P = torch.tensor([[[0.5, 0.9, 0.1], [0.1, 0.5, 0.9], [0.9, 0.1, 0.5]]])
>>> win_rates(P).tolist()   # rock, paper, scissors once each: every sample wins half the time
[[0.5, 0.5, 0.5]]
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..objectives.base import ListStats, Objective, ObjectiveOutput, PairStats, hp, register

# ----------------------------------------------------------------------------- pure functions


def win_rates(prefs: Tensor, *, include_self: bool = False) -> Tensor:
    """SPPO's estimated win rates (P61 Algorithm 1): ``prefs[b, i, j] = P(y_i > y_j)`` for the K samples of a
    prompt -> ``[B, K]``, ``P_hat(y_i) = mean_{j != i} P(y_i > y_j)`` (NaN entries -- unjudged pairs -- are left
    out). ``include_self``: the authors' ``compute_prob.py`` estimator, the mean over all K with ``P(y_i > y_i)
    = 1/2``."""
    K = prefs.shape[-1]
    eye = torch.eye(K, dtype=torch.bool, device=prefs.device)
    p = prefs.float()
    if include_self:
        p = torch.where(eye, torch.full_like(p, 0.5), p)
    else:
        p = torch.where(eye, torch.full_like(p, float("nan")), p)
    return torch.nanmean(p, dim=-1)


def sppo_loss(logratio: Tensor, win_rate: Tensor, eta: float) -> Tensor:
    """The SPPO objective (P61 sec. 3, Algorithm 1), per sample:
    ``(log pi_theta(y)/pi_t(y) - eta (P_hat(y) - 1/2))^2``."""
    return (logratio - eta * (win_rate - 0.5)) ** 2


def inpo_h(policy_logratio: Tensor, current_logratio: Tensor, ref_logratio: Tensor | None, eta: float,
           tau: float) -> Tensor:
    """INPO's ``h_t`` (P11 sec. 4): the pair's policy log-ratio minus ``(1 - eta tau)`` times ``pi_t``'s and
    ``eta tau`` times ``pi_ref``'s (each ``log pi(y_w) - log pi(y_l)``)."""
    h = policy_logratio - (1 - eta * tau) * current_logratio
    if eta * tau != 0:
        h = h - eta * tau * ref_logratio  # type: ignore[operator]
    return h


def inpo_loss(h: Tensor, eta: float) -> Tensor:
    """P11's loss per labelled pair: ``(h_t(y_w, y_l) - eta / 2)^2``."""
    return (h - eta / 2) ** 2


# ----------------------------------------------------------------------------- objectives


@register
@dataclass
class SPPO(Objective):
    __doc__ = ("SPPO (P61 sec. 3, Algorithm 1): ``(log pi_theta(y)/pi_t(y) - eta (P_hat(y) - 1/2))^2`` per sample, "
               "the list kind's ``scores`` holding the win rates ``P_hat`` and the reference being ``pi_t``, the "
               "round's starting policy. ``samples='all'`` (the paper) averages over every sample of a prompt; "
               "``'best_worst'`` (the authors' ``loss_type='sppo'``) over the highest- and lowest-win-rate ones.")
    name = "sppo"
    paper = "P61 (Wu et al. 2024, SPPO) sec. 3, Algorithm 1; uclaml/SPPO sppo/trainer.py SPPOTrainer.sppo_loss"
    kind = "list"
    eta: float = hp(1000.0, "step size of the multiplicative-weights update (the paper's eta; the authors' code "
                            "has beta = 1/eta = 0.001)", low=0.0, low_open=True)
    samples: str = hp("all", "which samples of a prompt enter the loss: every one (the paper) or the best and the "
                             "worst by win rate (the authors' code)", choices=("all", "best_worst"))

    def __call__(self, stats: ListStats) -> ObjectiveOutput:  # type: ignore[override]
        self.check_stats(stats)
        wr = stats.scores.to(stats.policy_logps.dtype)
        ok = ~torch.isnan(wr)
        if stats.valid is not None:
            ok = ok & stats.valid.bool()
        if self.samples == "best_worst":
            ok = ok & _extremes(wr, ok)
        logratio = stats.policy_logps - stats.reference_logps  # type: ignore[operator]
        per = torch.where(ok, sppo_loss(logratio, torch.nan_to_num(wr, nan=0.5), self.eta),
                          torch.zeros_like(logratio))
        loss = per.sum(-1) / ok.sum(-1).clamp(min=1)
        n = ok.sum().clamp(min=1)
        lr = logratio.detach()
        return ObjectiveOutput(loss, {"win_rate": torch.where(ok, wr, 0).sum() / n,
                                      "logratio": torch.where(ok, lr, 0).sum() / n,
                                      "target_gap": torch.where(ok, (lr - self.eta * (wr - 0.5)).abs(), 0).sum() / n})


def _extremes(wr: Tensor, ok: Tensor) -> Tensor:
    """The argmax and the argmin of each prompt's scored win rates (prompts with one scored sample: none)."""
    hi = torch.where(ok, wr, torch.full_like(wr, -math.inf)).argmax(-1, keepdim=True)
    lo = torch.where(ok, wr, torch.full_like(wr, math.inf)).argmin(-1, keepdim=True)
    sel = torch.zeros_like(ok)
    sel.scatter_(-1, hi, True)
    sel.scatter_(-1, lo, True)
    return sel & (ok.sum(-1, keepdim=True) >= 2)


@register
@dataclass
class INPO(Objective):
    __doc__ = ("INPO (P11 sec. 4, Algorithm 1): ``(h_t(y_w, y_l) - eta/2)^2`` on pairs of ``pi_t`` labelled by the "
               "preference oracle, ``h_t = log pi/pi(y_w vs y_l) - (1 - eta tau) log pi_t-ratio - eta tau "
               "log pi_ref-ratio``; the reference is ``pi_t`` and ``pi_ref``'s log-ratio is the pair's ``margin`` "
               "(the round runner writes it). ``tau = 0``: no pull towards pi_ref (plain mirror descent).")
    name = "inpo"
    paper = "P11 (Zhang et al. 2024, INPO) sec. 4, Algorithm 1 (loss L_t)"
    kind = "pair"
    eta: float = hp(1.0, "step size of the mirror-descent update (the paper's eta)", low=0.0, low_open=True)
    tau: float = hp(0.0, "KL regularisation towards pi_ref (the paper's tau); eta * tau must be <= 1", low=0.0)

    def validate(self) -> None:
        super().validate()
        if self.eta * self.tau > 1:
            raise ConfigError(f"inpo: eta * tau must be <= 1 (pi_t's exponent is 1 - eta tau), "
                              f"got {self.eta * self.tau:g}")

    def __call__(self, stats: PairStats) -> ObjectiveOutput:  # type: ignore[override]
        self.check_stats(stats)
        if self.tau > 0 and stats.margin is None:
            raise ValueError("inpo with tau > 0 needs pi_ref's log-ratio log pi_ref(y_w) - log pi_ref(y_l) in the "
                             "'margin' column (train_selfplay writes it)")
        pol = stats.policy_chosen_logps - stats.policy_rejected_logps
        cur = stats.reference_chosen_logps - stats.reference_rejected_logps  # type: ignore[operator]
        ref = stats.margin.to(pol.dtype) if stats.margin is not None else None
        h = inpo_h(pol, cur, ref, self.eta, self.tau)
        return ObjectiveOutput(inpo_loss(h, self.eta), {"h": h.detach().mean(),
                                                        "logratio_gap": (pol - cur).detach().mean()})


# ----------------------------------------------------------------------------- preferences


PreferenceFn = Callable[[list[str], list[str], list[str]], Sequence[Any]]


def judge_pairs(prefer: PreferenceFn, prompts: list[str], a: list[str], b: list[str], *, step: int,
                on_bad: str = "error", skipped: dict[str, int] | None = None) -> list[float | None]:
    """``P(a_i > b_i)`` from a preference function, checked (one finite number in [0, 1] or None per pair)."""
    from .rewards import checked_scores
    from .rollout import _PreferenceReward

    probs = checked_scores(_PreferenceReward(prefer), prompts, a, {"completions_b": b}, step=step, on_bad=on_bad,
                           skipped={} if skipped is None else skipped)
    for i, p in enumerate(probs):
        if p is not None and not 0.0 <= p <= 1.0:
            raise ConfigError(f"round {step}: the preference function returned {p} for pair {i} (prompt "
                              f"{prompts[i]!r}); a probability in [0, 1] is expected")
    return probs


def preference_matrices(prefer: PreferenceFn | None, reward: Any, prompts: list[str], texts: list[str], k: int, *,
                        step: int, on_bad: str = "error") -> Tensor:
    """``[B, K, K]`` with ``P(y_i > y_j)`` for the K samples of each prompt (NaN: unjudged; diagonal 1/2).

    With a preference function each unordered pair is judged once, in one call, and ``P(y_j > y_i) = 1 -
    P(y_i > y_j)`` (a preference, not two independent coin flips). With a scalar reward,
    ``sigmoid(r_i - r_j)`` (Bradley-Terry, as the authors' ``compute_prob.py`` turns PairRM scores into
    probabilities)."""
    B = len(prompts)
    M = torch.full((B, k, k), float("nan"), dtype=torch.float64)
    idx = torch.arange(k)
    M[:, idx, idx] = 0.5
    if prefer is not None:
        pairs = [(b, i, j) for b in range(B) for i in range(k) for j in range(i + 1, k)]
        probs = judge_pairs(prefer, [prompts[b] for b, _, _ in pairs], [texts[b * k + i] for b, i, _ in pairs],
                            [texts[b * k + j] for b, _, j in pairs], step=step, on_bad=on_bad)
        for (b, i, j), p in zip(pairs, probs):
            if p is not None:
                M[b, i, j], M[b, j, i] = p, 1 - p
        return M
    total, _ = reward.parts([p for p in prompts for _ in range(k)], texts, {}, step=step, on_bad=on_bad, skipped={})
    r = torch.tensor([math.nan if x is None else float(x) for x in total], dtype=torch.float64).view(B, k)
    return torch.sigmoid(r.unsqueeze(-1) - r.unsqueeze(-2))


# ----------------------------------------------------------------------------- the round runner


def judge_sources(online: Any, reward_or_preference: Any, what: str) -> tuple[Any, Any]:
    """(preference function, reward source): ``online.preference_fn`` (a ``FILE.py:FN``) first, else the given
    preference function or reward (``.parts``); one of them is required."""
    from .rewards import load_reward_fn

    if online.preference_fn:
        return load_reward_fn(online.preference_fn).fn, None
    if hasattr(reward_or_preference, "parts"):
        return None, reward_or_preference
    if callable(reward_or_preference):
        return reward_or_preference, None
    raise ConfigError(f"{what} needs a preference function (--preference-fn FILE.py:FN) or a reward")


def train_selfplay(cfg: Any, online: Any, prompts: list[Any], reward_or_preference: Any = None, *, model: Any = None,
                   tokenizer: Any, callbacks: Sequence[Any] = ()) -> Any:
    """Run ``online.rounds`` rounds of SPPO (a ``list`` objective such as ``sppo``) or INPO (a ``pair`` objective
    such as ``inpo``) and return the last round's :class:`~preftune.train.loop.RunResult` with every round's
    history. ``cfg.loss`` picks the objective (``dpo``, the trainer's default, means ``online.algo``'s);
    ``reward_or_preference``: a preference function ``fn(prompts, completions_a, completions_b) -> P(a > b)``, or
    a reward source with ``.parts`` (``preftune.online.rewards.build_reward``); ``online.preference_fn`` (a
    ``FILE.py:FN``) takes precedence over both. ``prompts``: tokenized :class:`~preftune.online.prompts.Prompt`."""
    from ..data.types import TokenizedPair, TokenizedRanked
    from ..models.loading import load_model
    from ..objectives import objective_class
    from .rounds import run_rounds

    loss = cfg.loss if cfg.loss != "dpo" else online.algo
    kind = objective_class(loss).kind
    if kind not in ("list", "pair"):
        raise ConfigError(f"self-play rounds train a list objective (sppo) or a pair objective (inpo), not {loss}")
    if loss != cfg.loss:
        cfg = cfg.replace(loss=loss)
    prefer, reward = judge_sources(online, reward_or_preference, "self-play")
    k = online.k
    if k < 2:
        raise ConfigError(f"self-play compares samples with each other: num_generations must be >= 2, got {k}")
    # INPO's pi_ref: the first round's starting policy, kept apart from the policy trained in place
    ref0: list[Any] = [None if kind == "list" else (copy.deepcopy(model) if model is not None else None)]

    def make_rows(t: int, policy: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if kind == "pair" and ref0[0] is None:
            ref0[0] = load_model(cfg.model, device=next(policy.parameters()).device) if cfg.model \
                else copy.deepcopy(policy)
        return _make_round(cfg, online, prompts, policy, tokenizer, prefer, reward, kind, t, ref0[0])

    def make_items(rows: list[dict[str, Any]]) -> list[Any]:
        if kind == "list":
            return [TokenizedRanked(r["prompt_ids"], r["completion_ids"],
                                    [math.nan if s is None else s for s in r["win_rates"]], row=i + 1)
                    for i, r in enumerate(rows)]
        return [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], row=i + 1,
                              extras={"margin": r["ref_logratio"]}) for i, r in enumerate(rows)]

    return run_rounds(cfg, online.rounds, name=loss, kind=kind,
                      data_file="samples.jsonl" if kind == "list" else "pairs.jsonl", make_rows=make_rows,
                      make_items=make_items, model=model, tokenizer=tokenizer, callbacks=callbacks)


def _make_round(cfg: Any, online: Any, prompts: list[Any], policy: Any, tokenizer: Any, prefer: Any, reward: Any,
                kind: str, t: int, ref0: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample from pi_t, judge, and return the round's rows (token ids kept) and its summary."""
    from ..models.generate import generate

    k = online.k if kind == "list" else 2  # INPO: one pair y, y' ~ pi_t per prompt
    gens = generate(policy, tokenizer, [p.ids for p in prompts], n=k, max_new_tokens=online.max_new_tokens,
                    temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                    seed=cfg.seed * 1_000_003 + t, batch_size=online.generation_batch_size, progress=cfg.progress)
    texts = tokenizer.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
    ptexts = [p.text for p in prompts]
    M = preference_matrices(prefer, reward, ptexts, texts, k, step=t, on_bad=online.on_bad_reward)
    if kind == "list":
        W = win_rates(M)
        rows = [{"prompt": p.raw, "completions": texts[i * k:(i + 1) * k],
                 "win_rates": [None if math.isnan(w) else w for w in W[i].tolist()], "prompt_ids": p.ids,
                 "completion_ids": [gens[i * k + j].response_ids for j in range(k)]} for i, p in enumerate(prompts)]
        ws = [w for w in W.flatten().tolist() if not math.isnan(w)]
        if not ws:
            raise ConfigError(f"sppo round {t}: no pair of samples was judged; nothing to train on")
        return rows, {"prompts": len(rows), "samples": len(rows) * k,
                      "win_rate_spread": sum(abs(w - 0.5) for w in ws) / len(ws)}
    # INPO: the oracle labels each pair, y_w drawn with probability P(y > y') (the paper's lambda_p)
    rng = random.Random(f"inpo-{cfg.seed}-{t}")
    rows, unjudged = [], 0
    for i, p in enumerate(prompts):
        pr = float(M[i, 0, 1])
        if math.isnan(pr):
            unjudged += 1
            continue
        w, l = (0, 1) if rng.random() < pr else (1, 0)
        rows.append({"prompt": p.raw, "chosen": texts[i * 2 + w], "rejected": texts[i * 2 + l], "p_first": pr,
                     "prompt_ids": p.ids, "chosen_ids": gens[i * 2 + w].response_ids,
                     "rejected_ids": gens[i * 2 + l].response_ids})
    if not rows:
        raise ConfigError(f"inpo round {t}: the preference function judged no pair; nothing to train on")
    ratios = _pair_logratios(ref0, tokenizer, rows, cfg)
    for r, x in zip(rows, ratios):
        r["ref_logratio"] = x
    return rows, {"pairs": len(rows), "unjudged": unjudged}


@torch.no_grad()
def _pair_logratios(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: Any) -> list[float]:
    """``log pi(y_w|x) - log pi(y_l|x)`` under ``model`` for each row (pi_ref's, for INPO's margin column)."""
    from ..data.collate import collate_pairs
    from ..data.types import TokenizedPair
    from ..models.logprobs import sequence_logps
    from ..models.scoring import eval_mode

    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(rows), 64):
        part = rows[s:s + 64]
        batch = collate_pairs([TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in part],
                              tokenizer.pad_token_id).to(device)
        with eval_mode(model):
            sums = sequence_logps(model, batch, chunk_size=cfg.chunk_size).sums.float().cpu()
        out += (sums[:len(part)] - sums[len(part):]).tolist()
    return out


__all__ = ["INPO", "SPPO", "inpo_h", "inpo_loss", "judge_pairs", "judge_sources", "preference_matrices", "sppo_loss",
           "train_selfplay", "win_rates"]
