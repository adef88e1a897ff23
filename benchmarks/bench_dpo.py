"""preftune vs TRL's DPOTrainer: DPO with a reference model, fp32 on CPU, side by side.

    .venv/bin/python benchmarks/bench_dpo.py --quick     # < 3 min on 2 cores
    .venv/bin/python benchmarks/bench_dpo.py             # < 15 min
    .venv/bin/python benchmarks/bench_dpo.py --steps 8 --trl-random   # + TRL's own random order (~24 min)

Everything is built offline from a seed: a Llama-style model (hidden 512, 8 layers, vocab
32k, tied embeddings, ~44M parameters) saved twice (policy seed 0, reference seed 1, so the
DPO loss is not trivially log 2 at step one), a word-level tokenizer whose token ``t123`` is
id 123 (TRL tokenizes text itself; this tokenizer makes its ids exactly ours), and
preference pairs of realistic shape (prompts 32-512 tokens, responses 16-384, log-normal,
chosen and rejected of different lengths).

Each run is its own subprocess (peak RSS is per process). TRL is fed the pairs in exactly
the batches preftune trains on (preftune's length-grouped order, TRL's sequential sampler),
so both see the same batches and their losses must agree step for step; the speed-up is
then the layouts and the head, not a different batching. A second table switches
preftune's techniques one at a time; a third measures the peak memory of chunked log-probs
against full logits for a 150k vocabulary. Results go to a table on stdout and to JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
FIRST_ID = 8  # ids below are specials / unused


# ----------------------------------------------------------------------------- setup


def make_tokenizer(vocab_size: int):
    """Word-level tokenizer: ``t{i}`` <-> id i, whitespace split. No training."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({f"<unused{i}>": i for i in range(len(SPECIALS), FIRST_ID)})
    vocab.update({f"t{i}": i for i in range(FIRST_ID, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.padding_side = "right"
    return fast


def _lognormal_len(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(math.exp(rng.gauss(math.log(median), sigma))))))


def make_pairs(n: int, vocab_size: int, seed: int) -> list[dict]:
    """Text pairs; prompts end with a space and responses with EOS, so that prompt and
    prompt+response tokenize on the same boundary for both libraries."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(f"t{rng.randrange(FIRST_ID, vocab_size)}" for _ in range(k))

    pairs = []
    for _ in range(n):
        p = _lognormal_len(rng, 140, 0.7, 32, 512)
        c = _lognormal_len(rng, 90, 0.7, 16, 384) - 1
        r = _lognormal_len(rng, 90, 0.7, 16, 384) - 1
        pairs.append({"prompt": text(p) + " ", "chosen": text(c) + " </s>", "rejected": text(r) + " </s>"})
    return pairs


def build_assets(root: Path, *, vocab_size: int, hidden: int, layers: int, n_pairs: int, seed: int) -> dict:
    from preftune.models.tiny import build_model

    tok = make_tokenizer(vocab_size)
    paths = {}
    for name, s in (("policy", seed), ("reference", seed + 1)):
        m = build_model(vocab_size, hidden_size=hidden, num_layers=layers, num_heads=8,
                        intermediate_size=3 * hidden, tie_word_embeddings=True, seed=s,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
        d = root / name
        m.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        paths[name] = str(d)
        n_params = sum(p.numel() for p in m.parameters())
        del m
    data = root / "pairs.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for p in make_pairs(n_pairs, vocab_size, seed):
            f.write(json.dumps(p) + "\n")
    return {**paths, "data": str(data), "params": n_params}


# ----------------------------------------------------------------------------- workers


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_pairs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _throughput(times: list[float], cpu: list[float], pairs: list[int], tokens: list[int]) -> dict:
    """Per-step wall and process-CPU times; the first step (allocator warm-up, lazy optimizer
    state, compilation) is left out. Pairs per CPU-second is the figure that survives a
    machine shared with other jobs: waiting for a core costs wall time, not CPU time."""
    s = 1 if len(times) > 1 else 0
    t, c, p, k = sum(times[s:]), sum(cpu[s:]), sum(pairs[s:]), sum(tokens[s:])
    return {"pairs_per_s": p / t, "response_tokens_per_s": k / t, "pairs_per_cpu_s": p / c,
            "step_s": t / max(1, len(times) - s), "first_step_s": times[0]}


def preftune_order(spec: dict) -> list[list[int]]:
    """The batches (indices into the pairs file) preftune trains on in epoch 0."""
    from preftune.data import PairExample, tokenize_examples
    from preftune.train.sources import epoch_batches

    tok = make_tokenizer(spec["vocab_size"])
    exs = [PairExample(p["prompt"], p["chosen"], p["rejected"], row=i) for i, p in enumerate(_read_pairs(spec["data"]))]
    items = tokenize_examples(exs, tok, max_length=1024, max_prompt_length=512).items
    return epoch_batches(items, spec["batch_size"], seed=spec["seed"], epoch=0, group_by_length=spec["group"])


def worker_preftune(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from preftune.data import PairExample
    from preftune.train import Callback, TrainConfig, train

    if spec.get("full_logits"):
        # Ablation only: the plain path (model(...).logits, log_softmax over [rows, time, vocab]).
        import functools

        import preftune.reference as reference
        import preftune.train.loop as loop
        from preftune.models import logprobs

        full = functools.partial(logprobs.sequence_logps, full_logits=True)
        loop.sequence_logps = full
        reference.sequence_logps = full

    pairs = _read_pairs(spec["data"])
    examples = [PairExample(p["prompt"], p["chosen"], p["rejected"], row=i) for i, p in enumerate(pairs)]
    cfg = TrainConfig(model=spec["policy"], ref_model=spec["reference"], ref=spec["ref"], output=spec["out"],
                      max_steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"],
                      layout=spec["layout"], group_by_length=spec["group"], chunk_size=spec["chunk_size"],
                      max_length=1024, max_prompt_length=512, progress=False, save_final=False,
                      lr_schedule="linear", max_grad_norm=1.0, device="cpu",
                      loss_params={"beta": spec["beta"]})

    class Timer(Callback):
        def __init__(self):
            self.times, self.cpu, self.losses, self.pairs, self.tokens = [], [], [], [], []
            self.t = self.c = 0.0
            self.rss_start = None

        def on_train_start(self, state):
            self.rss_start = _rss_mb()
            if spec.get("compile"):
                for m in (state.model, getattr(state.reference, "model", None)):
                    for layer in (m.model.layers if m is not None else []):
                        layer.compile(dynamic=True)
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, state, metrics):
            now, cnow = time.perf_counter(), time.process_time()
            self.times.append(now - self.t)
            self.cpu.append(cnow - self.c)
            self.t, self.c = now, cnow
            self.losses.append(metrics["loss"])
            self.pairs.append(spec["batch_size"])
            self.tokens.append(spec["resp_tokens_per_step"][len(self.losses) - 1])

    timer = Timer()
    t0 = time.perf_counter()
    train(cfg, train_examples=examples, callbacks=[timer])
    return {"losses": timer.losses, "times": timer.times, "peak_rss_mb": _peak_mb(),
            "rss_at_start_mb": timer.rss_start, "wall_s": time.perf_counter() - t0,
            **_throughput(timer.times, timer.cpu, timer.pairs, timer.tokens)}


def worker_trl(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    pairs = _read_pairs(spec["data"])
    order = [i for b in spec["order"] for i in b]
    ds = Dataset.from_list([pairs[i] for i in order])
    tok = make_tokenizer(spec["vocab_size"])
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], **kw)
    ref = AutoModelForCausalLM.from_pretrained(spec["reference"], **kw)
    args = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                     learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                     weight_decay=0.0, beta=spec["beta"], max_length=1024, logging_steps=1, save_strategy="no",
                     report_to="none", use_cpu=True, seed=spec["seed"], disable_tqdm=True,
                     dataloader_num_workers=0, train_sampling_strategy=spec["sampling"],
                     gradient_checkpointing=False, bf16=False, fp16=False)
    losses: list[float] = []

    class Trainer(DPOTrainer):
        def compute_loss(self, *a, **k):
            out = super().compute_loss(*a, **k)
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            return out

    class Timer(TrainerCallback):
        times: list[float] = []
        cpu: list[float] = []
        t = c = 0.0
        rss_start = None

        def on_train_begin(self, *a, **k):
            Timer.rss_start = _rss_mb()

        def on_step_begin(self, *a, **k):
            Timer.t, Timer.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            Timer.times.append(time.perf_counter() - Timer.t)
            Timer.cpu.append(time.process_time() - Timer.c)

    trainer = Trainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                      callbacks=[Timer()])
    # response tokens per step, from TRL's own tokenization (its completion masks)
    toks = []
    for b in range(spec["steps"]):
        rows = trainer.train_dataset[b * spec["batch_size"]:(b + 1) * spec["batch_size"]]
        toks.append(sum(len(c) + len(r) for c, r in zip(rows["chosen_ids"], rows["rejected_ids"])))
    t0 = time.perf_counter()
    trainer.train()
    return {"losses": losses, "times": Timer.times, "peak_rss_mb": _peak_mb(), "rss_at_start_mb": Timer.rss_start,
            "wall_s": time.perf_counter() - t0,
            **_throughput(Timer.times, Timer.cpu, [spec["batch_size"]] * len(Timer.times), toks)}


def worker_vocab(spec: dict) -> dict:
    """Peak memory of one forward+backward of response log-probs, chunked or full logits."""
    import torch

    torch.set_num_threads(spec["threads"])
    from preftune.data.collate import collate_pairs
    from preftune.data.types import TokenizedPair
    from preftune.models.logprobs import sequence_logps
    from preftune.models.tiny import build_model

    V = spec["vocab_size"]
    model = build_model(V, hidden_size=spec["hidden"], num_layers=spec["layers"], num_heads=8,
                        intermediate_size=3 * spec["hidden"], tie_word_embeddings=True, seed=0)
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(FIRST_ID, V) for _ in range(n)]  # noqa: E731
    batch = collate_pairs([TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in spec["shapes"]], 0)
    import gc

    gc.collect()
    before = _rss_mb()
    peak_before = _peak_mb()
    t0 = time.perf_counter()
    lp = sequence_logps(model, batch, chunk_size=spec["chunk_size"], full_logits=spec["full_logits"])
    lp.sums.sum().backward()
    dt = time.perf_counter() - t0
    return {"rss_before_mb": before, "peak_before_mb": peak_before, "peak_rss_mb": _peak_mb(),
            "peak_delta_mb": _peak_mb() - before, "seconds": dt, "sum": float(lp.sums.sum()),
            "logits_mb": batch.input_ids.numel() * V * 4 / 2**20}


WORKERS = {"preftune": worker_preftune, "trl": worker_trl, "vocab": worker_vocab, "order": preftune_order}


# ----------------------------------------------------------------------------- driver


def run_worker(kind: str, spec: dict, tmp: Path, timeout: float = 1200, script: str = __file__) -> dict:
    """Run ``script --worker kind`` in its own process (peak RSS is per process) and return its JSON result."""
    spec_path = tmp / f"spec-{kind}-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(spec.get("threads", 2)),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, script, "--worker", kind, str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out_path.read_text())


def busy_cores(seconds: float = 2.0) -> float:
    """Cores in use by other work right now (from /proc/stat; the 1-minute load average lags by
    minutes, e.g. after a previous benchmark). Falls back to the load average elsewhere."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(1, t1 - t0))
    except OSError:
        return os.getloadavg()[0]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_table(headers: list[str], rows: list[list]) -> str:
    def fmt(c):
        if isinstance(c, float):
            return f"{c:,.0f}" if abs(c) >= 1000 else f"{c:.3g}"
        return str(c)

    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cells[1:]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and variants (< 3 min on 2 cores)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 6, quick 4)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 8, quick 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="where to write results (default benchmarks/results/...)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--trl-random", action="store_true",
                    help="also run TRL in its default random order (more padding per batch; ~7 min more)")
    ap.add_argument("--drift-check", action="store_true",
                    help="repeat the first preftune run at the end (automatic when the machine is busy at the start)")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kind, spec_path, out_path = a.worker
        res = WORKERS[kind](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(res))
        return 0

    steps = a.steps or (4 if a.quick else 6)
    B = a.batch_size or (4 if a.quick else 8)
    vocab, hidden, layers = 32_000, 512, 8
    started = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    load_start = load_average()
    busy_start = busy_cores()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="preftune-bench-")
    tmp = Path(tmp_ctx.name)
    assets = build_assets(tmp, vocab_size=vocab, hidden=hidden, layers=layers, n_pairs=steps * B, seed=a.seed)
    base = {"policy": assets["policy"], "reference": assets["reference"], "data": assets["data"],
            "vocab_size": vocab, "batch_size": B, "steps": steps, "lr": 5e-6, "beta": 0.1, "seed": a.seed,
            "threads": a.threads, "chunk_size": 1024}

    order = run_worker("order", {**base, "group": True}, tmp)
    pairs = _read_pairs(assets["data"])
    lens = [(len(p["prompt"].split()), len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    resp_tokens = [sum(lens[i][1] + lens[i][2] for i in b) for b in order]
    shape = {"pairs": len(pairs), "prompt_tokens_mean": sum(x[0] for x in lens) / len(lens),
             "response_tokens_mean": sum(x[1] + x[2] for x in lens) / (2 * len(lens)),
             "prompt_max": max(x[0] for x in lens), "response_max": max(max(x[1], x[2]) for x in lens)}

    def pt(name: str, **over) -> dict:
        spec = {**base, "layout": "packed", "group": True, "ref": "model", "out": str(tmp / f"run-{name}"),
                "resp_tokens_per_step": resp_tokens, **over}
        if not spec["group"]:
            o = run_worker("order", {**base, "group": False}, tmp)
            spec["resp_tokens_per_step"] = [sum(lens[i][1] + lens[i][2] for i in b) for b in o]
        print(f"  running preftune [{name}] ...", flush=True)
        return run_worker("preftune", spec, tmp)

    def ablation(name: str, **over) -> dict:
        try:
            return pt(name, **over)
        except (RuntimeError, subprocess.TimeoutExpired) as e:  # one failed variant must not lose the rest
            print(f"  variant {name} failed: {str(e)[-2000:]}", flush=True)
            return {"error": str(e)[-2000:]}

    results: dict = {"command": " ".join(["benchmarks/bench_dpo.py"] + (argv if argv is not None else sys.argv[1:])),
                     "machine": {"cpus": os.cpu_count(), "threads": a.threads, "load_avg_start": load_start,
                                 "busy_cores_start": busy_start},
                     "model": {"vocab": vocab, "hidden": hidden, "layers": layers, "params": assets["params"]},
                     "data": shape, "batch_size": B, "steps": steps}

    # 1. preftune vs TRL --------------------------------------------------------------------
    print(f"preftune vs TRL: {steps} steps x {B} pairs, {assets['params'] / 1e6:.1f}M params, load {load_start}",
          flush=True)
    head = {"preftune": pt("recommended")}
    if not a.skip_trl:
        print("  running TRL DPOTrainer (same batches) ...", flush=True)
        head["trl"] = run_worker("trl", {**base, "order": order, "sampling": "sequential",
                                         "out": str(tmp / "run-trl")}, tmp)
        if a.trl_random:
            print("  running TRL DPOTrainer (its default random order) ...", flush=True)
            head["trl, random order (its default)"] = run_worker(
                "trl", {**base, "order": order, "sampling": "random", "out": str(tmp / "run-trl-random")}, tmp)
    results["vs_trl"] = head

    # 2. ablations ----------------------------------------------------------------------------
    variants = {"prefix_shared layout": {"layout": "prefix_shared"}, "padded layout": {"layout": "padded"},
                "no length grouping": {"group": False}, "full logits (no chunking)": {"full_logits": True},
                "precomputed reference": {"ref": "precomputed"},
                "torch.compile decoder layers": {"compile": True}}
    if a.quick:
        variants = {k: v for k, v in variants.items() if k in ("padded layout",)}
    abl = {"recommended = default (packed, grouped, chunked, ref model)": head["preftune"]}
    for name, over in variants.items():
        abl[name] = ablation(name.split(" (")[0].replace(" ", "_").replace(".", ""), **over)
    if a.drift_check or (not a.quick and busy_start > 0.25):
        # Other jobs on the machine at the start: the first run again; if their load changed meanwhile,
        # this row shows it (on a quiet machine the two agreed within 1%, docs/benchmarks.md).
        abl["recommended again (load drift check)"] = ablation("recommended_again")
    results["ablations"] = abl

    # 3. large vocabulary: peak memory of log-probs -----------------------------------------
    vshapes = [[384, 192, 128], [256, 256, 96]] if not a.quick else [[256, 128, 96], [192, 160, 64]]
    vspec = {"vocab_size": 150_000, "hidden": hidden, "layers": 2, "threads": a.threads, "shapes": vshapes,
             "chunk_size": 1024}
    print("  large vocabulary (150k): chunked vs full logits ...", flush=True)
    results["large_vocab"] = {"chunked": run_worker("vocab", {**vspec, "full_logits": False}, tmp),
                              "full": run_worker("vocab", {**vspec, "full_logits": True}, tmp)}
    results["machine"]["load_avg_end"] = load_average()
    results["seconds"] = time.perf_counter() - started
    tmp_ctx.cleanup()

    print(report(results))
    out = Path(a.json) if a.json else HERE / "results" / ("bench_dpo_quick.json" if a.quick else "bench_dpo.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


def report(res: dict) -> str:
    out = []
    m, d = res["machine"], res["data"]
    out.append(f"\nmachine: {m['cpus']} CPUs, {m['threads']} torch threads; load average (1/5/15 min) "
               f"{m['load_avg_start']} at start, {m['load_avg_end']} at end; cores busy with other work at start "
               f"{m.get('busy_cores_start', float('nan')):.2f}; total {res['seconds']:.0f}s")
    out.append(f"model: Llama-style, {res['model']['params'] / 1e6:.1f}M params (hidden {res['model']['hidden']}, "
               f"{res['model']['layers']} layers, vocab {res['model']['vocab']}); fp32, DPO beta 0.1, reference model")
    out.append(f"data: {d['pairs']} pairs, prompt mean {d['prompt_tokens_mean']:.0f} (max {d['prompt_max']}), "
               f"response mean {d['response_tokens_mean']:.0f} (max {d['response_max']}) tokens; batch "
               f"{res['batch_size']} pairs, {res['steps']} steps (step 1 excluded from rates)\n")
    vs = res["vs_trl"]
    rows = []
    for name, r in vs.items():
        rows.append([name, r["pairs_per_s"], r["pairs_per_cpu_s"], r["response_tokens_per_s"], r["peak_rss_mb"],
                     r["peak_rss_mb"] - r["rss_at_start_mb"], f"{r['losses'][0]:.6f}"])
    if "trl" in vs:
        p, t = vs["preftune"], vs["trl"]
        rel = abs(p["losses"][0] - t["losses"][0]) / abs(t["losses"][0])
        n = min(len(p["losses"]), len(t["losses"]))
        worst = max(abs(x - y) / abs(y) for x, y in zip(p["losses"][:n], t["losses"][:n]))
        rows.append(["ratio preftune/TRL", p["pairs_per_s"] / t["pairs_per_s"],
                     p["pairs_per_cpu_s"] / t["pairs_per_cpu_s"],
                     p["response_tokens_per_s"] / t["response_tokens_per_s"], p["peak_rss_mb"] / t["peak_rss_mb"],
                     (p["peak_rss_mb"] - p["rss_at_start_mb"]) / (t["peak_rss_mb"] - t["rss_at_start_mb"]),
                     f"rel diff {rel:.1e} (all steps <= {worst:.1e})"])
    out.append("preftune vs TRL DPOTrainer (same batches, same model, same reference)")
    out.append(fmt_table(["run", "pairs/s", "pairs/CPU-s", "resp tok/s", "peak RSS MB", "peak - start MB",
                          "step-1 loss"], rows))
    rows = []
    base = next(iter(res["ablations"].values()))
    for name, r in res["ablations"].items():
        if "error" in r:
            rows.append([name, "failed", "", "", "", "", "", r["error"].strip().splitlines()[-1][:60]])
            continue
        rows.append([name, r["pairs_per_s"], r["pairs_per_cpu_s"], r["pairs_per_cpu_s"] / base["pairs_per_cpu_s"],
                     r["peak_rss_mb"], r["first_step_s"], r["wall_s"], f"{r['losses'][0]:.6f}"])
    out.append("\npreftune ablations (one technique switched at a time; 'train() wall' includes loading, "
               "reference precompute and step 1)")
    out.append(fmt_table(["variant", "pairs/s", "pairs/CPU-s", "CPU speed vs recommended", "peak RSS MB",
                          "step-1 s", "train() wall s", "step-1 loss"], rows))
    lv = res["large_vocab"]
    c, f = lv["chunked"], lv["full"]
    out.append(f"\nlarge vocabulary (150k, hidden 512, 2 layers): one forward+backward of response log-probs; "
               f"full [rows, time, vocab] fp32 logits would be {c['logits_mb']:.0f} MB")
    out.append(fmt_table(["head", "peak RSS above start MB", "seconds", "sum of log-probs"],
                         [["chunked (1024 labels/chunk)", c["peak_delta_mb"], c["seconds"], f"{c['sum']:.4f}"],
                          ["full logits", f["peak_delta_mb"], f["seconds"], f"{f['sum']:.4f}"],
                          ["ratio chunked/full", c["peak_delta_mb"] / f["peak_delta_mb"], c["seconds"] / f["seconds"],
                           ""]]))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
