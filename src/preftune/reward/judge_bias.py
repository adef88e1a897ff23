"""Self-preference of an LLM judge: the DBG score against gold judgments, with the naive score beside it (P58).

>>> from preftune.reward.judge_bias import judge_bias
>>> rows = [{"own_first": "own", "own_second": "own", "gold": "own"},
...         {"own_first": "own", "own_second": "other", "gold": "other"},
...         {"own_first": "own", "own_second": "own", "gold": "other"},
...         {"own_first": "other", "own_second": "other", "gold": ["other", "other", "own"]}]
>>> r = judge_bias(rows)
>>> r["judge_win_rate"], r["gold_win_rate"], r["dbg"], r["naive"]
(62.5, 25.0, 37.5, 25.0)

Paper: Zhi-Yuan Chen, Hao Wang, Xinyu Zhang, Enrui Hu, Yankai Lin, "Beyond the Surface: Measuring Self-Preference
in LLM Judgments" (arXiv:2506.02592). A judge compares its own response with another model's response to the same
instruction. Scores are win rates in percent, a tie counting one half:

* ``judge_win_rate`` (Score_judge(own)): how often the judge prefers its own response, each item judged in both
  presentation orders and the two verdicts combined (position bias cancels): the mean over both orders of the
  judge's probability that its own response is better, a win above 1/2, a loss below, a tie at 1/2 (so two
  discrete verdicts that disagree are a tie);
* ``gold_win_rate`` (Score_gold(own)): the same response pairs by gold judgments, the proxy for true quality; an
  item's gold verdict is the majority of its gold votes (several gold judges, each in both orders), a tie at an
  even split;
* ``dbg = judge_win_rate - gold_win_rate``: the self-preference bias with response quality taken out -- zero for an
  unbiased judge, whatever the quality of its responses;
* ``naive = judge_win_rate - (100 - judge_win_rate)``: the score the judge gives its own responses minus the score
  it gives the others', the measure the paper argues conflates bias with quality (a judge whose responses really are
  better has a positive naive score without any bias).

The paper's text defining the DBG score was not accessible here; the definitions follow its abstract ("the
difference between the scores assigned by the judge model to its own responses and the corresponding gold
judgments") and the authors' code, zhiyuanc2001/self-preference at commit
978790053fcc3eabadf432d2c95b11320c9ec252: ``average_preference.py`` (each order's two probabilities normalised,
then averaged over the two orders), ``test_by_wr/cal_win_rate_hard.py`` (``judge_normal``: a win 1, a tie 1/2;
gold: majority of three gold judges x two orders, a tie 1/2; win rates in percent) and
``merge_preference_infer_generate.py`` (gold verdicts in both orders).

A verdict is ``"own"``, ``"other"`` or ``"tie"``, or a number in [0, 1], the judge's probability that its OWN
response is better (the positions are already resolved: ``own_first`` is the verdict with the judge's response shown
first, ``own_second`` with it shown second). Gold is one verdict or a list of verdicts (votes).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

from ..errors import DataError

VERDICTS = {"own": 1.0, "other": 0.0, "tie": 0.5}


def verdict_probability(v: Any) -> float:
    """A verdict as the probability that the judge's own response is better: own 1, other 0, tie 1/2, a number
    in [0, 1] as it is."""
    if isinstance(v, bool):
        raise ValueError(f"a verdict must be 'own', 'other', 'tie' or a number in [0, 1], got {v!r}")
    if isinstance(v, str):
        if v.strip().lower() not in VERDICTS:
            raise ValueError(f"a verdict must be 'own', 'other', 'tie' or a number in [0, 1], got {v!r}")
        return VERDICTS[v.strip().lower()]
    if isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0:
        return float(v)
    raise ValueError(f"a verdict must be 'own', 'other', 'tie' or a number in [0, 1], got {v!r}")


def outcome(p: float) -> float:
    """A win 1 (p > 1/2), a loss 0 (p < 1/2), a tie 1/2 (P58 code: ``judge_normal``)."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def judge_item_score(own_first: Any, own_second: Any) -> float:
    """The judge's outcome for its own response on one item: both orders' probabilities averaged, then
    :func:`outcome` (P58 code: ``average_preference.py`` then ``judge_normal``)."""
    return outcome((verdict_probability(own_first) + verdict_probability(own_second)) / 2)


def gold_item_score(gold: Any) -> float:
    """The gold outcome for the judge's response on one item: the majority of the gold votes (one verdict or a
    list), an even split a tie (P58 code: the ``golden`` count in ``cal_win_rate_hard.py``). A vote is rounded to
    own / other / tie first, so a probability of 0.7 is one vote for own."""
    votes = gold if isinstance(gold, (list, tuple)) else [gold]
    if not votes:
        raise ValueError("gold must be a verdict or a non-empty list of verdicts")
    outs = [outcome(verdict_probability(v)) for v in votes]
    own, other = outs.count(1.0), outs.count(0.0)
    return 1.0 if own > other else 0.0 if other > own else 0.5


def dbg_score(judge_scores: Sequence[float], gold_scores: Sequence[float]) -> dict:
    """Win rates (percent) and the two bias scores from per-item outcomes (each 0, 1/2 or 1)."""
    if len(judge_scores) != len(gold_scores) or not judge_scores:
        raise ValueError(f"need the same non-zero number of judge and gold outcomes, got {len(judge_scores)} "
                         f"and {len(gold_scores)}")
    wr_judge = 100.0 * sum(judge_scores) / len(judge_scores)
    wr_gold = 100.0 * sum(gold_scores) / len(gold_scores)
    return {"items": len(judge_scores), "judge_win_rate": wr_judge, "gold_win_rate": wr_gold,
            "dbg": wr_judge - wr_gold, "naive": wr_judge - (100.0 - wr_judge)}


def judge_bias(rows: Iterable[dict], *, file: str | None = None, row_numbers: Sequence[int] | None = None,
               group_field: str = "judge") -> dict:
    """DBG and naive scores over rows ``{own_first, own_second, gold[, judge]}``; with a ``judge`` field, one result
    per judge under ``judges`` as well as the pooled one. A bad row raises :class:`DataError` naming file, row
    (``row_numbers[i]`` when given, e.g. the line numbers of a JSONL file, else 1-based positions) and field."""
    judge, gold, groups = [], [], defaultdict(lambda: ([], []))
    rows = list(rows)
    numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(rows) + 1))
    if len(numbers) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(numbers)} row numbers")
    for i, row in zip(numbers, rows):
        if not isinstance(row, dict):
            raise DataError("a row must be a JSON object", file=file, row=i)
        for key in ("own_first", "own_second", "gold"):
            if key not in row:
                raise DataError("missing", file=file, row=i, field=key)
        try:
            j = judge_item_score(row["own_first"], row["own_second"])
        except ValueError as e:
            key = "own_first"
            try:
                verdict_probability(row["own_first"])
                key = "own_second"
            except ValueError:
                pass
            raise DataError(str(e), file=file, row=i, field=key) from None
        try:
            g = gold_item_score(row["gold"])
        except ValueError as e:
            raise DataError(str(e), file=file, row=i, field="gold") from None
        judge.append(j)
        gold.append(g)
        if group_field in row:
            groups[str(row[group_field])][0].append(j)
            groups[str(row[group_field])][1].append(g)
    if not judge:
        raise DataError("no rows", file=file)
    out = dbg_score(judge, gold)
    if groups:
        out["judges"] = {name: dbg_score(js, gs) for name, (js, gs) in sorted(groups.items())}
    return out
