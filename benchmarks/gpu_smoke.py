"""GPU smoke check of the trainer's seams (run where CUDA exists; not part of `make test`):

    PYTHONPATH=src python benchmarks/gpu_smoke.py

Trains a tiny model for a few steps on CUDA with objectives that exercise every supplier and forward (packed
layout, bf16, LoRA with the adapter reference, precomputed reference, SparsePO's learned and reference masks
with the token KL, TARS's perturbed forward, SPO's degree classifier, KTO's KL pairs, BCO's density ratios,
TPO's step weights, a reward model) and prints one line per run: first/last loss, seconds, peak GPU memory.
"""
from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch


def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        w = a + b + rng.choice([-2, -1, 1, 2])
        out.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{w if w >= 0 else a + b + 1}"})
    return out


def main() -> int:
    from preftune.models.tiny import make_tiny
    from preftune.reward import train_reward_model
    from preftune.train import TrainConfig, train

    assert torch.cuda.is_available(), "no CUDA here"
    tmp = Path(tempfile.mkdtemp())
    data = rows(64, 2)
    texts = [r["prompt"] + r["chosen"] for r in rows(400, 1)]
    model = make_tiny(tmp / "m", texts, vocab_size=128, hidden_size=64, num_layers=2, num_heads=4)
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in data))
    unpaired = tmp / "u.jsonl"
    unpaired.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"],
                                            "label": bool(i % 2)}) + "\n" for i, r in enumerate(data)))
    steps = tmp / "steps.jsonl"
    steps.write_text("".join(json.dumps({"prompt": r["prompt"], "completions": [[r["chosen"][:1], r["chosen"][1:] or "."],
                                                                                [r["rejected"][:1], r["rejected"][1:] or "!"]],
                                         "scores": [1.0, 0.0]}) + "\n" for r in data))
    runs = [
        ("dpo packed fp32", pairs, dict(loss="dpo")),
        ("dpo bf16", pairs, dict(loss="dpo", dtype="bf16")),
        ("dpo lora + adapter ref", pairs, dict(loss="dpo", lora_r=8)),
        ("dpo precomputed ref", pairs, dict(loss="dpo", ref="precomputed")),
        ("sparse_po reference masks + KL", pairs, dict(loss="sparse_po")),
        ("sparse_po learned masks + KL", pairs, dict(loss="sparse_po", loss_params={"mask": "learned"})),
        ("tars", pairs, dict(loss="tars")),
        ("dpo + spo classifier", pairs, dict(loss="dpo:1,spo:0.5")),
        ("wpo", pairs, dict(loss="wpo")),
        ("kto", unpaired, dict(loss="kto")),
        ("bco udm", unpaired, dict(loss="bco", loss_params={"udm": True})),
        ("tpo step rewards", steps, dict(loss="tpo", loss_params={"step_rewards": True})),
        ("reward model", pairs, dict(loss="bradley_terry")),
    ]
    ok = True
    for name, data_file, kw in runs:
        torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(**{"model": str(model), "data": str(data_file), "output": str(tmp / name.replace(" ", "_")),
                             "max_steps": 4, "batch_size": 8, "lr": 2e-3, "progress": False, "device": "cuda",
                             **kw})
        t0 = time.perf_counter()
        try:
            res = (train_reward_model if kw["loss"] == "bradley_terry" else train)(cfg)
            a, b = res.history[0]["loss"], res.history[-1]["loss"]
            good = math.isfinite(a) and math.isfinite(b)
            print(f"{name:34s} ok={good} loss {a:.4f} -> {b:.4f}  {time.perf_counter() - t0:5.1f} s  "
                  f"peak {torch.cuda.max_memory_allocated() / 2**20:7.1f} MiB")
            ok &= good
        except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
            ok = False
            print(f"{name:34s} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    print("all ok" if ok else "FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
