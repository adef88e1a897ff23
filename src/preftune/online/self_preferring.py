"""Online Self-Preferring (OSP; P28, Zhai et al. 2024, "Online Self-Preferring Language Models", arXiv:2405.14103):
the policy samples K responses per prompt, judges them *itself*, turns its judgments into several pairs per prompt
with a preference strength each (ranked pairing), and learns from them with the soft-preference cross-entropy
(``spce``, :mod:`preftune.objectives.soft_preference`). No reward model: one set of weights is policy and judge.

One round t (``pi_t`` the round's starting policy, which is also the judge and the trainer's reference):

1. **Sample** ``y_1..y_K ~ pi_t(.|x)`` for each prompt.
2. **Self-preferring** (LLM-as-a-judge by the policy itself): each sample is compared with one baseline sample of
   the same prompt, ``y_b = y_1`` -- K-1 judgments instead of K(K-1)/2 (the point of ranked pairing). The judge
   prompt ``q(x, a, b)`` is ``--osp-template`` and the judge's answer is one of two verdict strings (``A``, ``B``):
   ``P_J(a > b) = pi_t(v_A | q) / (pi_t(v_A | q) + pi_t(v_B | q)) = sigmoid(log pi_t(v_A|q) - log pi_t(v_B|q))``,
   asked in both orders to cancel the judge's position bias:
   ``s_i = P(y_i > y_b) = [P_J(y_i > y_b) + 1 - P_J(y_b > y_i)] / 2`` (``s_b = 1/2``; a sample token-identical to
   the baseline gets 1/2 without a call).
3. **Ranked pairing**: the samples are ranked by ``s_i`` and paired ``nested`` (best with worst, second with
   second-worst, ...: floor(K/2) disjoint pairs) or ``all`` (every pair of ranks). A pair's preference strength is
   the Bradley-Terry composition of the two judgments against the common baseline,
   ``P(y_w > y_l) = sigmoid(logit s_w - logit s_l)``; its log-odds ``logit s_w - logit s_l`` is written to the
   pair's ``strength`` column (``spce`` reads it as a margin). Pairs of token-identical responses are dropped.
4. **Soft-preference cross-entropy**: ``-[p log sigmoid(z) + (1-p) log sigmoid(-z)]``, ``z = beta (h_w - h_l)``,
   on the round's pairs with pi_t as the reference, through the ordinary trainer (:func:`rounds.run_rounds`).

``--osp-judge reward`` (a reward function, reward model or arena task: ``logit s_i = r_i - r_b``, the Bradley-Terry
probability) or ``--osp-judge preference`` (``--preference-fn``: ``s_i = P(y_i > y_b)``) replace the self-judge;
with ``--osp-judge self`` a reward, when one is given, is only *measured*: each round reports the mean reward of
the samples and how often the self-judge's chosen response has the higher reward (``judge_agreement``).

What is reconstructed: the paper's abstract names self-judged preference strengths, ranked pairing into multiple
pairs per prompt and the soft-preference cross-entropy; a survey (Li et al. 2024, "From Generation to Judgment")
describes ranked pairing as comparing every candidate with one fixed baseline (O(K) judgments). The full paper text
was not available here, so the nested pairing, the both-orders judgment and the Bradley-Terry pair strength are this
module's reading; ``docs/online-self-preferring.md`` lists them. Authors' code: no public code found (searched the
code index for "self-preferring", "2405.14103", "soft-preference cross-entropy", repository names self-preferring /
OSP). In the paper the model's judging ability comes from fine-tuning on offline preference data in the judge
format; here that is the SFT model's business (``benchmarks/self_preferring_demo.py`` builds one).

>>> pairs = ranked_pairs([0.0, 2.0, -1.0, 1.0])   # log-odds of beating the baseline (sample 0)
>>> [(w, l, round(m, 2)) for w, l, m in pairs]     # ranks 1, 3, 0, 2: nested pairs (1, 2) and (3, 0)
[(1, 2, 3.0), (3, 0, 1.0)]
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..errors import ConfigError

JUDGES = ("self", "reward", "preference")
PAIRINGS = ("nested", "all")
_CLIP = 1e-6  # a judge probability of exactly 0 or 1 would give an infinite log-odds

# ----------------------------------------------------------------------------- pure functions


def judge_probability(logp_a: float, logp_b: float) -> float:
    """``P_J(a > b)`` from the judge's log-probabilities of its two verdicts: ``sigmoid(logp_a - logp_b)``."""
    return 1.0 / (1.0 + math.exp(logp_b - logp_a)) if logp_b - logp_a < 700 else 0.0


def both_orders(p_ab: float, p_ba: float) -> float:
    """``P(a > b)`` from a judge asked in both orders: ``[P_J(a > b) + 1 - P_J(b > a)] / 2`` (position bias out)."""
    return (p_ab + 1.0 - p_ba) / 2.0


def log_odds(p: float) -> float:
    """``logit p``, ``p`` clipped to [1e-6, 1 - 1e-6]."""
    p = min(max(p, _CLIP), 1.0 - _CLIP)
    return math.log(p) - math.log1p(-p)


def ranked_pairs(logits: Sequence[float | None], pairing: str = "nested") -> list[tuple[int, int, float]]:
    """P28's ranked pairing. ``logits[i] = logit P(y_i > y_b)``, each sample's log-odds of beating the common
    baseline (None: unjudged, left out). The samples are ranked by it (ties: lower index first) and paired
    ``nested`` -- rank 1 with rank n, rank 2 with rank n-1, ... -- or ``all`` (every pair of ranks). Returns
    ``(winner, loser, margin)`` with ``margin = logits[winner] - logits[loser] >= 0``, the pair's Bradley-Terry
    log-odds: ``P(y_w > y_l) = sigmoid(margin)``."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    order = sorted((i for i, x in enumerate(logits) if x is not None), key=lambda i: (-logits[i], i))  # type: ignore
    n = len(order)
    if pairing == "nested":
        idx = [(order[r], order[n - 1 - r]) for r in range(n // 2)]
    else:
        idx = [(order[a], order[b]) for a in range(n) for b in range(a + 1, n)]
    return [(w, l, float(logits[w] - logits[l])) for w, l in idx]  # type: ignore[operator]


# ----------------------------------------------------------------------------- judges


def check_options(online: Any) -> tuple[str, str]:
    """The verdict pair of ``online``; one-line ConfigErrors for bad osp options."""
    if online.osp_judge not in JUDGES:
        raise ConfigError(f"--osp-judge must be one of {', '.join(JUDGES)}, got {online.osp_judge!r}")
    if online.osp_pairing not in PAIRINGS:
        raise ConfigError(f"--osp-pairing must be one of {', '.join(PAIRINGS)}, got {online.osp_pairing!r}")
    verdicts = [v for v in online.osp_verdicts.split(",")]
    if len(verdicts) != 2 or not all(verdicts) or verdicts[0] == verdicts[1]:
        raise ConfigError(f"--osp-verdicts must be two different non-empty strings separated by a comma, got "
                          f"{online.osp_verdicts!r}")
    try:
        filled = online.osp_template.format(prompt="<x>", a="<A>", b="<B>")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--osp-template {online.osp_template!r}: only the fields {{prompt}}, {{a}} and {{b}} are "
                          f"allowed ({type(e).__name__}: {e})") from None
    if "<A>" not in filled or "<B>" not in filled:
        raise ConfigError(f"--osp-template {online.osp_template!r} must contain both {{a}} and {{b}}")
    return verdicts[0], verdicts[1]


@torch.no_grad()
def self_judge(model: Any, tokenizer: Any, questions: Sequence[str], verdicts: tuple[str, str], *,
               chunk_size: int | None = None, batch_size: int = 64) -> list[float]:
    """``P_J(a > b)`` for each filled judge prompt: the model's probability of the first verdict against the
    second, ``sigmoid(log pi(v_a | q) - log pi(v_b | q))`` (the verdicts' summed token log-probs)."""
    from ..data.collate import collate_ranked
    from ..data.tokenize import _Encoder
    from ..data.types import TokenizedRanked
    from ..models.logprobs import sequence_logps
    from ..models.scoring import eval_mode

    enc = _Encoder(tokenizer)
    v = [list(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in verdicts]
    device = next(model.parameters()).device
    out: list[float] = []
    kw = {"chunk_size": chunk_size} if chunk_size else {}
    for s in range(0, len(questions), batch_size):
        items = [TokenizedRanked(enc.ids(q), v, [0.0, 0.0]) for q in questions[s:s + batch_size]]
        batch = collate_ranked(items, tokenizer.pad_token_id).to(device)
        with eval_mode(model):
            lp = sequence_logps(model, batch, **kw).sums.double().view(len(items), 2).cpu()
        out += [judge_probability(a, b) for a, b in lp.tolist()]
    return out


def baseline_logits(online: Any, judge: str, *, policy: Any, tokenizer: Any, prompts: list[Any], texts: list[str],
                    ids: list[list[int]], k: int, rewards: list[Any] | None, prefer: Any, step: int,
                    chunk_size: int | None, verdicts: tuple[str, str]) -> tuple[list[list[float | None]], int]:
    """Each sample's log-odds of beating its prompt's baseline (sample 0) by the chosen judge, ``[B][K]``, and
    the number of judge queries made. ``rewards``: the samples' rewards (``B*K``; the ``reward`` judge's input)."""
    B = len(prompts)
    L: list[list[float | None]] = [[0.0] * k for _ in range(B)]
    if judge == "reward":
        total = rewards or []
        for b in range(B):
            r0 = total[b * k]
            for i in range(k):
                ri = total[b * k + i]
                L[b][i] = None if ri is None or r0 is None else float(ri) - float(r0)
        return L, B * k
    todo = [(b, i) for b in range(B) for i in range(1, k) if ids[b * k + i] != ids[b * k]]
    if judge == "preference":
        from .selfplay import judge_pairs

        probs = judge_pairs(prefer, [prompts[b].text for b, _ in todo], [texts[b * k + i] for b, i in todo],
                            [texts[b * k] for b, _ in todo], step=step, on_bad=online.on_bad_reward)
        for (b, i), p in zip(todo, probs):
            L[b][i] = None if p is None else log_odds(p)
        return L, len(todo)
    fill = online.osp_template.format
    qs = []
    for b, i in todo:  # both orders: (y_i, y_b) and (y_b, y_i)
        x, yi, yb = prompts[b].text, texts[b * k + i], texts[b * k]
        qs += [fill(prompt=x, a=yi, b=yb), fill(prompt=x, a=yb, b=yi)]
    pj = self_judge(policy, tokenizer, qs, verdicts, chunk_size=chunk_size)
    for n, (b, i) in enumerate(todo):
        L[b][i] = log_odds(both_orders(pj[2 * n], pj[2 * n + 1]))
    return L, len(qs)


# ----------------------------------------------------------------------------- the round runner


def train_self_preferring(cfg: Any, online: Any, prompts: list[Any], reward: Any = None, *, model: Any = None,
                          tokenizer: Any, callbacks: Sequence[Any] = ()) -> Any:
    """Run ``online.rounds`` rounds of OSP and return the last round's :class:`~preftune.train.loop.RunResult` with
    every round's history (``preftune online --algo osp``'s runner). ``cfg.loss``: a pair objective, ``spce`` by
    default (any other -- ``dpo`` -- trains on the same pairs with hard labels). ``reward``: a reward source with
    ``.parts`` (``--osp-judge reward``; with ``self`` only measured), or a preference function
    ``fn(prompts, a, b) -> P(a > b)`` (``--osp-judge preference``, as is ``online.preference_fn``)."""
    from ..data.types import TokenizedPair
    from ..objectives import objective_class
    from .rewards import load_reward_fn
    from .rounds import run_rounds

    verdicts = check_options(online)
    if objective_class(cfg.loss).kind != "pair":
        raise ConfigError(f"osp trains a pair objective (spce, dpo, ...) on its ranked pairs, not {cfg.loss}")
    k = online.k
    if k < 2:
        raise ConfigError(f"osp ranks samples against each other: num_generations must be >= 2, got {k}")
    judge = online.osp_judge
    prefer = load_reward_fn(online.preference_fn).fn if online.preference_fn else None
    if prefer is None and callable(reward) and not hasattr(reward, "parts"):
        prefer, reward = reward, None
    if judge == "self" and prefer is not None:
        raise ConfigError("osp: a preference function is given but --osp-judge is self; pass --osp-judge preference")
    if judge == "reward" and reward is None:
        raise ConfigError("osp --osp-judge reward needs a reward: --reward-fn, --reward-model or --task")
    if judge == "preference" and prefer is None:
        raise ConfigError("osp --osp-judge preference needs --preference-fn FILE.py:FN")

    def make_rows(t: int, policy: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return _make_round(cfg, online, prompts, policy, tokenizer, judge, reward, prefer, verdicts, t)

    def make_items(rows: list[dict[str, Any]]) -> list[Any]:
        return [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], row=i + 1,
                              extras={"strength": r["strength"]}) for i, r in enumerate(rows)]

    return run_rounds(cfg, online.rounds, name="osp", kind="pair", data_file="pairs.jsonl", make_rows=make_rows,
                      make_items=make_items, model=model, tokenizer=tokenizer, callbacks=callbacks)


def _make_round(cfg: Any, online: Any, prompts: list[Any], policy: Any, tokenizer: Any, judge: str, reward: Any,
                prefer: Any, verdicts: tuple[str, str], t: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample K per prompt from pi_t, judge against the baseline, pair by rank; the rows (token ids kept) and the
    round's summary."""
    from ..models.generate import generate
    from .prompts import columns_for

    k = online.k
    gens = generate(policy, tokenizer, [p.ids for p in prompts], n=k, max_new_tokens=online.max_new_tokens,
                    temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                    seed=cfg.seed * 1_000_003 + t, batch_size=online.generation_batch_size, progress=cfg.progress)
    ids = [list(g.response_ids) for g in gens]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    true = None
    if reward is not None and hasattr(reward, "parts"):  # the judge (--osp-judge reward), or only measured
        true, _ = reward.parts([p.text for p in prompts for _ in range(k)], texts, columns_for(prompts, k), step=t,
                               on_bad=online.on_bad_reward, skipped={})
    L, queries = baseline_logits(online, judge, policy=policy, tokenizer=tokenizer, prompts=prompts, texts=texts,
                                 ids=ids, k=k, rewards=true, prefer=prefer, step=t, chunk_size=cfg.chunk_size,
                                 verdicts=verdicts)
    rows, identical, agree, decided = [], 0, 0, 0
    for b, p in enumerate(prompts):
        for w, l, m in ranked_pairs(L[b], online.osp_pairing):
            if ids[b * k + w] == ids[b * k + l]:
                identical += 1
                continue
            row = {"prompt": p.raw, "chosen": texts[b * k + w], "rejected": texts[b * k + l], "strength": m,
                   "p": 1.0 / (1.0 + math.exp(-m)), "prompt_ids": p.ids, "chosen_ids": ids[b * k + w],
                   "rejected_ids": ids[b * k + l]}
            if true is not None and true[b * k + w] is not None and true[b * k + l] is not None:
                row["reward_chosen"], row["reward_rejected"] = true[b * k + w], true[b * k + l]
                if true[b * k + w] != true[b * k + l]:
                    decided += 1
                    agree += true[b * k + w] > true[b * k + l]
            rows.append(row)
    if not rows:
        raise ConfigError(f"osp round {t}: every pair of samples was identical or unjudged; nothing to train on")
    info: dict[str, Any] = {"prompts": len(prompts), "samples": len(prompts) * k, "pairs": len(rows),
                            "identical_dropped": identical, "judge": judge, "judge_queries": queries,
                            "strength_mean": sum(r["p"] for r in rows) / len(rows)}
    if true is not None:
        xs = [x for x in true if x is not None]
        info["reward_mean"] = sum(xs) / len(xs) if xs else float("nan")
        info["judge_agreement"] = agree / decided if decided else float("nan")
    return rows, info


__all__ = ["both_orders", "check_options", "judge_probability", "log_odds", "ranked_pairs", "self_judge",
           "train_self_preferring"]
