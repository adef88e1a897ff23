"""Online Self-Preferring (P28 OSP) on an arena task whose true reward is known: does a tiny model that judges its
own samples improve by the true reward?

The task: the arena's ``concise`` (echo a word and stop; the true reward is the copy's accuracy minus 0.1 per
padding character; the SFT demonstrations pad with ``!`` 30 % of the time). As in the paper, the model's judging
ability comes from fine-tuning on offline preference data in the judge's format: the SFT data mixes the task's
demonstrations with judging examples ``"echo kqz: A:kqz!! B:kqz better:"`` -> ``"B"``, whose candidates are drawn
like the demonstrations and whose verdict is the one with the higher *true* reward (an unbiased annotator; ties
left out). One set of weights is then policy and judge.

Methods (same SFT model, same prompts, same rounds and optimizer steps per round; ``preftune online --algo osp``'s
runner, :func:`preftune.online.self_preferring.train_self_preferring`):

* ``osp``: the policy judges its own K samples (``--osp-judge self``), ranked pairing, soft-preference
  cross-entropy (``spce``): the paper's method;
* ``osp_hard``: the same self-judged ranked pairs with hard labels (``dpo``): the paper's "no preference strength"
  ablation -- iterative online DPO labelled by the model itself;
* ``osp_oracle``: the true reward as the judge (``--osp-judge reward``), ``spce``: what a perfect judge gives.

Measured on 128 held-out prompts x 4 samples (temperature 1, fixed seed): the true reward, the exact-copy rate and
the padded rate; for each model, the judge's accuracy on 256 held-out judging pairs (verdict by the higher of its
two probabilities, both orders averaged). The judge's agreement with the true reward on the pairs OSP built is
read from each round's ``round.json``.

    .venv/bin/python benchmarks/self_preferring_demo.py                 # 3 seeds, writes docs/figures/osp-concise.png
    .venv/bin/python benchmarks/self_preferring_demo.py --seeds 0 --methods osp   # a quick look
"""
from __future__ import annotations

import argparse
import json
import random
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

import torch

TEMPLATE = "{prompt} A:{a} B:{b} better:"


def _task_class():
    from preftune.arena.tasks import ConciseTask, _corrupt

    class JudgedConcise(ConciseTask):
        """``concise`` whose demonstrations also teach the model to judge two answers (verdict ``A`` or ``B``)."""

        name = "concise_judged"

        def __init__(self, judge_fraction: float = 0.5, **kw):
            super().__init__(**kw)
            self.judge_fraction = judge_fraction

        def candidate(self, w: str, rng: random.Random) -> str:
            """An answer drawn like the demonstrations: exact 50 %, padded 30 %, one edit 20 %."""
            u = rng.random()
            return w if u < 0.5 else (w + "!" * rng.randint(1, 6) if u < 0.8 else _corrupt(w, rng, self.letters))

        def judge_pair(self, rng: random.Random) -> tuple[str, str, str] | None:
            """(prompt, a, b) with different true rewards, or None for a tie."""
            p = self.sample_prompts(1, rng)[0]
            a, b = self.candidate(self.target(p), rng), self.candidate(self.target(p), rng)
            return None if self.reward(p, a) == self.reward(p, b) else (p, a, b)

        def demonstrations(self, n, rng):
            out = super().demonstrations(n - int(n * self.judge_fraction), rng)
            while len(out) < n:
                ex = self.judge_pair(rng)
                if ex is not None:
                    p, a, b = ex
                    out.append((TEMPLATE.format(prompt=p, a=a, b=b),
                                "A" if self.reward(p, a) > self.reward(p, b) else "B"))
            rng.shuffle(out)
            return out

    return JudgedConcise


JudgedConcise = _task_class()


# ----------------------------------------------------------------------------- measuring


def load(model_dir):
    from preftune.arena.models import load_sft

    return load_sft(model_dir)


def policy_metrics(model, tok, task, prompts: list[str], n: int, seed: int) -> dict[str, float]:
    from preftune.arena.models import sample

    outs = sample(model, tok, prompts, n, seed=seed, max_new_tokens=task.max_new_tokens)
    rs, ex, pad = [], [], []
    for p, ss in zip(prompts, outs):
        for s in ss:
            rs.append(task.reward(p, s.response))
            m = task.metrics(p, s.response)
            ex.append(m["exact"])
            pad.append(m["padded"])
    return {"reward": st.mean(rs), "exact": st.mean(ex), "padded": st.mean(pad)}


def judge_accuracy(model, tok, task, pairs) -> float:
    from preftune.online.self_preferring import both_orders, self_judge

    qs = []
    for p, a, b in pairs:
        qs += [TEMPLATE.format(prompt=p, a=a, b=b), TEMPLATE.format(prompt=p, a=b, b=a)]
    pj = self_judge(model, tok, qs, ("A", "B"))
    right = 0
    for n, (p, a, b) in enumerate(pairs):
        pab = both_orders(pj[2 * n], pj[2 * n + 1])
        right += (pab > 0.5) == (task.reward(p, a) > task.reward(p, b))
    return right / len(pairs)


# ----------------------------------------------------------------------------- methods


def run_method(method: str, sft: Path, out: Path, seed: int, args) -> Path:
    from preftune.online import OnlineConfig
    from preftune.online.prompts import task_prompts
    from preftune.online.rewards import build_reward
    from preftune.online.self_preferring import train_self_preferring
    from preftune.train import TrainConfig
    from preftune.train.setup import load_tokenizer_for

    task = JudgedConcise()
    loss = "dpo" if method == "osp_hard" else "spce"
    cfg = TrainConfig(model=str(sft), output=str(out), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      progress=False, save_every=0, seed=seed, loss=loss, beta=args.beta)
    online = OnlineConfig(algo="osp", num_generations=args.k, max_new_tokens=task.max_new_tokens, rounds=args.rounds,
                          osp_judge="reward" if method == "osp_oracle" else "self", osp_template=TEMPLATE)
    tok = load_tokenizer_for(cfg, None)
    _, prompts = task_prompts(task, tok, args.prompts, seed)
    reward = build_reward(task=task)
    train_self_preferring(cfg, online, prompts, reward, tokenizer=tok)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["osp", "osp_hard", "osp_oracle"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per round")
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--prompts", type=int, default=64, help="training prompts per round")
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--sft-demos", type=int, default=4000)
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--out", default="", help="work directory (default: a temporary one)")
    ap.add_argument("--json", default="", help="write every row here")
    ap.add_argument("--figure", default="docs/figures/osp-concise.png")
    ap.add_argument("--from-json", default="", help="summarise and plot rows written by --json, training nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
    else:
        rows = run_all(args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    summary(rows, args)
    if args.figure:
        figure(rows, args)
    return 0


def run_all(args) -> list[dict]:
    from preftune.arena.models import SFTConfig, sft_model_dir

    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="osp-demo-"))
    task = JudgedConcise()
    eval_prompts = task.sample_prompts(args.eval_prompts, random.Random("osp-eval"))
    jrng = random.Random("osp-judge-eval")
    jpairs = []
    while len(jpairs) < 256:
        ex = task.judge_pair(jrng)
        if ex is not None:
            jpairs.append(ex)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        sft, _ = sft_model_dir(task, seed, SFTConfig(demos=args.sft_demos, steps=args.sft_steps, batch_size=64,
                                                     hidden_size=64, num_layers=2, num_heads=4), work / "sft")
        model, tok = load(sft)
        row = {"method": "sft", "seed": seed, "round": 0, **policy_metrics(model, tok, task, eval_prompts, 4, 1234),
               "judge_accuracy": judge_accuracy(model, tok, task, jpairs), "seconds": round(time.perf_counter() - t0)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        for m in args.methods:
            t0 = time.perf_counter()
            out = run_method(m, sft, work / f"{m}-s{seed}", seed, args)
            secs = round(time.perf_counter() - t0)
            for t in range(1, args.rounds + 1):
                rdir = out / f"round-{t}"
                model, tok = load(rdir / "final")
                info = json.loads((rdir / "round.json").read_text())
                row = {"method": m, "seed": seed, "round": t,
                       **policy_metrics(model, tok, task, eval_prompts, 4, 1234),
                       "judge_accuracy": judge_accuracy(model, tok, task, jpairs),
                       "pairs": info["pairs"], "pair_judge_agreement": info.get("judge_agreement"),
                       "strength_mean": info["strength_mean"], "seconds": secs}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def summary(rows, args) -> None:
    def ms(xs):
        return f"{st.mean(xs):.3f} ± {st.stdev(xs) if len(xs) > 1 else 0:.3f}"

    print(f"\nafter round {args.rounds}, mean ± std over seeds {sorted({r['seed'] for r in rows})}")
    for m in ["sft", *args.methods]:
        last = [r for r in rows if r["method"] == m and r["round"] == (0 if m == "sft" else args.rounds)]
        if not last:
            continue
        line = (f"{m:>11}: true reward {ms([r['reward'] for r in last])}, exact {ms([r['exact'] for r in last])}, "
                f"padded {ms([r['padded'] for r in last])}, judge accuracy {ms([r['judge_accuracy'] for r in last])}")
        if m != "sft":
            gain = [r["reward"] - next(s["reward"] for s in rows if s["method"] == "sft" and s["seed"] == r["seed"])
                    for r in last]
            line += f", gain over SFT {ms(gain)}"
            agr = [r["pair_judge_agreement"] for r in rows if r["method"] == m and r["round"] >= 1
                   and r["pair_judge_agreement"] is not None]
            if agr:
                line += f", judge agreement on its pairs (all rounds) {st.mean(agr):.3f}"
        print(line)


def figure(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"osp": "C0", "osp_hard": "C3", "osp_oracle": "C2"}
    seeds = sorted({r["seed"] for r in rows})
    for m in args.methods:
        for key, ax in (("reward", a1), ("judge_accuracy", a2)):
            xs = list(range(args.rounds + 1))
            per_seed = []
            for s in seeds:
                base = next(r for r in rows if r["method"] == "sft" and r["seed"] == s)
                rs = sorted((r for r in rows if r["method"] == m and r["seed"] == s), key=lambda r: r["round"])
                per_seed.append([base[key]] + [r[key] for r in rs])
            if not per_seed or any(len(p) != len(xs) for p in per_seed):
                continue
            mean = [st.mean(c) for c in zip(*per_seed)]
            for p in per_seed:
                ax.plot(xs, p, color=colors.get(m), alpha=0.25, lw=1)
            ax.plot(xs, mean, "-o", color=colors.get(m), label=m)
    a1.set_xlabel("round")
    a1.set_ylabel("true reward (held-out prompts)")
    a1.set_title(f"concise, self-judging tiny model; seeds {seeds}")
    a2.set_xlabel("round")
    a2.set_ylabel("judge accuracy (held-out pairs)")
    a2.set_title("the same weights as a judge")
    for ax in (a1, a2):
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print("wrote", args.figure)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    sys.exit(main())
