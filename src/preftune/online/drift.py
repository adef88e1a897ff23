"""DRIFT (P14, Wang et al. 2025, "DRIFT: Learning from Abundant User Dissatisfaction in Real-World Preference
Learning"): iterative DPO whose negatives are logged user-dissatisfied (DSAT) responses and whose positives are
sampled from the evolving policy.

Round ``t`` (P14's abstract: "anchors training on real-world DSAT signals and samples positives dynamically from
the evolving policy", trained with standard DPO and no reward model): for every DSAT log row ``(x, y^-)`` draw the
positive ``y^+ ~ pi_t(.|x)`` from the round's starting policy -- one sample, no reward, no filter -- and train
the DPO loss (Rafailov et al. 2023 eq. 7; the paper's full method section was not readable here, so the
equation is DPO's as the abstract and the authors' configs use it)

    L_t(theta) = -E_(x, y+, y-) log sigmoid( beta [ log pi_theta(y+|x)/pi_t(y+|x) - log pi_theta(y-|x)/pi_t(y-|x) ] )

with ``pi_t`` as the reference; ``pi_{t+1}`` is the trained policy. The negatives stay the same real responses
every round while the positives move with the policy, so the pair's margin does not vanish as it does when both
sides are self-generated (the paper's gradient-degeneration argument). Any pair objective may replace DPO
(``--loss``).

Authors' code, read at cacayaya/DRIFT @ 05636ad9e8851c958a359ebe489d962b8e005627:

* ``gen-drift.py`` ``collate_fn`` / ``generate_batch`` / ``main``: ONE positive per DSAT row, sampled
  (temperature 0.7, top_p 0.9, 512 new tokens) from the current iteration's model, no reward and no filtering;
  the pair written is ``{prompt: the original conversation, chosen: the sample, rejected: the logged DSAT
  response}``. They condition that sample on more than the prompt: the generation input is the conversation,
  the DSAT answer, the user's follow-up complaint and a system line asking for "an improved response that
  addresses their concerns" -- while the pair (and the DPO loss) uses the original prompt only.
  preftune follows the paper's stated "positives sampled from the evolving policy", ``y^+ ~ pi_t(.|x)`` at the
  prompt the loss scores; the authors' feedback-conditioned sampler (which needs the user's follow-up turn in
  the log) is not implemented.
* ``configs/qwen2.5-7b/config-drift-iter{1,2}.yaml``: each iteration is one Alignment-Handbook DPO run (beta
  0.1, lr 5e-7, one epoch) whose ``model_name_or_path`` is the previous iteration's output and with no separate
  reference model -- so the reference is the round's starting policy ``pi_t``, as here. They add
  ``rpo_alpha: 0.001`` (an NLL term on the chosen, commented "optional"); preftune's default is the paper's plain
  DPO. Their iteration 0 is DPO on a small DSAT->SAT seed set (``config-seed.yaml``); run that with
  ``preftune train`` first if you have such pairs.

Differences on purpose: a pair whose sampled positive is token-for-token the DSAT response is dropped (its DPO
gradient is exactly zero; it would only dilute the batch mean) and counted (``identical_dropped``);
``--num-generations K > 1`` pairs K positives with each DSAT response (the paper: K = 1, the default). A reward
source, when one is given (``--task``, ``--reward-fn``, ...), only scores the pairs for the round summary
(``reward_chosen``, ``reward_rejected``, ``chosen_wins``); it never picks or filters the positives.

The DSAT log is the ``--prompts`` file: each row holds the prompt (``--prompt-column``, a string or a list of
``{role, content}`` messages) and the dissatisfied response (``--dsat-column``, default ``rejected``: a string,
an assistant message ``{role, content}``, or a list of messages whose last one is the assistant's -- the authors'
format). A bad row is a one-line error naming the file, row and field (or skipped and counted with
``--on-bad-row skip``). Rounds run on the round runner (``online/rounds.py``): ``round-t/pairs.jsonl`` with the
token ids as sampled, ``round-t/`` an ordinary run directory, ``final/`` the last round's policy, ``--resume``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from .prompts import Prompt


@dataclass
class DsatRow:
    """One logged dissatisfied response: its prompt (tokenized) and the response as text and token ids."""

    prompt: Prompt
    text: str
    ids: list[int]


def dsat_text(value: Any, *, file: str, row: int, field: str) -> str:
    """The dissatisfied response of a log row: a string, an assistant message, or a conversation whose last
    message is the assistant's. Anything else is a one-line :class:`DataError` naming file, row and field."""
    def bad(msg: str, reason: str) -> DataError:
        return DataError(msg, file=file, row=row, field=field, reason=reason)

    if value is None:
        raise bad("is missing (drift's dissatisfied response; --dsat-column names its column)", "missing_field")
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict):
            raise bad("is a list but not a conversation of {role, content} messages", "bad_type")
        value = value[-1]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant" or "content" not in value:
            raise bad(f"is a message of role '{value.get('role')}' or without content; the dissatisfied response "
                      "is the assistant's", "bad_type")
        value = value["content"]
    if not isinstance(value, str):
        raise bad(f"is a {type(value).__name__}, not a string or an assistant message", "bad_type")
    if not value.strip():
        raise bad("is empty", "empty")
    return value


def dsat_ids(tokenizer: Any, prompt: Prompt, text: str) -> list[int]:
    """The token ids of ``text`` as a response to ``prompt``, ending with EOS as a sampled response does.

    Prompt and response are tokenized together (as the offline data path and TRL do) and the response is what
    follows the prompt's own ids; when the joint tokens do not start with them (a token merging across the
    boundary, or a prompt cut to ``max_prompt_length``), the response is tokenized alone."""
    from ..data.tokenize import _Encoder

    enc = _Encoder(tokenizer)
    if isinstance(prompt.raw, list):  # a conversation: the template renders the assistant turn and its end
        full = enc.ids([*prompt.raw, {"role": "assistant", "content": text}])
    else:
        full = enc.ids(prompt.text + enc.with_eos(text))
    n = len(prompt.ids)
    if len(full) > n and full[:n] == list(prompt.ids):
        return full[n:]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def dsat_rows(prompts: Sequence[Prompt], tokenizer: Any, *, column: str, source: str, max_length: int | None,
              on_bad_row: str = "error") -> tuple[list[DsatRow], dict[str, int]]:
    """The DSAT log's rows, checked and tokenized: ``(rows, skipped counts)``. A negative longer than
    ``max_length`` minus its prompt is cut, as the offline data path cuts responses."""
    out: list[DsatRow] = []
    skipped: dict[str, int] = {}
    for p in prompts:
        try:
            text = dsat_text(p.columns.get(column), file=source, row=p.row, field=column)
            ids = dsat_ids(tokenizer, p, text)
        except DataError as e:
            if on_bad_row != "skip":
                raise
            skipped[e.reason or "bad_row"] = skipped.get(e.reason or "bad_row", 0) + 1
            continue
        if max_length is not None:
            ids = ids[:max(1, max_length - len(p.ids))]
        out.append(DsatRow(p, text, ids))
    if not out:
        raise ConfigError(f"{source}: no DSAT rows" + (f" left ({sum(skipped.values())} bad rows skipped)"
                                                       if skipped else ""))
    return out, skipped


def drift_pairs(dsat: Sequence[DsatRow], positives: Sequence[tuple[str, list[int]]], k: int,
                scores: Sequence[float | None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """P14's pairs of a round: sample ``j`` of DSAT row ``i`` (``positives[i * k + j]``, text and token ids)
    is chosen, the logged DSAT response rejected. ``scores`` (optional, only reported): the K positives' then
    the DSAT responses' rewards, ``len(dsat) * (k + 1)`` values. Returns ``(rows, identical_dropped)``; a
    positive identical (token for token) to its DSAT response makes no pair."""
    if len(positives) != len(dsat) * k:
        raise ValueError(f"{len(positives)} positives for {len(dsat)} DSAT rows x {k}")
    rows, same = [], 0
    n_pos = len(dsat) * k
    for i, d in enumerate(dsat):
        for j in range(k):
            text, ids = positives[i * k + j]
            if list(ids) == list(d.ids):
                same += 1
                continue
            row = {"prompt": d.prompt.raw, "chosen": text, "rejected": d.text, "dsat_row": d.prompt.row,
                   "prompt_ids": list(d.prompt.ids), "chosen_ids": list(ids), "rejected_ids": list(d.ids)}
            if scores is not None:
                row["score_chosen"], row["score_rejected"] = scores[i * k + j], scores[n_pos + i]
            rows.append(row)
    return rows, same


def train_drift(cfg: Any, online: Any, prompts: list[Prompt], reward: Any, *, model: Any = None,
                tokenizer: Any, callbacks: Sequence[Any] = ()) -> Any:
    """``preftune online --algo drift``: ``online.rounds`` rounds of P14's pairs (policy sample vs logged DSAT
    response) trained with ``cfg.loss`` (DPO by default), the round's starting policy as the reference. Returns
    the last round's :class:`~preftune.train.loop.RunResult` with every round's history."""
    from ..models.generate import generate
    from .prompts import columns_for
    from .rounds import pair_items, run_rounds

    if isinstance(online.prompts, str) and not online.prompts:
        raise ConfigError("drift learns from a log of dissatisfied responses: give --prompts FILE whose rows hold "
                          f"the prompt and the dissatisfied response (column --dsat-column, now "
                          f"'{online.dsat_column}')")
    if not online.dsat_column:
        raise ConfigError("dsat_column must name the column of the dissatisfied responses")
    source = str(online.prompts) if isinstance(online.prompts, (str, os.PathLike)) else "<memory>"
    dsat, skipped = dsat_rows(prompts, tokenizer, column=online.dsat_column, source=source,
                              max_length=cfg.max_length, on_bad_row=cfg.on_bad_row)
    if skipped:
        print(f"preftune: drift: skipped bad DSAT rows ({sum(skipped.values())}): "
              + ", ".join(f"{a}: {b}" for a, b in sorted(skipped.items())))
    k = online.k

    def make_rows(t: int, policy: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gens = generate(policy, tokenizer, [d.prompt.ids for d in dsat], n=k, max_new_tokens=online.max_new_tokens,
                        temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                        seed=cfg.seed * 1_000_003 + t, batch_size=online.generation_batch_size, progress=cfg.progress)
        texts = tokenizer.batch_decode([g.response_ids for g in gens], skip_special_tokens=True)
        scores = None
        if reward is not None:  # reported only: DRIFT picks no positive by reward
            ps = [d.prompt for d in dsat]
            cols = columns_for(ps, k)
            cols = {c: v + [p.columns.get(c) for p in ps] for c, v in cols.items()}
            scores, _ = reward.parts([p.text for p in ps for _ in range(k)] + [p.text for p in ps],
                                     texts + [d.text for d in dsat], cols, step=t, on_bad=online.on_bad_reward,
                                     skipped={})
        rows, same = drift_pairs(dsat, [(x, g.response_ids) for x, g in zip(texts, gens)], k, scores)
        if not rows:
            raise ConfigError(f"drift round {t}: every sampled positive equals its DSAT response; no pair to train on")
        info: dict[str, Any] = {"pairs": len(rows), "dsat_rows": len(dsat), "identical_dropped": same}
        scored = [(r["score_chosen"], r["score_rejected"]) for r in rows
                  if r.get("score_chosen") is not None and r.get("score_rejected") is not None]
        if scored:
            info.update(reward_chosen=sum(c for c, _ in scored) / len(scored),
                        reward_rejected=sum(r for _, r in scored) / len(scored),
                        chosen_wins=sum(c > r for c, r in scored) / len(scored))
        return rows, info

    return run_rounds(cfg, online.rounds, name="drift", kind="pair", data_file="pairs.jsonl", make_rows=make_rows,
                      make_items=pair_items, model=model, tokenizer=tokenizer, callbacks=callbacks)


__all__ = ["DsatRow", "drift_pairs", "dsat_ids", "dsat_rows", "dsat_text", "train_drift"]
