"""Robust Preference Selection (P09 RPS) against best-of-k at the user's own direction, on a two-objective task.

The task (built from the arena's ``concise`` task): echo a one-letter word, padded with ``!`` as the user likes. Two reward
dimensions, both known exactly:

* correctness ``r_c``: the ``concise`` task's true reward, copy accuracy minus 0.1 per character beyond the word;
* verbosity ``r_v = sqrt(min(extra, 12) / 12)``, ``extra`` the characters beyond the word.

A user's direction ``v = (cos t, sin t)`` (P09 Section 3) asks for ``argmax v^T r``: no padding for small ``t``,
more as ``t`` grows (``extra* ~ 2.1 tan(t)^2``: 1 at 30 deg, 4 at 55, 10 at 65, 12 from 70).

The model: a tiny character-level transformer trained by SFT on direction-tagged answers, ``[c87 v50] echo k:``
-> ``k!`` (the weights as integers ``round(100 v)``, as the authors' DPA prompt writes them, in a compact form
the tiny model reads). Its training directions are concentrated around the centre ``t ~ N(30, 6) deg``; the best
answer for the tag, with the noise of the arena's demonstrations (20 % a corrupted word, 30 % padding off by one).
Directions far from 30 deg are the under-represented ones.

For each user direction and held-out word, k = 5 candidates and the one with the best ``v^T r``:

* ``baseline``: all five generated for ``v`` itself (P09's compute-matched best-of-k);
* ``rps_grid``: the authors' neighbourhood, the 5 closest directions of a 5-degree grid over [0, 90] deg within
  theta_max = 30 deg;
* ``rps_grid_train``: the same grid restricted to the training directions' range [15, 45] deg (the authors bound
  their grid to [-40, 40] deg, where their models were trained), with theta_max = 60 deg so that directions up to
  75 deg still get k = 5 of them;
* ``rps_sample``: 5 directions sampled uniformly in angle within 30 deg (nonnegative weights).

The win rate of a method against the baseline is, over prompts, P(its pick scores higher) + 1/2 P(tie), by the
exact ``v^T r`` (the judge: the true reward; the same reward selects). Seeds change the SFT model (its data and
initialisation) and the sampling.

    .venv/bin/python benchmarks/rps_demo.py            # 3 seeds; docs/figures/rps-winrate.png
    .venv/bin/python benchmarks/rps_demo.py --seeds 0 --prompts 40 --directions 30 65   # a quick look
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics as st
import sys
import time
from pathlib import Path

PAD_PENALTY = 0.1     # the arena concise task's penalty per extra character
VERB_CAP = 12         # verbosity saturates at 12 extra characters
CENTRE, SPREAD = 30.0, 6.0   # the training directions: t ~ N(30, 6) deg
LETTERS = "abcdefghkmnpqrstvwz"
SFT = dict(demos=2000, steps=400, batch_size=32, lr=3e-3, hidden_size=32, num_layers=2, num_heads=2)
METHODS = ("baseline", "rps_grid", "rps_grid_train", "rps_sample")


def _word(prompt: str) -> str:
    return prompt[prompt.index("echo ") + len("echo "):-1]


def correctness(prompts, completions, **_):
    """``r_c``: the concise task's true reward (copy accuracy - 0.1 per extra character)."""
    out = []
    for p, c in zip(prompts, completions):
        w = _word(p)
        out.append(sum(a == b for a, b in zip(w, c)) / len(w) - PAD_PENALTY * max(0, len(c) - len(w)))
    return out


def verbosity(prompts, completions, **_):
    """``r_v = sqrt(min(extra, 12) / 12)``: concave, so each direction has its own best padding."""
    return [math.sqrt(min(max(0, len(c) - len(_word(p))), VERB_CAP) / VERB_CAP) for p, c in zip(prompts, completions)]


def best_extra(v) -> int:
    """The padding that maximises ``v^T r`` for an exact copy."""
    return max(range(VERB_CAP + 1), key=lambda e: v[0] * (1 - PAD_PENALTY * e) + v[1] * math.sqrt(e / VERB_CAP))


def tag(prompt: str, v) -> str:
    """The direction written into the prompt: the weights as integers round(100 v), compactly."""
    return f"[c{int(round(100 * v[0]))} v{int(round(100 * v[1]))}] {prompt}"


def _task_class():
    from preftune.arena.tasks import Task, _corrupt
    from preftune.online.rps import direction_at

    class DirectedEchoTask(Task):
        """Echo a word with the padding the tagged direction asks for (training directions t ~ N(30, 6) deg)."""

        name = "rps_echo"
        max_new_tokens = 20

        def words(self, n, rng):
            # one-letter words: a model this small learns to copy one character in a few hundred steps
            return ["echo " + rng.choice(LETTERS) + ":" for _ in range(n)]

        def angle(self, rng):
            return min(90.0, max(0.0, rng.gauss(CENTRE, SPREAD)))

        def sample_prompts(self, n, rng):
            return [tag(p, direction_at(self.angle(rng))) for p in self.words(n, rng)]

        def reward(self, prompt, response):
            c, v = (int(x[1:]) / 100 for x in prompt[1:prompt.index("]")].split())
            user = prompt[prompt.index("]") + 2:]
            return c * correctness([user], [response])[0] + v * verbosity([user], [response])[0]

        def demonstrations(self, n, rng):
            out = []
            for p in self.words(n, rng):
                v = direction_at(self.angle(rng))
                w, e = _word(p), best_extra(v)
                if rng.random() < 0.3:
                    e = max(0, e + rng.choice((-1, 1)))
                if rng.random() < 0.2:
                    w = _corrupt(w, rng, LETTERS)
                out.append((tag(p, v), w + "!" * e))
            return out

    return DirectedEchoTask


def run_seed(seed: int, args, work: Path) -> list[dict]:
    import torch

    from preftune.arena.models import SFTConfig, load_sft, sft_model_dir
    from preftune.online.rps import direction_at, robust_preference_selection

    torch.set_num_threads(1)
    task = _task_class()()
    sft, _ = sft_model_dir(task, seed, SFTConfig(**SFT), work / "sft",
                           progress=lambda m: print(m, flush=True) if args.verbose else None)
    model, tok = load_sft(sft)
    prompts = task.words(args.prompts, random.Random(f"rps-eval-{seed}"))
    common = dict(k=args.k, max_new_tokens=task.max_new_tokens, format_prompt=tag, batch_size=256)
    settings = {"baseline": dict(neighbourhood="same"),
                "rps_grid": dict(neighbourhood="grid", angle_range=(0.0, 90.0)),
                # theta_max 60 here: within 30 deg a direction beyond 75 deg has fewer than k grid angles in range
                "rps_grid_train": dict(neighbourhood="grid", angle_range=(15.0, 45.0), theta_max=60.0),
                "rps_sample": dict(neighbourhood="sample", nonnegative=True)}
    rows = []
    for t in args.directions:
        v = direction_at(t)
        gen_seed = seed * 1000 + int(t)
        picks = {}
        for m in args.methods:
            sel = robust_preference_selection(model, tok, prompts, v, [correctness, verbosity], seed=gen_seed,
                                              **{"theta_max": args.theta_max, **common, **settings[m]})
            picks[m] = sel
        base = [s.score for s in picks["baseline"]]
        one = [s.candidates[0].score for s in picks["baseline"]]  # a single sample at v: the no-selection level
        for m in args.methods:
            sc = [s.score for s in picks[m]]
            wins = sum(a > b + 1e-9 for a, b in zip(sc, base))
            ties = sum(abs(a - b) <= 1e-9 for a, b in zip(sc, base))
            extra = [max(0, len(s.response) - len(_word(s.prompt))) for s in picks[m]]
            exact = [float(s.response.rstrip("!") == _word(s.prompt)) for s in picks[m]]
            rows.append({"seed": seed, "angle": t, "method": m, "win_rate": (wins + 0.5 * ties) / len(sc),
                         "tie_rate": ties / len(sc), "score": st.mean(sc), "single_sample": st.mean(one),
                         "best_possible": v[0] * (1 - PAD_PENALTY * best_extra(v))
                         + v[1] * math.sqrt(best_extra(v) / VERB_CAP),
                         "extra": st.mean(extra), "word_exact": st.mean(exact),
                         "directions": [round(math.degrees(math.atan2(c.direction[1], c.direction[0])), 1)
                                        for c in picks[m][0].candidates]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows, args) -> None:
    print(f"\nwin rate against the baseline (same k = {args.k}), mean ± std over seeds {args.seeds}; "
          f"training directions ~ N({CENTRE:g}, {SPREAD:g}) deg")
    print(f"{'angle':>6} {'method':>15} {'win rate':>15} {'ties':>6} {'v^T r':>15} {'best':>6} {'extra':>6}")
    for t in args.directions:
        for m in args.methods:
            rs = [r for r in rows if r["angle"] == t and r["method"] == m]
            if not rs:
                continue

            def ms(key):
                xs = [r[key] for r in rs]
                return f"{st.mean(xs):.3f} ± {st.stdev(xs) if len(xs) > 1 else 0:.3f}"

            print(f"{t:>6g} {m:>15} {ms('win_rate'):>15} {st.mean(r['tie_rate'] for r in rs):>6.2f} "
                  f"{ms('score'):>15} {rs[0]['best_possible']:>6.3f} {st.mean(r['extra'] for r in rs):>6.2f}")


def figure(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for m, c in zip(METHODS, ("k", "C0", "C1", "C2")):
        if m not in args.methods:
            continue
        xs = sorted(set(args.directions))
        for ax, key in ((a1, "win_rate"), (a2, "score")):
            if m == "baseline" and key == "win_rate":
                continue
            mean = [st.mean(r[key] for r in rows if r["angle"] == t and r["method"] == m) for t in xs]
            sd = [st.stdev([r[key] for r in rows if r["angle"] == t and r["method"] == m])
                  if len(args.seeds) > 1 else 0 for t in xs]
            ax.errorbar(xs, mean, yerr=sd, fmt="-o", color=c, capsize=3, label=m)
    xs = sorted(set(args.directions))
    a2.plot(xs, [next(r["best_possible"] for r in rows if r["angle"] == t) for t in xs], "k:", label="best possible")
    a2.plot(xs, [st.mean(r["single_sample"] for r in rows if r["angle"] == t and r["method"] == "baseline")
                 for t in xs], "--", color="grey", label="one sample at v")
    for ax in (a1, a2):
        ax.axvspan(CENTRE - 2 * SPREAD, CENTRE + 2 * SPREAD, color="C7", alpha=0.15, label="training ±2 sd")
        ax.set_xlabel("user direction t (deg): v = (cos t, sin t) over (correctness, verbosity)")
    a1.axhline(0.5, color="k", lw=0.5)
    a1.set_ylabel("win rate against best-of-k at v")
    a1.set_title(f"RPS vs baseline, k = {args.k}, seeds {args.seeds} (mean ± sd)")
    a2.set_ylabel("mean v^T r of the selected answer")
    a2.set_title("selected answer's projected reward")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print("wrote", args.figure)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--directions", type=float, nargs="+", default=[20, 30, 40, 55, 65, 75],
                    help="user directions t in degrees")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--theta-max", type=float, default=30.0)
    ap.add_argument("--out", default="", help="work directory (SFT models are cached there)")
    ap.add_argument("--json", default="", help="write every row here")
    ap.add_argument("--from-json", default="", help="summarise and plot rows written by --json")
    ap.add_argument("--figure", default="docs/figures/rps-winrate.png")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if "baseline" not in args.methods:
        args.methods = ["baseline", *args.methods]
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
    else:
        import tempfile

        work = Path(args.out or tempfile.mkdtemp(prefix="rps-demo-"))
        rows, t0 = [], time.perf_counter()
        for seed in args.seeds:
            rows += run_seed(seed, args, work)
        print(f"{time.perf_counter() - t0:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    summary(rows, args)
    if args.figure:
        figure(rows, args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    sys.exit(main())
