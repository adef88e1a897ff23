"""preftune vs TRL's DPOTrainer on one GPU, bf16: wall time per step, peak GPU memory, model FLOPs utilisation.

    python benchmarks/bench_gpu.py                 # ~0.5B Llama-style model from a config, pairs up to 2k tokens
    python benchmarks/bench_gpu.py --quick         # a smaller model, to check the script

The model is built from a config with random weights (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864:
Qwen2-0.5B's shape, with a 32k word-level vocabulary so the tokenizer is built offline; ~0.46B parameters,
tied embeddings); policy and reference differ (seeds 0 and 1). Pairs: prompts of median 512 tokens (max 1024),
responses median 384 (max 1000): up to 2,024 tokens a sequence. Both libraries train DPO (beta 0.1, a frozen
reference model, AdamW, lr 5e-7) on the same batches in the same order (preftune's length-grouped batches,
TRL's sequential sampler), each in its own process; the first two steps are left out of the timings.

Model FLOPs per step (PaLM's accounting, as MFU is usually reported): for each trained token
``6 N + 12 L d s`` (policy forward + backward) plus ``2 N + 4 L d s`` (reference forward), N the non-embedding
parameters plus the LM head, L layers, d hidden size, s the sequence's length (attention); MFU = model FLOPs /
(step time x the GPU's dense bf16 peak). Padding a library computes on is not counted: that is the point.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
for _v in os.environ.get("BENCH_VENDOR", "").split(":"):  # packages the GPU machine lacks, after its own
    if _v:
        sys.path.append(_v)
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")  # cpu: a dry run of the script itself (no timings worth reading)


def _sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}  # dense, no sparsity


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def make_pairs(n: int, vocab: int, seed: int, quick: bool) -> list[dict]:
    from bench_dpo import FIRST_ID, _lognormal_len

    rng = random.Random(seed)
    text = lambda k: " ".join(f"t{rng.randrange(FIRST_ID, vocab)}" for _ in range(k))  # noqa: E731
    scale = 0.25 if quick else 1.0
    out = []
    for _ in range(n):
        p = _lognormal_len(rng, 512 * scale, 0.5, 32, int(1024 * scale))
        c = _lognormal_len(rng, 384 * scale, 0.6, 16, int(1000 * scale)) - 1
        r = _lognormal_len(rng, 384 * scale, 0.6, 16, int(1000 * scale)) - 1
        out.append({"prompt": text(p) + " ", "chosen": text(c) + " </s>", "rejected": text(r) + " </s>"})
    return out


def build(root: Path, a: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench_dpo import make_tokenizer

    tok = make_tokenizer(a.vocab)
    shape = dict(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                 num_key_value_heads=a.kv_heads, intermediate_size=a.mlp)
    paths = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=a.vocab, max_position_embeddings=4096, tie_word_embeddings=True,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, **shape)
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
        m.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
        n_all = sum(p.numel() for p in m.parameters())
        del m
    data = root / "pairs.jsonl"
    pairs = make_pairs(a.steps * a.batch_size, a.vocab, 0, a.quick)
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return {**paths, "data": str(data), "params": n_all}


def flops_per_step(spec: dict, lens: list[tuple[int, int, int]], batches: list[list[int]]) -> list[float]:
    L, d, V = spec["layers"], spec["hidden"], spec["vocab"]
    n = spec["params"] - V * d + V * d  # tied: the embedding's lookup is free, the head's matmul is not
    out = []
    for b in batches:
        f = 0.0
        for i in b:
            p, c, r = lens[i]
            for s in (p + c, p + r):
                f += s * (6 * n + 12 * L * d * s) + s * (2 * n + 4 * L * d * s)
        out.append(f)
    return out


# ----------------------------------------------------------------------------- workers (one process each)


def worker_preftune(spec: dict) -> dict:
    import torch

    from preftune.data import PairExample
    from preftune.train import Callback, TrainConfig, train

    pairs = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
    ex = [PairExample(p["prompt"], p["chosen"], p["rejected"], row=i) for i, p in enumerate(pairs)]
    cfg = TrainConfig(model=spec["policy"], ref_model=spec["reference"], output=spec["out"], max_steps=spec["steps"],
                      batch_size=spec["batch_size"], lr=5e-7, seed=0, layout=spec.get("layout", "packed"),
                      max_length=2048, max_prompt_length=1024, progress=False, save_final=False, save_every=0,
                      lr_schedule="linear", max_grad_norm=1.0, device=DEVICE, dtype="bf16",
                      gradient_checkpointing=spec.get("gc", False), loss_params={"beta": 0.1})
    times: list[float] = []
    losses: list[float] = []

    class Timer(Callback):
        def on_train_start(self, state):
            _sync()
            self.t = time.perf_counter()

        def on_step_end(self, state, metrics):
            _sync()
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now
            losses.append(metrics["loss"])

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(cfg, train_examples=ex, callbacks=[Timer()])
    return {"times": times, "losses": losses, "peak_gib": _peak_gib()}


def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from bench_dpo import make_tokenizer

    pairs = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
    ds = Dataset.from_list([pairs[i] for b in spec["order"] for i in b])
    kw = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], **kw)
    ref = AutoModelForCausalLM.from_pretrained(spec["reference"], **kw)
    args = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                     learning_rate=5e-7, lr_scheduler_type="linear", max_grad_norm=1.0, beta=0.1, max_length=2048,
                     logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
                     train_sampling_strategy="sequential", bf16=True, use_cpu=DEVICE == "cpu", gradient_checkpointing=spec.get("gc", False))
    times: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            _sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync()
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=make_tokenizer(spec["vocab"]),
               callbacks=[Timer()]).train()
    return {"times": times, "losses": losses, "peak_gib": _peak_gib()}


def worker_order(spec: dict) -> dict:
    """The batches preftune trains on in epoch 0 (length-grouped, with this benchmark's length limits)."""
    from bench_dpo import make_tokenizer

    from preftune.data import PairExample, tokenize_examples
    from preftune.train.sources import epoch_batches

    pairs = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
    ex = [PairExample(p["prompt"], p["chosen"], p["rejected"], row=i) for i, p in enumerate(pairs)]
    items = tokenize_examples(ex, make_tokenizer(spec["vocab"]), max_length=2048, max_prompt_length=1024).items
    return {"order": epoch_batches(items, spec["batch_size"], seed=0, epoch=0, group_by_length=True)}


WORKERS = {"preftune": worker_preftune, "trl": worker_trl, "order": worker_order}


def run_worker(kind: str, spec: dict, tmp: Path) -> dict:
    sp = tmp / f"{kind}-{time.monotonic_ns()}.json"
    sp.write_text(json.dumps(spec))
    out = sp.with_suffix(".out.json")
    p = subprocess.run([sys.executable, __file__, "--worker", kind, str(sp), str(out)], capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kind, sp, out = a.worker
        Path(out).write_text(json.dumps(WORKERS[kind](json.loads(Path(sp).read_text()))))
        return 0
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; this benchmark runs on a GPU", file=sys.stderr)
        return 2
    a.vocab, a.hidden, a.layers, a.heads, a.kv_heads, a.mlp = (32_000, 896, 24, 14, 2, 4864) if not a.quick \
        else (32_000, 256, 4, 4, 2, 1024)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl
        versions["trl"] = trl.__version__
    except ImportError as e:
        versions["trl"] = f"not importable ({e})"
        a.skip_trl = True
    versions["python"] = sys.version.split()[0]
    print(f"GPU {gpu}; {versions}", flush=True)
    with tempfile.TemporaryDirectory(prefix="preftune-gpu-") as t:
        tmp = Path(t)
        assets = build(tmp, a)
        spec = {**assets, "steps": a.steps, "batch_size": a.batch_size, "vocab": a.vocab, "hidden": a.hidden,
                "layers": a.layers, "seed": 0, "vocab_size": a.vocab}
        order = run_worker("order", spec, tmp)["order"]
        from bench_dpo import make_tokenizer

        tok = make_tokenizer(a.vocab)
        pairs = [json.loads(x) for x in Path(assets["data"]).read_text().splitlines()]
        lens = [(len(tok(p["prompt"], add_special_tokens=False).input_ids),
                 len(tok(p["chosen"], add_special_tokens=False).input_ids),
                 len(tok(p["rejected"], add_special_tokens=False).input_ids)) for p in pairs]
        flops = flops_per_step(spec, lens, order)
        results = {"gpu": gpu, "versions": versions, "params": assets["params"], "steps": a.steps,
                   "batch_size": a.batch_size, "runs": {}}
        runs = [("preftune (packed, its default)", "preftune", {"out": str(tmp / "pt")}),
                ("preftune, prefix-shared", "preftune", {"out": str(tmp / "pt-ps"), "layout": "prefix_shared"}),
                ("preftune, padded", "preftune", {"out": str(tmp / "pt-pad"), "layout": "padded"})]
        if not a.skip_trl:
            runs.append(("TRL DPOTrainer", "trl", {"out": str(tmp / "trl"), "order": order}))
        peak = peak_flops(gpu)
        for name, kind, over in runs:
            print(f"  {name} ...", flush=True)
            r = run_worker(kind, {**spec, **over}, tmp)
            if "error" not in r:
                s = 2 if len(r["times"]) > 3 else 0
                t_step = sum(r["times"][s:]) / len(r["times"][s:])
                f_step = sum(flops[s:len(r["times"])]) / len(r["times"][s:])
                r.update(step_s=t_step, tflops=f_step / t_step / 1e12, mfu=(f_step / t_step / peak) if peak else None)
            results["runs"][name] = r
        print(report(results))
        path = Path(a.json or HERE / "results" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"results: {path}")
    return 0


def report(res: dict) -> str:
    from bench_dpo import fmt_table

    rows = []
    base = res["runs"].get("TRL DPOTrainer")
    for name, r in res["runs"].items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"].strip().splitlines()[-1][:100], "", "", "", ""])
            continue
        speed = (base["step_s"] / r["step_s"]) if base and "step_s" in base else float("nan")
        mem = (r["peak_gib"] / base["peak_gib"]) if base and "peak_gib" in base else float("nan")
        rows.append([name, f"{r['step_s']:.3f}", f"{r['peak_gib']:.1f}", f"{r['tflops']:.0f}",
                     f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a", f"{speed:.2f}x / {mem:.2f}x"])
    return (f"{res['gpu']}, {res['params'] / 1e9:.2f}B params, bf16, {res['steps']} steps x {res['batch_size']} pairs "
            f"(first 2 left out); {res['versions']}\n"
            + fmt_table(["run", "s/step", "peak GiB", "model TFLOP/s", "MFU", "vs TRL: speed / memory"], rows))


if __name__ == "__main__":
    sys.exit(main())
