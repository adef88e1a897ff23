"""preftune's online trainers against TRL's GRPOTrainer and OnlineDPOTrainer, side by side in one run.

    .venv/bin/python benchmarks/bench_online.py --quick      # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_online.py              # more steps and seeds

The same everything: a Llama-style model built from a seed (hidden 256, 4 layers, vocab 4k, tied embeddings),
the same word-level tokenizer (token ``t123`` is id 123, so both libraries see the same ids), the same prompts
(random tokens, 16-48 long), the same reward function (the share of even token ids in the completion: learnable,
no model), group size, batch, completion budget, sampling (temperature 1, no top-k/top-p), learning rate, AdamW,
steps and seeds. Each run is its own subprocess (peak RSS is per process). Reported: wall time per step (median
over steps after the first), peak RSS, and the mean reward per step (its mean over the last half of the run and
the seed spread), so speed is compared at equal learning.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_dpo import FIRST_ID, busy_cores, fmt_table, load_average, make_tokenizer  # noqa: E402
from bench_dpo import run_worker as _run_worker  # noqa: E402


def even_share(prompts, completions, **_):
    """Reward: the share of completion tokens with an even id (``t<even>``); empty completions score 0."""
    out = []
    for c in completions:
        toks = [t for t in c.split() if t.startswith("t") and t[1:].isdigit()]
        out.append(sum(int(t[1:]) % 2 == 0 for t in toks) / len(toks) if toks else 0.0)
    return out


def build_assets(root: Path, *, vocab_size: int, hidden: int, layers: int, n_prompts: int, seed: int) -> dict:
    from preftune.models.tiny import build_model

    tok = make_tokenizer(vocab_size)
    tok.padding_side = "left"
    m = build_model(vocab_size, hidden_size=hidden, num_layers=layers, num_heads=4, intermediate_size=3 * hidden,
                    tie_word_embeddings=True, seed=seed, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    max_position_embeddings=256)
    d = root / "policy"
    m.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    rng = random.Random(seed)
    prompts = [" ".join(f"t{rng.randrange(FIRST_ID, vocab_size)}" for _ in range(rng.randint(16, 48)))
               for _ in range(n_prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"policy": str(d), "prompts": str(root / "prompts.jsonl"), "params": sum(p.numel() for p in m.parameters())}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _prompts(path: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- workers


def worker_preftune(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from preftune.callbacks import Callback
    from preftune.online import OnlineConfig, train_online
    from preftune.train import TrainConfig

    times: list[float] = []

    class Timer(Callback):
        t = None
        rss = 0.0

        def on_train_start(self, state):
            Timer.t, Timer.rss = time.perf_counter(), _rss_mb()

        def on_step_end(self, state, metrics):
            now = time.perf_counter()
            times.append(now - Timer.t)
            Timer.t = now

    algo = spec["algo"]
    cfg = TrainConfig(model=spec["policy"], output=spec["out"], max_steps=spec["steps"], batch_size=spec["batch_size"],
                      lr=spec["lr"], lr_schedule="linear", seed=spec["seed"], progress=False, save_every=0,
                      save_final=False, max_grad_norm=1.0, max_prompt_length=None, max_length=None,
                      device=spec.get("device", "cpu"), gradient_checkpointing=spec.get("gradient_checkpointing", False),
                      loss="grpo" if algo == "grpo" else "dpo", loss_params={"beta": spec["beta"]})
    online = OnlineConfig(algo=algo, prompts=spec["prompts"], num_generations=spec["k"],
                          max_new_tokens=spec["max_new_tokens"], generation_batch_size=spec["batch_size"] * spec["k"],
                          log_completions=False)
    t0 = time.perf_counter()
    res = train_online(cfg, online, reward_functions=[even_share], callbacks=[Timer()], loss_given=True)
    return {"times": times, "rewards": [r.get("reward", float("nan")) for r in res.history],
            "peak_rss_mb": _peak_mb(), "rss_at_start_mb": Timer.rss, "gpu_peak_mb": _gpu_peak_mb(),
            "wall_s": time.perf_counter() - t0}


def worker_trl(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    tok = make_tokenizer(spec["vocab_size"])
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32, attn_implementation="sdpa")
    if spec.get("device", "cpu") != "cpu":
        model = model.to(spec["device"])
    ds = Dataset.from_list([{"prompt": p} for p in _prompts(spec["prompts"])])
    times: list[float] = []

    class Timer(TrainerCallback):
        t = None
        rss = 0.0

        def on_train_begin(self, *a, **k):
            Timer.rss = _rss_mb()

        def on_step_begin(self, *a, **k):
            if Timer.t is None:
                Timer.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            times.append(now - Timer.t)
            Timer.t = now

    common = dict(output_dir=spec["out"], max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="linear",
                  warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=spec.get("device", "cpu") == "cpu", seed=spec["seed"], disable_tqdm=True, dataloader_num_workers=0,
                  bf16=False, fp16=False, beta=spec["beta"], temperature=1.0,
                  gradient_checkpointing=spec.get("gradient_checkpointing", False))
    if spec["algo"] == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(per_device_train_batch_size=spec["batch_size"], num_generations=spec["k"],
                          max_completion_length=spec["max_new_tokens"], loss_type="grpo", top_k=0, top_p=1.0,
                          **common)
        trainer = GRPOTrainer(model=model, reward_funcs=even_share, args=args, train_dataset=ds, processing_class=tok,
                              callbacks=[Timer()])
    else:
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        args = OnlineDPOConfig(per_device_train_batch_size=spec["batch_size"], max_new_tokens=spec["max_new_tokens"],
                               **common)
        trainer = OnlineDPOTrainer(model=model, reward_funcs=even_share, args=args, train_dataset=ds,
                                   processing_class=tok, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h or "objective/scores" in h]
    key = "reward" if spec["algo"] == "grpo" else "objective/scores"
    return {"times": times, "rewards": [h.get(key, float("nan")) for h in logs][:spec["steps"]],
            "peak_rss_mb": _peak_mb(), "rss_at_start_mb": Timer.rss, "gpu_peak_mb": _gpu_peak_mb(),
            "wall_s": time.perf_counter() - t0}


WORKERS = {"preftune": worker_preftune, "trl": worker_trl}


def run_worker(kind: str, spec: dict, tmp: Path, timeout: float = 3600) -> dict:
    """This script's worker ``kind`` in its own process (bench_dpo's runner)."""
    return _run_worker(kind, spec, tmp, timeout=timeout, script=__file__)


def _summary(runs: list[dict]) -> dict:
    steps = [statistics.median(r["times"][1:] or r["times"]) for r in runs]
    late = [statistics.fmean(r["rewards"][len(r["rewards"]) // 2:]) for r in runs]
    return {"step_s": statistics.fmean(steps), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "gpu_peak_mb": max(r.get("gpu_peak_mb", 0.0) for r in runs),
            "train_mb": max(r["peak_rss_mb"] - r["rss_at_start_mb"] for r in runs),
            "late_reward": statistics.fmean(late), "late_reward_sd": statistics.pstdev(late) if len(late) > 1 else 0.0,
            "first_reward": statistics.fmean(r["rewards"][0] for r in runs), "per_seed_late_reward": late}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer steps and seeds (a few minutes)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--algos", default="grpo,online_dpo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for both libraries on the GPU")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="both libraries recompute the decoder's activations in backward (memory for time)")
    ap.add_argument("--json", default=str(HERE / "results" / "online.json"))
    args = ap.parse_args(argv)
    if args.worker:
        kind, spec_path, out_path = args.worker
        res = WORKERS[kind](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(res))
        return 0
    steps = args.steps or (8 if args.quick else 30)
    seeds = args.seeds or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        assets = build_assets(tmp, vocab_size=4096, hidden=256, layers=4, n_prompts=512, seed=0)
        before = busy_cores()
        rows, results = [], {}
        for algo in args.algos.split(","):
            k = 4 if algo == "grpo" else 2
            base = {**assets, "algo": algo, "steps": steps, "k": k, "lr": 1e-5, "beta": 0.0 if algo == "grpo" else 0.1,
                    "max_new_tokens": 32, "vocab_size": 4096, "threads": args.threads, "device": args.device,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "batch_size": 16 if algo == "grpo" else 8}
            # interleaved, the order alternating with the seed (preftune, TRL, TRL, preftune, ...): a slow spell of a
            # shared machine then falls on both libraries instead of on one
            runs: dict[str, list[dict]] = {"preftune": [], "trl": []}
            for s in range(seeds):
                for lib in (("preftune", "trl") if s % 2 == 0 else ("trl", "preftune")):
                    runs[lib].append(run_worker(lib, {**base, "seed": s, "out": str(tmp / f"{lib}-{algo}-{s}")}, tmp))
            for lib in ("preftune", "trl"):
                results[(algo, lib)] = {**_summary(runs[lib]), "runs": runs[lib]}
            p, t = results[(algo, "preftune")], results[(algo, "trl")]
            p["per_seed_time_ratio"] = [statistics.median(a["times"][1:] or a["times"])
                                        / statistics.median(b["times"][1:] or b["times"])
                                        for a, b in zip(runs["preftune"], runs["trl"])]
            gpu = args.device != "cpu"  # then the memory that matters is the GPU's
            for lib, r in (("preftune", p), ("trl", t)):
                rows.append([algo, lib, f"{r['step_s']:.3f}", f"{r['peak_rss_mb']:.0f}", f"{r['train_mb']:.0f}",
                             f"{r['gpu_peak_mb']:.0f}" if gpu else "-",
                             f"{r['first_reward']:.3f}", f"{r['late_reward']:.3f} ± {r['late_reward_sd']:.3f}"])
            per_seed = ", ".join(f"{r:.2f}" for r in p["per_seed_time_ratio"])
            rows.append([algo, "preftune / trl", f"{p['step_s'] / t['step_s']:.2f}x time (seeds: {per_seed})",
                         f"{p['peak_rss_mb'] / t['peak_rss_mb']:.2f}x memory",
                         f"{p['train_mb'] / max(1.0, t['train_mb']):.2f}x",
                         f"{p['gpu_peak_mb'] / max(1.0, t['gpu_peak_mb']):.2f}x" if gpu else "-", "", ""])
        after = busy_cores()
    print(f"model: {assets['params'] / 1e6:.1f}M parameters; {steps} steps x {seeds} seed(s); device {args.device}; "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
          f"threads {args.threads}; "
          f"busy cores before/after: {before:.1f}/{after:.1f}; load average {load_average()}")
    print(fmt_table(["algo", "library", "s / step", "peak RSS MB", "peak - RSS at train start MB", "peak GPU MB",
                     "reward step 1",
                     "reward 2nd half (seeds)"], rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({f"{a}/{lib}": v for (a, lib), v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
