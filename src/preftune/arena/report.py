"""The arena's report: ``results.json``, ``leaderboard.md``, ``report.html`` and PNG plots.

Numbers are means over seeds with the standard deviation over seeds (``±``). A difference is
called only when it is beyond that spread: an objective *beats SFT* when its win rate minus
its spread is above 0.5, and the top of the leaderboard is a *clear winner* only when its
true reward minus its spread is above the runner-up's plus the runner-up's spread. With one
seed the spread of the win rate is its standard error over prompts, and no winner is called.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..io import write_json, write_text

SFT_LABEL = "sft (reference)"
CORE = ("true_reward", "win_rate_vs_sft", "kl", "length", "ranking_accuracy", "reward_accuracy")


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(per_seed: dict[str, list[dict[str, float]]], histories: dict[str, list[list[dict]]]) -> dict[str, dict]:
    """Mean and std over seeds of every metric, plus a verdict against the SFT model."""
    out: dict[str, dict] = {}
    for lbl, runs in per_seed.items():
        keys = sorted({k for r in runs for k in r})
        row: dict[str, Any] = {"seeds": len(runs), "per_seed": runs, "history": histories.get(lbl, [])}
        for k in keys:
            row[k], row[f"{k}_std"] = _mean_std([r.get(k, math.nan) for r in runs])
        spread = row["win_rate_vs_sft_std"] if len(runs) > 1 else row.get("win_rate_se", 0.0)
        row["win_rate_spread"] = spread
        wr = row["win_rate_vs_sft"]
        if lbl == SFT_LABEL:
            row["verdict"] = "baseline"
        elif wr - spread > 0.5:
            row["verdict"] = "beats SFT"
        elif wr + spread < 0.5:
            row["verdict"] = "loses to SFT"
        else:
            row["verdict"] = "no clear difference"
        out[lbl] = row
    return out


def ranking(results: dict[str, dict]) -> list[str]:
    return sorted(results, key=lambda k: -results[k]["true_reward"])


def winner_line(results: dict[str, dict]) -> str:
    order = [k for k in ranking(results) if k != SFT_LABEL]
    if not order:
        return "No objective finished."
    top = results[order[0]]
    if SFT_LABEL in results and ranking(results)[0] == SFT_LABEL:
        return (f"No objective reached the SFT model's true reward ({_pm(results[SFT_LABEL], 'true_reward')}); "
                f"the best was **{order[0]}** ({_pm(top, 'true_reward')}).")
    if top["seeds"] < 2:
        return (f"Highest true reward: **{order[0]}** (one seed: no spread, so no winner is called; "
                "run with `--seeds 3`).")
    if len(order) == 1:
        return f"Only **{order[0]}** ran."
    second = results[order[1]]
    if top["true_reward"] - top["true_reward_std"] > second["true_reward"] + second["true_reward_std"]:
        return (f"Clear winner by true reward: **{order[0]}** ({_pm(top, 'true_reward')}) over "
                f"{order[1]} ({_pm(second, 'true_reward')}), beyond the spread over seeds.")
    return (f"No clear winner: **{order[0]}** ({_pm(top, 'true_reward')}) and {order[1]} "
            f"({_pm(second, 'true_reward')}) overlap within one standard deviation over seeds.")


def _pm(row: dict, k: str, digits: int = 3) -> str:
    m, s = row.get(k, math.nan), row.get(f"{k}_std", math.nan)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    if row.get("seeds", 1) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def task_metric_names(results: dict[str, dict]) -> list[str]:
    skip = set(CORE) | {"win_rate_se", "seeds", "per_seed", "history", "verdict", "win_rate_spread"}
    names = set()
    for row in results.values():
        for k in row:
            if not k.endswith("_std") and k not in skip:
                names.add(k)
    return sorted(names)


def leaderboard_table(results: dict[str, dict]) -> list[list[str]]:
    extra = task_metric_names(results)
    head = ["#", "objective", "true reward", "win rate vs SFT", "KL to ref", "length", "rank acc", "reward acc",
            *extra, "verdict"]
    rows = [head]
    for i, lbl in enumerate(ranking(results), 1):
        r = results[lbl]
        wr = f"{r['win_rate_vs_sft']:.3f} ± {r['win_rate_spread']:.3f}"
        rows.append([str(i), lbl, _pm(r, "true_reward"), wr, _pm(r, "kl", 2), _pm(r, "length", 2),
                     _pm(r, "ranking_accuracy"), _pm(r, "reward_accuracy"), *[_pm(r, k) for k in extra],
                     r["verdict"]])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pathologies


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in history if key in h and h[key] is not None]


def _edge_mean(vals: list[float], frac: float = 0.1) -> tuple[float, float]:
    k = max(1, int(len(vals) * frac))
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def pathologies(results: dict[str, dict]) -> list[str]:
    """Plain-language findings the papers predict, read off the numbers."""
    notes: list[str] = []
    base = results.get(SFT_LABEL)
    for lbl in ranking(results):
        if lbl == SFT_LABEL:
            continue
        r = results[lbl]
        for hist in r["history"][:1]:
            ch = [v for _, v in _series(hist, "logps/chosen")]
            mg = [v for _, v in _series(hist, "rewards/margins")]
            if len(ch) >= 4 and len(mg) >= 4:
                (c0, c1), (m0, m1) = _edge_mean(ch), _edge_mean(mg)
                if c1 < c0 - 0.1 and m1 > m0:
                    notes.append(f"**{lbl}**: the chosen answers' log-probability *fell* from {c0:.2f} to {c1:.2f} "
                                 f"nats while the reward margin grew from {m0:.3f} to {m1:.3f} (likelihood "
                                 f"displacement, P16; P13).")
        if base is not None:
            dl = r["length"] - base["length"]
            spread = max(r.get("length_std", 0.0) or 0.0, base.get("length_std", 0.0) or 0.0)
            if dl > 0.1 * base["length"] and dl > spread:
                notes.append(f"**{lbl}**: answers grew from {base['length']:.2f} to {r['length']:.2f} characters "
                             f"(+{100 * dl / base['length']:.0f}%) while true reward went "
                             f"{'down' if r['true_reward'] < base['true_reward'] else 'up'} "
                             f"({base['true_reward']:.3f} -> {r['true_reward']:.3f}): verbosity (P38, P52).")
            if "unsafe" in r and "unsafe" in base and r["unsafe"] > base["unsafe"] + max(0.01, r.get("unsafe_std", 0)):
                notes.append(f"**{lbl}**: complied with more harmful requests than the SFT model "
                             f"({base['unsafe']:.3f} -> {r['unsafe']:.3f}).")
    return notes


# ----------------------------------------------------------------------------- plots


def _plots(out: Path, results: dict[str, dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    order = ranking(results)
    colors = {lbl: plt.cm.tab10(i % 10) for i, lbl in enumerate(sorted(results))}

    def bars(key: str, fname: str, title: str, hline: float | None = None, spread_key: str | None = None) -> None:
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(order) + 2), 3.4))
        vals = [results[k][key] for k in order]
        errs = [results[k].get(spread_key or f"{key}_std", 0.0) or 0.0 for k in order]
        ax.bar(range(len(order)), vals, yerr=errs, capsize=3, color=[colors[k] for k in order])
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=35, ha="right", fontsize=8)
        if hline is not None:
            ax.axhline(hline, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made.append((fname, title))

    bars("true_reward", "true_reward.png", "Mean true reward on held-out prompts (± std over seeds)")
    bars("win_rate_vs_sft", "win_rate.png", "Win rate vs the SFT model (ties count 1/2; ± spread)", 0.5,
         "win_rate_spread")
    bars("length", "length.png", "Mean answer length (characters)")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in order:
        ax.errorbar(results[k]["kl"], results[k]["true_reward"], xerr=results[k].get("kl_std", 0) or 0,
                    yerr=results[k].get("true_reward_std", 0) or 0, fmt="o", color=colors[k], label=k, capsize=2)
    ax.set_xlabel("KL(policy || SFT reference), nats per answer")
    ax.set_ylabel("true reward")
    ax.set_title("Reward vs KL", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reward_vs_kl.png", dpi=110)
    plt.close(fig)
    made.append(("reward_vs_kl.png", "True reward against the KL spent to get it"))

    trained = [k for k in order if results[k]["history"]]
    if trained:
        keys = [("logps/chosen", "log p(chosen), nats"), ("logps/rejected", "log p(rejected), nats"),
                ("rewards/margins", "implicit reward margin"), ("loss", "loss")]
        fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
        for ax, (key, title) in zip(axes.flat, keys):
            for k in trained:
                s = _series(results[k]["history"][0], key)
                if s:
                    ax.plot([a for a, _ in s], _smooth([b for _, b in s]), color=colors[k], label=k, lw=1.2)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            if key == "loss":
                ax.set_yscale("log")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("Training curves (first seed, smoothed)", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        made.append(("training_curves.png", "Training curves: chosen and rejected log-probs, margin, loss"))
    return made


def _smooth(vals: list[float], k: int = 10) -> list[float]:
    out = []
    for i in range(len(vals)):
        w = vals[max(0, i - k + 1):i + 1]
        out.append(sum(w) / len(w))
    return out


# ----------------------------------------------------------------------------- writers


def write_report(out: Path, results: dict[str, dict], meta: dict[str, Any], *, notes_top: Sequence[str] = (),
                 sections: Sequence[Sequence[str]] = ()) -> None:
    """``results.json``, ``leaderboard.md`` and ``report.html``. ``notes_top``: notes shown under the title
    (e.g. "evaluated on training prompts"); ``sections``: extra markdown sections (first line a ``## `` heading;
    paragraphs, ``|`` tables and ``- `` bullets) placed before the preference data."""
    out = Path(out)
    write_json(out / "results.json", {"results": results, **meta})
    table = leaderboard_table(results)
    notes = pathologies(results)
    cfg = meta["config"]
    t = meta["timings"]
    data = meta["data"]
    skipped = meta.get("skipped", {})
    md = [f"# Arena: task `{cfg['task']}`", "",
          f"{meta['task']['description']}. Objectives: {len(results) - 1} ran"
          + (f", {len(skipped)} skipped" if skipped else "") + f"; seeds {cfg['seeds']}; "
          f"{cfg['steps']} steps each, lr {cfg['lr']}, batch {cfg['batch_size']}, label noise {cfg['noise']}.", "",
          _md_table(table), "", winner_line(results), "",
          "Numbers: mean ± std over seeds. Win rate: the policy's answer against the SFT model's on the same "
          "held-out prompt, by true reward, ties 1/2 (spread: std over seeds, or the standard error over prompts "
          "with one seed). `beats SFT` only when the win rate minus its spread is above 0.5.", ""]
    md[1:1] = [x for n in notes_top for x in ("", f"> **Note.** {n}")]
    if notes:
        md += ["## What the papers predict, seen here", ""] + [f"- {n}" for n in notes] + [""]
    for sec in sections:
        md += list(sec) + [""]
    md += ["## Preference data", "", _md_table(
        [["seed", "pairs", "flipped", "ties dropped", "chosen length", "rejected length", "chosen longer"]]
        + [[str(d["seed"]), str(d["pairs"]), str(d["flipped"]), str(d["ties_dropped"]), f"{d['chosen_length']:.2f}",
            f"{d['rejected_length']:.2f}", f"{d['chosen_longer']:.2f}"] for d in data]), ""]
    if skipped:
        md += ["## Skipped", ""] + [f"- `{k}`: {v}" for k, v in skipped.items()] + [""]
    md += ["## Reproduce", "", "```", meta["command"], "```", "",
           f"Time: {t['total']:.0f} s in all (SFT {t['sft_build']:.0f} s"
           f"{', cached' if all(meta.get('sft_cached', [])) else ''}, sampling {t['sampling']:.0f} s, "
           f"training {t['training']:.0f} s, evaluation {t['evaluation']:.0f} s)."]
    write_text(out / "leaderboard.md", "\n".join(md) + "\n")
    write_text(out / "report.html", _html(out, results, meta, table, notes, notes_top, sections))


def _html(out: Path, results: dict[str, dict], meta: dict[str, Any], table: list[list[str]], notes: list[str],
          notes_top: Sequence[str] = (), sections: Sequence[Sequence[str]] = ()) -> str:
    import re

    plots = _plots(out, results)
    e = html.escape

    def md_inline(s: str) -> str:
        s = e(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    cfg = meta["config"]
    rows = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{e(c)}</{'th' if i == 0 else 'td'}>" for c in r)
                   + "</tr>" for i, r in enumerate(table))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>preftune arena: " + e(cfg["task"]) + "</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "td:nth-child(2){text-align:left}pre{background:#f4f4f4;padding:.7em;overflow-x:auto}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}</style></head><body>",
        f"<h1>preftune arena — task <code>{e(cfg['task'])}</code></h1>",
        *(f'<p class="note"><strong>Note.</strong> {md_inline(n)}</p>' for n in notes_top),
        f"<p>{e(meta['task']['description'])}.</p>",
        f"<details><summary>Task definition</summary><pre>{e(meta['task']['doc'])}</pre></details>",
        f"<h2>Leaderboard</h2><table>{rows}</table><p>{md_inline(winner_line(results))}</p>",
        "<p>Mean ± std over seeds " + e(str(cfg["seeds"])) + ". Win rate: policy vs SFT answer on the same held-out "
        "prompt by true reward, ties count 1/2. <i>beats SFT</i> only when the win rate minus its spread is above "
        "0.5.</p>",
    ]
    if notes:
        parts.append("<h2>What the papers predict, seen here</h2><ul>"
                     + "".join(f"<li>{md_inline(n)}</li>" for n in notes) + "</ul>")
    for sec in sections:
        parts.append(_section_html(sec, md_inline))
    parts.append("<h2>Plots</h2>")
    for fname, title in plots:
        parts.append(f"<figure><img src='{e(fname)}' alt='{e(title)}'><figcaption>{e(title)}</figcaption></figure>")
    ex = meta.get("examples", {})
    if ex:
        parts.append("<h2>Sample answers (first seed, held-out prompts)</h2><table><tr><th>objective</th>"
                     "<th>prompt</th><th>answer</th><th>true reward</th></tr>")
        for lbl, rows_ in ex.items():
            for p, a, r in rows_[:4]:
                parts.append(f"<tr><td>{e(lbl)}</td><td><code>{e(p)}</code></td><td><code>{e(a)}</code></td>"
                             f"<td>{r:.2f}</td></tr>")
        parts.append("</table>")
    data = meta["data"]
    parts.append("<h2>Preference data</h2><table><tr><th>seed</th><th>pairs</th><th>flipped</th><th>ties dropped"
                 "</th><th>chosen length</th><th>rejected length</th><th>chosen longer</th></tr>"
                 + "".join(f"<tr><td>{d['seed']}</td><td>{d['pairs']}</td><td>{d['flipped']}</td>"
                           f"<td>{d['ties_dropped']}</td><td>{d['chosen_length']:.2f}</td>"
                           f"<td>{d['rejected_length']:.2f}</td><td>{d['chosen_longer']:.2f}</td></tr>" for d in data)
                 + "</table>")
    if meta.get("skipped"):
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>"
                                                      for k, v in meta["skipped"].items()) + "</ul>")
    t = meta["timings"]
    parts.append(f"<h2>Reproduce</h2><pre>{e(meta['command'])}</pre>"
                 f"<p>Time: {t['total']:.0f} s (SFT {t['sft_build']:.0f} s, sampling {t['sampling']:.0f} s, "
                 f"training {t['training']:.0f} s, evaluation {t['evaluation']:.0f} s).</p>"
                 f"<details><summary>Full configuration</summary><pre>{e(json.dumps(cfg, indent=2, default=str))}"
                 "</pre></details></body></html>")
    return "\n".join(parts)


def _section_html(lines: Sequence[str], inline: Any) -> str:
    """A markdown section (``## `` heading, paragraphs, one ``|`` table, ``- `` bullets) as HTML."""
    e = html.escape
    body = [f"<h2>{inline(lines[0].lstrip('#').strip())}</h2>"]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]
            if ln.startswith("|") and not ln.startswith("|---")]
    body += [f"<p>{inline(ln)}</p>" for ln in lines[1:] if ln and not ln.startswith(("|", "- "))]
    if rows:
        body.append("<table>" + "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{e(c)}</{'th' if i == 0 else 'td'}>"
                                                         for c in row) + "</tr>" for i, row in enumerate(rows))
                    + "</table>")
    bullets = [ln[2:] for ln in lines[1:] if ln.startswith("- ")]
    if bullets:
        body.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in bullets) + "</ul>")
    return "".join(body)
