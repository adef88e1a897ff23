"""UPO (P54, Wang et al. 2024, "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference
Optimization", AAAI 2025): iterative DPO whose self-generated pairs pass an uncertainty filter first.

Each round t (P54 Algorithm / Fig. 2):

1. the policy ``pi_t`` samples K responses per prompt and the reward model scores them;
2. candidate pairs: every two of a prompt's responses with different rewards, the higher-scored one chosen (with
   more than four responses, only the two best and the two worst take part, as the authors' code);
3. the estimator (a reward model with dropout, :mod:`preftune.reward.uncertainty`) judges each pair in T
   MC-dropout passes; pairs whose **majority vote disagrees with the reward model** are dropped as noise;
4. from the agreeing pairs, **reliable feedback sampling by BALD** ``B`` (the mutual information between the
   estimator's prediction and its dropout weights): ``easy_rate`` of them drawn with probability
   ``(1 - B_i) / sum_j (1 - B_j)`` (easy: the estimator is sure), and ``hard_rate`` of them with probability
   ``B_i / sum_j B_j`` (hard), without replacement;
5. DPO on the kept pairs with ``pi_t`` as the reference (the round runner of iterative DPO, ``rounds.py``).

The pure pieces -- :func:`candidate_pairs`, :func:`agreement_filter`, :func:`bald_sample`, :func:`upo_select` --
work on any votes and BALD scores; :func:`train_upo` is ``preftune online --algo upo``.

Authors' code: wjn1996/Uncertainty-Preference-Optimization @ 29a1c214d5f26e96696f17246316cce5712b1b2c --
``src/alignment/inference/estimating/main.py`` (``construct_preference_pair_to_pair_and_cls_format``: all pairs of
the top-2 and bottom-2 responses by reward; the ``__main__`` block: keep the pairs whose vote ``y_pred == 0``, i.e.
agreeing with the reward model, then ``sample_by_bald_easiness`` and ``sample_by_bald_difficulty`` with
``num_samples = bald_rate * n``, bald_rate 0.5) and ``sampler.py`` (the sampling probabilities above, as
``np.random.choice(..., p, replace=False)``); ``merge_results.py`` trains the next round on all easy pairs plus 20% of
the hard ones (here ``upo_easy_rate`` 0.5, ``upo_hard_rate`` 0.1 of the agreeing pairs), 30% of best-vs-worst
pairs and 40% of the seed preference data, and keeps one pair per prompt. Differences here, all stated: easy and hard
are drawn disjointly (the authors draw them independently from the same pool, then de-duplicate by prompt);
several pairs per prompt are kept; the seed data and the extra best-vs-worst pairs are not mixed in (give them to an
offline run); a pool whose BALD scores are all zero is sampled uniformly (the authors' normalisation would divide by
zero). The paper's uncertainty-weighted DPO loss ("uncertainty-enhanced self-evolution") is not implemented: the
authors' public DPO trainer (``src/alignment/train/dpo/trainer.py``) trains plain DPO on the sampled pairs, which is
what this runner does (any pair objective, ``--loss``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

MAX_RESPONSES = 4  # the authors' pairs use the two best and the two worst responses of a prompt

# ----------------------------------------------------------------------------- pure functions


def candidate_pairs(scores: Sequence[float | None], max_responses: int = MAX_RESPONSES) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` index pairs of one prompt's responses: every two with different scores, the
    higher-scored one chosen (P54's pair construction); with more than ``max_responses`` scored responses only the
    ``max_responses // 2`` best and worst take part. Unscored responses (None) never do. Ordered by the chosen's
    rank, then the rejected's."""
    scored = sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: -scores[i])  # type: ignore
    if len(scored) > max_responses:
        h = max_responses // 2
        scored = scored[:h] + scored[len(scored) - (max_responses - h):]
    return [(a, b) for n, a in enumerate(scored) for b in scored[n + 1:] if scores[a] > scores[b]]  # type: ignore


def agreement_filter(votes: Tensor, labels: Tensor | int = 0) -> Tensor:
    """``[N]`` bool: the pairs whose estimator vote equals the reward model's label (P54: a disagreement marks the
    pair as noise). With pairs written chosen-first the reward model's label is class 0 for every pair."""
    return votes == (labels if isinstance(labels, Tensor) else torch.full_like(votes, labels))


def bald_sample(scores: Tensor, n: int, mode: str, *, generator: torch.Generator | None = None,
                exclude: Tensor | None = None) -> Tensor:
    """``n`` indices drawn without replacement by P54's reliable feedback sampling on BALD ``scores``:
    ``mode='easy'`` with probability proportional to ``1 - B`` (the authors' ``sample_by_bald_easiness``),
    ``'hard'`` proportional to ``B`` (``sample_by_bald_difficulty``), negative weights clipped to 0. ``exclude``
    (bool ``[N]``): items that cannot be drawn. Where fewer items have positive weight than ``n``, the rest are drawn
    uniformly from the zero-weight ones (all BALD zero: a uniform draw)."""
    if mode not in ("easy", "hard"):
        raise ValueError(f"mode must be 'easy' or 'hard', got {mode!r}")
    w = (1.0 - scores if mode == "easy" else scores).double().clamp(min=0.0)
    allowed = torch.ones_like(w, dtype=torch.bool) if exclude is None else ~exclude
    if n > int(allowed.sum()):
        raise ValueError(f"cannot draw {n} items from {int(allowed.sum())}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    w = torch.where(allowed, w, torch.zeros_like(w))
    positive = int((w > 0).sum())
    if positive >= n:
        return torch.multinomial(w, n, replacement=False, generator=generator)
    first = torch.nonzero(w > 0).flatten()  # every positive-weight item is drawn; fill up uniformly
    rest = torch.nonzero(allowed & (w <= 0)).flatten()
    pick = rest[torch.randperm(len(rest), generator=generator)[:n - positive]]
    return torch.cat([first, pick])


def upo_select(votes: Tensor, scores: Tensor, easy_rate: float, hard_rate: float, *,
               labels: Tensor | int = 0, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """P54's selection: drop the pairs whose vote disagrees with the reward model (:func:`agreement_filter`), then
    from the ``m`` agreeing ones draw ``round(easy_rate * m)`` easy pairs and, from the rest, ``round(hard_rate * m)``
    hard pairs (:func:`bald_sample`). Returns index tensors ``agree``, ``easy``, ``hard`` into the pairs."""
    if not (0 <= easy_rate <= 1 and 0 <= hard_rate <= 1 and easy_rate + hard_rate <= 1):
        raise ConfigError(f"upo: easy_rate and hard_rate must be in [0, 1] with a sum <= 1, got {easy_rate} and "
                          f"{hard_rate}")
    agree = torch.nonzero(agreement_filter(votes, labels)).flatten()
    m = len(agree)
    b = scores[agree]
    easy = bald_sample(b, round(easy_rate * m), "easy", generator=generator)
    taken = torch.zeros(m, dtype=torch.bool)
    taken[easy] = True
    hard = bald_sample(b, min(round(hard_rate * m), m - len(easy)), "hard", generator=generator, exclude=taken)
    return {"agree": agree, "easy": agree[easy], "hard": agree[hard]}


# ----------------------------------------------------------------------------- the runner


def load_estimator(path: str, *, device: Any, dtype: str, dropout: float, batch_size: int,
                   max_length: int | None) -> Any:
    """The preference estimator: a reward model (``preftune rm train``'s ``final/``) whose dropout MC-dropout
    samples; ``dropout > 0`` sets every rate of it (:func:`~preftune.reward.uncertainty.set_dropout`)."""
    from pathlib import Path

    from ..reward.model import RewardModel
    from ..reward.uncertainty import dropout_rates, set_dropout

    if not path:
        raise ConfigError("upo needs --upo-estimator DIR: a reward model to judge pairs with MC dropout (train one "
                          "with `preftune rm train ... --disable-dropout false`)")
    if not Path(path).is_dir():
        raise ConfigError(f"--upo-estimator {path}: no such directory")
    est = RewardModel.from_pretrained(path, device=device, dtype=dtype, batch_size=batch_size, max_length=max_length)
    if dropout > 0:
        set_dropout(est.model, dropout)
    if not any(r > 0 for r in dropout_rates(est.model)):
        raise ConfigError(f"--upo-estimator {path} has no dropout, so its MC-dropout passes would all agree; give "
                          "--mc-dropout-rate > 0 (e.g. 0.1)")
    return est


def check_options(online: Any, reward: Any) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(reward is not None, "upo labels pairs with a reward: give --reward-model, --reward-fn or --task "
                             "(not only --preference-fn)")
    need(online.k >= 2, f"upo pairs a prompt's samples: num_generations must be >= 2, got {online.k}")
    need(online.mc_dropout_passes >= 1, f"mc_dropout_passes must be >= 1, got {online.mc_dropout_passes}")
    need(0 <= online.mc_dropout_rate < 1, f"mc_dropout_rate must be in [0, 1), got {online.mc_dropout_rate}")
    need(0 <= online.upo_easy_rate <= 1, f"upo_easy_rate must be in [0, 1], got {online.upo_easy_rate}")
    need(0 <= online.upo_hard_rate <= 1, f"upo_hard_rate must be in [0, 1], got {online.upo_hard_rate}")
    need(0 < online.upo_easy_rate + online.upo_hard_rate <= 1,
         f"upo_easy_rate + upo_hard_rate must be in (0, 1], got {online.upo_easy_rate + online.upo_hard_rate:g}")


def train_upo(cfg: Any, online: Any, prompts: list[Any], reward: Any, *, model: Any = None, tokenizer: Any,
              callbacks: Sequence[Any] = ()) -> Any:
    """``preftune online --algo upo``: rounds of sample K -> reward -> candidate pairs -> MC-dropout estimator ->
    agreement filter -> BALD easy/hard sampling -> DPO (``--loss``, any pair objective) on the kept pairs with pi_t as
    the reference. ``round-t/pairs.jsonl`` holds the kept pairs with their ``bald``, the estimator's mean
    ``estimator_p`` = P(chosen > rejected) and ``upo`` (easy or hard); ``round-t/round.json`` the counts."""
    from ..models.generate import generate
    from ..reward.uncertainty import bald, bt_probs, majority_vote, mc_rewards
    from ..train.setup import pick_device
    from .prompts import columns_for
    from .rounds import pair_items, run_rounds

    check_options(online, reward)
    k = online.k
    estimator = load_estimator(online.upo_estimator, device=pick_device(cfg.device), dtype=cfg.dtype,
                               dropout=online.mc_dropout_rate, batch_size=online.generation_batch_size,
                               max_length=cfg.max_length or 1024)

    def make_rows(t: int, policy: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gens = generate(policy, tokenizer, [p.ids for p in prompts], n=k, max_new_tokens=online.max_new_tokens,
                        temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                        seed=cfg.seed * 1_000_003 + t, batch_size=online.generation_batch_size, progress=cfg.progress)
        texts = tokenizer.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
        ptexts = [p.text for p in prompts for _ in range(k)]
        total, _ = reward.parts(ptexts, texts, columns_for(prompts, k), step=t, on_bad=online.on_bad_reward,
                                skipped={})
        pairs = [(i * k + a, i * k + b) for i in range(len(prompts))
                 for a, b in candidate_pairs(total[i * k:(i + 1) * k])]
        if not pairs:
            raise ConfigError(f"upo round {t}: every prompt's {k} samples tied; no pair to judge")
        R = mc_rewards(estimator, ptexts, texts, online.mc_dropout_passes, seed=cfg.seed * 1_000_003 + t)  # [T, B*K]
        c = torch.tensor([a for a, _ in pairs])
        r = torch.tensor([b for _, b in pairs])
        probs = bt_probs(R[:, c], R[:, r])                      # [T, pairs, 2]: class 0 = the reward model's chosen
        scores, votes = bald(probs), majority_vote(probs)
        sel = upo_select(votes, scores, online.upo_easy_rate, online.upo_hard_rate,
                         generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + t))
        p_mean = probs[..., 0].mean(0)
        rows = []
        for tag, idx in (("easy", sel["easy"]), ("hard", sel["hard"])):
            for n in idx.tolist():
                a, b = pairs[n]
                p = prompts[a // k]
                rows.append({"prompt": p.raw, "chosen": texts[a], "rejected": texts[b], "score_chosen": total[a],
                             "score_rejected": total[b], "bald": float(scores[n]), "estimator_p": float(p_mean[n]),
                             "upo": tag, "prompt_ids": p.ids, "chosen_ids": gens[a].response_ids,
                             "rejected_ids": gens[b].response_ids})
        if not rows:
            raise ConfigError(f"upo round {t}: the estimator disagreed with the reward model on all {len(pairs)} "
                              "pairs (or the rates keep none); no pair to train on")
        xs = [x for x in total if x is not None]
        return rows, {"pairs": len(rows), "candidates": len(pairs), "agree": len(sel["agree"]),
                      "dropped_disagree": len(pairs) - len(sel["agree"]), "easy": len(sel["easy"]),
                      "hard": len(sel["hard"]), "bald_mean": float(scores.mean()),
                      "bald_kept_mean": sum(r["bald"] for r in rows) / len(rows),
                      "reward_mean": sum(xs) / len(xs) if xs else float("nan")}

    return run_rounds(cfg, online.rounds, name=online.algo, kind="pair", data_file="pairs.jsonl",
                      make_rows=make_rows, make_items=pair_items, model=model, tokenizer=tokenizer,
                      callbacks=callbacks)


__all__ = ["MAX_RESPONSES", "agreement_filter", "bald_sample", "candidate_pairs", "check_options", "load_estimator",
           "train_upo", "upo_select"]
