"""Self-play on an intransitive judge: rock-paper-scissors (P61 SPPO, P11 INPO, P47 EGPO against DPO).

The task: whatever the prompt (``g 17:``), answer ``r``, ``p`` or ``s`` (rock, paper, scissors; one-letter words,
so the arena's character-level model learns them in a few steps). The judge is intransitive:
``P(r > s) = P(s > p) = P(p > r) = 0.9`` (0.5 for a tie; a valid answer beats anything else with 0.9). No scalar
reward represents it; the game's Nash policy is uniform. The SFT model plays r/p/s at 70/20/10 % (its
demonstrations are drawn so).

Measured per round, on 32 held-out prompts, from the model's exact probabilities of the three answers
(renormalised over them; the mass left for other strings is reported as ``other``):

* the policy's distribution over r/p/s;
* the exploitability ``max_y P(y > pi) - 1/2``: the win rate of the best pure answer against the policy, minus
  1/2 (0 at the uniform Nash policy, 0.4 for a pure one). For SPPO the paper's guarantee is for the average
  of the round policies (P61 Theorem 4.1), so the exploitability of that mixture is reported too.

Methods (same SFT model, same prompts, same rounds and optimizer steps):

* ``sppo``: :func:`preftune.online.selfplay.train_selfplay` with the ``sppo`` objective, K samples per prompt,
  win rates from the judge;
* ``inpo``: the same runner with ``inpo`` (pairs labelled by the judge, no win rates), ``tau = 0``;
* ``inpo_kl``: INPO with ``tau > 0`` (``--kl-tau``): the step is pulled towards pi_ref, the SFT policy;
* ``iterative_dpo``: preftune's iterative DPO with a *scalar* reward, each answer's win rate against the SFT
  policy (the best a reward model fitted to the SFT policy's games can say), best/worst of K as pairs;
* ``online_dpo``: online DPO whose pairs the same intransitive judge labels (Bradley-Terry labels, DPO loss),
  the same number of optimizer steps in one run, measured every ``--steps`` steps (its checkpoints);
* ``egpo``: ``preftune online --algo egpo`` (:func:`preftune.online.egpo.train_egpo`): the same number of
  updates in one run, each an extragradient update (two gradient evaluations: a half step against opponents of
  ``pi_t``, then the step from the saved parameters and optimizer state against opponents of the half-step
  policy), the online IPO loss with ``tau = --egpo-tau``, measured every ``--steps`` updates (its snapshots);
* ``online_ipo``: the same run without the half step (``--egpo-half-step false``: one gradient evaluation per
  update, online mirror descent on the online IPO loss): the ablation that isolates the extragradient.

    .venv/bin/python benchmarks/selfplay_rps.py                  # 3 seeds, writes docs/figures/selfplay-rps.png
    .venv/bin/python benchmarks/selfplay_rps.py --seeds 0 --rounds 2 --methods sppo   # a quick look
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ANSWERS = ("r", "p", "s")
BEATS = {"r": "s", "s": "p", "p": "r"}
P_WIN = 0.9
SFT_MIX = {"r": 0.70, "p": 0.20, "s": 0.10}


def rps_preference(prompts, completions_a, completions_b):
    """The intransitive judge: ``P(a > b)`` for each pair (a preference function for ``--preference-fn``)."""
    out = []
    for a, b in zip(completions_a, completions_b):
        a, b = a.strip(), b.strip()
        va, vb = a in BEATS, b in BEATS
        if va and vb:
            out.append(P_WIN if BEATS[a] == b else (1 - P_WIN if BEATS[b] == a else 0.5))
        else:
            out.append(0.5 if va == vb else (P_WIN if va else 1 - P_WIN))
    return out


def pref_matrix() -> torch.Tensor:
    """``A[i, j] = P(answer_i > answer_j) - 1/2`` over r, p, s."""
    return torch.tensor([[p - 0.5 for p in rps_preference(None, [a] * 3, list(ANSWERS))] for a in ANSWERS],
                        dtype=torch.float64)


def exploitability(dist: torch.Tensor) -> float:
    """``max_y P(y > pi) - 1/2`` for a distribution over r, p, s."""
    return float((pref_matrix() @ dist.double()).max())


def win_rate_vs_sft(prompts, completions, **_):
    """The scalar reward of the DPO baseline: the answer's win rate against the SFT policy's mixture."""
    return [sum(q * rps_preference(None, [c], [b])[0] for b, q in SFT_MIX.items()) for c in completions]


def _task_class():
    from preftune.arena.tasks import Task

    class RPSTask(Task):
        """Rock-paper-scissors against an intransitive judge (the reward is the win rate against the SFT mix)."""

        name = "rps_selfplay"
        max_new_tokens = 2

        def sample_prompts(self, n, rng):
            return [f"g {rng.randint(0, 99)}:" for _ in range(n)]

        def reward(self, prompt, response):
            return win_rate_vs_sft([prompt], [response])[0]

        def demonstrations(self, n, rng):
            return [(p, rng.choices(list(SFT_MIX), weights=list(SFT_MIX.values()))[0])
                    for p in self.sample_prompts(n, rng)]

    return RPSTask


RPSTask = _task_class()


@torch.no_grad()
def answer_distribution(model_dir, prompts: list[str], sft=None) -> tuple[torch.Tensor, float]:
    """The policy's mean probability of r, p, s (each + EOS) over ``prompts``, renormalised; and the mass left.
    ``model_dir``: a model directory, or a training checkpoint (its weights loaded into ``sft``)."""
    from safetensors.torch import load_file

    from preftune.arena.models import encode, load_sft
    from preftune.data.collate import collate_ranked
    from preftune.data.types import TokenizedRanked
    from preftune.models.logprobs import sequence_logps

    ckpt = Path(model_dir) / "model.safetensors"
    if sft is not None and ckpt.exists() and not (Path(model_dir) / "config.json").exists():
        model, tok = load_sft(sft)
        model.load_state_dict(load_file(str(ckpt)), strict=True)
    else:
        model, tok = load_sft(model_dir)
    items = []
    for p in prompts:
        ids, _ = encode(tok, p)
        items.append(TokenizedRanked(ids, [encode(tok, p, a)[1] for a in ANSWERS], [0.0] * 3))
    batch = collate_ranked(items, tok.pad_token_id)
    probs = sequence_logps(model, batch).sums.double().exp().view(len(prompts), 3).mean(0)
    return probs / probs.sum(), float(1 - probs.sum())


def run_method(method: str, sft: Path, out: Path, seed: int, args) -> list[dict]:
    from preftune.online import OnlineConfig, train_online
    from preftune.online.run import load_online_prompts
    from preftune.online.selfplay import train_selfplay
    from preftune.train import TrainConfig
    from preftune.train.setup import load_tokenizer_for

    eval_prompts = RPSTask().sample_prompts(32, random.Random("rps-eval"))
    base = dict(model=str(sft), output=str(out), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                progress=False, save_every=0, seed=seed)
    prompt_rows = [{"prompt": p} for p in RPSTask().sample_prompts(args.prompts, random.Random(f"rps-{seed}"))]
    sampling = dict(prompts=prompt_rows, max_new_tokens=2, rounds=args.rounds)
    t0 = time.perf_counter()
    if method in ("sppo", "inpo", "inpo_kl"):
        hp = {"eta": args.eta} if method == "sppo" else \
            {"eta": args.inpo_eta, "tau": args.tau if method == "inpo" else args.kl_tau}
        cfg = TrainConfig(**base, loss=method.replace("_kl", ""), **hp)
        online = OnlineConfig(algo="iterative_dpo", num_generations=args.k if method == "sppo" else 2, **sampling)
        tok = load_tokenizer_for(cfg, None)
        _, prompts = load_online_prompts(cfg, online, tok, None)
        train_selfplay(cfg, online, prompts, rps_preference, tokenizer=tok)
    elif method == "iterative_dpo":
        from preftune.errors import ConfigError

        cfg = TrainConfig(**base, beta=args.dpo_beta)
        try:
            train_online(cfg, OnlineConfig(algo="iterative_dpo", num_generations=args.k, **sampling),
                         reward_functions=[win_rate_vs_sft])
        except ConfigError as e:  # collapsed: all K samples of every prompt equal, so no pair and no update
            print(f"iterative_dpo seed {seed}: {e}; the policy stays where it is", flush=True)
    elif method == "online_dpo":
        from preftune.errors import ConfigError

        # one run with a checkpoint every `steps` optimizer steps: the "rounds" at which it is measured
        cfg = TrainConfig(**{**base, "max_steps": args.steps * args.rounds, "save_every": args.steps,
                             "keep_checkpoints": args.rounds + 1}, beta=args.dpo_beta)
        try:
            train_online(cfg, OnlineConfig(algo="online_dpo", num_generations=2,
                                           preference_fn=f"{Path(__file__).resolve()}:rps_preference",
                                           **{k: v for k, v in sampling.items() if k != "rounds"}))
        except ConfigError as e:  # collapsed: both samples equal for (nearly) every prompt, no pair left
            print(f"online_dpo seed {seed}: {e}; the policy stays where it is", flush=True)
    elif method in ("egpo", "online_ipo"):
        # one run of rounds * steps extragradient updates, a snapshot every `steps` updates: the measured "rounds"
        cfg = TrainConfig(**{**base, "max_steps": args.steps * args.rounds, "save_every": args.steps,
                             "keep_checkpoints": args.rounds + 1}, loss="egpo", tau=args.egpo_tau)
        train_online(cfg, OnlineConfig(algo="egpo", num_generations=args.egpo_opponents,
                                       egpo_half_step=method == "egpo",
                                       preference_fn=f"{Path(__file__).resolve()}:rps_preference",
                                       **{k: v for k, v in sampling.items() if k != "rounds"}))
    else:
        raise SystemExit(f"unknown method {method}")
    secs = time.perf_counter() - t0
    last = args.rounds * args.steps
    dirs = [sft] + ([out / f"round-{t}" / "final" for t in range(1, args.rounds + 1)]
                    if method not in ("online_dpo", "egpo", "online_ipo") else
                    [out / "checkpoints" / f"step-{t * args.steps}" for t in range(1, args.rounds + 1)]
                    if method == "online_dpo" else
                    [out / ("final" if t * args.steps == last else f"snapshots/step-{t * args.steps}")
                     for t in range(1, args.rounds + 1)])
    for t in range(1, len(dirs)):  # a round that had nothing to train on left the policy unchanged
        if not dirs[t].is_dir():
            dirs[t] = dirs[t - 1]
    rows, running = [], torch.zeros(3, dtype=torch.float64)
    for t, d in enumerate(dirs):
        dist, other = answer_distribution(d, eval_prompts, sft)
        if t > 0:
            running += dist
        avg = running / max(1, t) if t > 0 else dist
        rows.append({"method": method, "seed": seed, "round": t,
                     "dist": [round(x, 4) for x in dist.tolist()], "other": round(other, 4),
                     "exploitability": round(exploitability(dist), 4),
                     "avg_exploitability": round(exploitability(avg), 4), "seconds": round(secs, 1)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["sppo", "inpo", "inpo_kl", "iterative_dpo", "online_dpo",
                                                     "egpo", "online_ipo"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt (sppo, iterative_dpo)")
    ap.add_argument("--eta", type=float, default=2.0, help="SPPO's eta")
    ap.add_argument("--inpo-eta", type=float, default=2.0)
    ap.add_argument("--tau", type=float, default=0.0, help="INPO's tau (method inpo)")
    ap.add_argument("--kl-tau", type=float, default=0.25, help="INPO's tau (method inpo_kl)")
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument("--egpo-tau", type=float, default=0.1, help="EGPO's tau (the authors' beta = 0.1)")
    ap.add_argument("--egpo-opponents", type=int, default=1, help="EGPO's opponents y'' per prompt (authors: 1)")
    ap.add_argument("--out", default="", help="work directory (default: a temporary one)")
    ap.add_argument("--json", default="", help="write every row here")
    ap.add_argument("--figure", default="docs/figures/selfplay-rps.png")
    ap.add_argument("--from-json", default="", help="summarise and plot rows written by --json, training nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        _summary(rows, args)
        if args.figure:
            _figure(rows, args)
        return 0
    from preftune.arena.models import SFTConfig, sft_model_dir

    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="selfplay-rps-"))
    rows = []
    for seed in args.seeds:
        sft, _ = sft_model_dir(RPSTask(), seed, SFTConfig(demos=400, steps=150, batch_size=32, hidden_size=32,
                                                         num_layers=1, num_heads=2), work / "sft")
        for m in args.methods:
            for r in run_method(m, sft, work / f"{m}-s{seed}", seed, args):
                rows.append(r)
                print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    _summary(rows, args)
    if args.figure:
        _figure(rows, args)
    return 0


def mirror_step(dist: torch.Tensor, ref: torch.Tensor, eta: float, tau: float = 0.0) -> torch.Tensor:
    """The exact round the objectives approximate, on the three answers: SPPO's Hedge step
    ``pi_t exp(eta P(y > pi_t))`` (tau = 0) and INPO's ``pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t))``,
    renormalised (the P(y > pi_t) - 1/2 form: the constant 1/2 cancels)."""
    d, r = dist.double(), ref.double()
    w = d.pow(1 - eta * tau) * r.pow(eta * tau) * torch.exp(eta * (pref_matrix() @ d))
    return w / w.sum()


def regularised_nash(ref: torch.Tensor, tau: float, iters: int = 4000) -> torch.Tensor:
    """The Nash policy of the game regularised by ``tau KL(pi || ref)``, the fixed point EGPO's steps approach
    (P47): exact extragradient mirror steps on the three answers, ``eta tau <= 1/2``."""
    A, r = pref_matrix(), ref.double()
    eta = min(1.0, 0.5 / tau)
    pi = r.clone()
    for _ in range(iters):
        def step(opp):
            w = pi.pow(1 - eta * tau) * r.pow(eta * tau) * torch.exp(eta * (A @ opp))
            return w / w.sum()
        pi = step(step(pi))
    return pi


def step_fidelity(rows, method: str, args) -> tuple[float, float]:
    """Mean total-variation distance between each learned round and the exact mirror step from the round
    before, and (for scale) the mean distance the round moved."""
    eta = args.eta if method == "sppo" else args.inpo_eta
    tau = {"sppo": 0.0, "inpo": args.tau, "inpo_kl": args.kl_tau}[method]
    gaps, moves = [], []
    for seed in args.seeds:
        rs = sorted((r for r in rows if r["method"] == method and r["seed"] == seed), key=lambda r: r["round"])
        for a, b in zip(rs, rs[1:]):
            da, db, d0 = (torch.tensor(x["dist"]) for x in (a, b, rs[0]))
            gaps.append(0.5 * float((db - mirror_step(da, d0, eta, tau).float()).abs().sum()))
            moves.append(0.5 * float((db - da).abs().sum()))
    return sum(gaps) / max(1, len(gaps)), sum(moves) / max(1, len(moves))


def _summary(rows, args) -> None:
    import statistics as st

    print("\nfinal round, mean ± std over seeds", args.seeds)
    for m in args.methods:
        last = [r for r in rows if r["method"] == m and r["round"] == args.rounds]
        if not last:
            continue

        def ms(key):
            xs = [r[key] for r in last]
            return f"{st.mean(xs):.3f} ± {st.stdev(xs) if len(xs) > 1 else 0:.3f}"

        dist = [sum(r["dist"][i] for r in last) / len(last) for i in range(3)]
        print(f"{m:>14}: exploitability {ms('exploitability')}, of the round average {ms('avg_exploitability')}, "
              f"dist r/p/s {dist[0]:.2f}/{dist[1]:.2f}/{dist[2]:.2f}, other mass {ms('other')}")
        if m in ("sppo", "inpo", "inpo_kl"):
            gap, move = step_fidelity(rows, m, args)
            print(f"{'':>16}per round: TV(learned, exact mirror step) {gap:.3f}, TV(learned, previous) {move:.3f}")
        if m in ("egpo", "online_ipo"):
            nash = [exploitability(regularised_nash(torch.tensor(r["dist"]), args.egpo_tau))
                    for r in rows if r["method"] == m and r["round"] == 0]
            print(f"{'':>16}the tau = {args.egpo_tau} regularised Nash policy (towards each seed's SFT policy): "
                  f"exploitability {sum(nash) / len(nash):.3f} (mean over seeds)")
        best = [min(r["exploitability"] for r in rows if r["method"] == m and r["seed"] == s) for s in args.seeds]
        print(f"{'':>16}lowest exploitability of any round: {st.mean(best):.3f} (mean over seeds)")
    sft = [r for r in rows if r["round"] == 0]
    if sft:
        print(f"{'sft':>14}: exploitability {sum(r['exploitability'] for r in sft) / len(sft):.3f}")


def _figure(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"sppo": "C0", "inpo": "C2", "inpo_kl": "C4", "iterative_dpo": "C3", "online_dpo": "C1", "egpo": "C5",
              "online_ipo": "C7"}
    for m in args.methods:
        for s in args.seeds:
            rs = sorted((r for r in rows if r["method"] == m and r["seed"] == s), key=lambda r: r["round"])
            if not rs:
                continue
            lab = m if s == args.seeds[0] else None
            a1.plot([r["round"] for r in rs], [r["exploitability"] for r in rs], "-o", color=colors.get(m),
                    alpha=0.7, label=lab)
            if m in ("sppo", "inpo", "inpo_kl"):
                a1.plot([r["round"] for r in rs], [r["avg_exploitability"] for r in rs], ":", color=colors.get(m),
                        alpha=0.7, label=f"{m} (round average)" if lab else None)
            # the policy's path on the simplex: x = p(paper) - p(scissors) scaled, y = p(rock)
            a2.plot([(r["dist"][1] - r["dist"][2]) for r in rs], [r["dist"][0] for r in rs], "-o",
                    color=colors.get(m), alpha=0.7, label=lab, markersize=3)
    a1.axhline(0, color="k", lw=0.5)
    a1.set_xlabel("round")
    a1.set_ylabel("exploitability  max_y P(y > pi) - 1/2")
    a1.set_title(f"rock-paper-scissors judge (P = {P_WIN}); seeds {args.seeds}")
    a1.legend(fontsize=6, ncol=2)
    a2.plot([0], [1 / 3], "k*", markersize=12, label="Nash (uniform)")
    a2.set_xlabel("p(paper) - p(scissors)")
    a2.set_ylabel("p(rock)")
    a2.set_title("policy path (start: SFT 70/20/10)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print("wrote", args.figure)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    sys.exit(main())
