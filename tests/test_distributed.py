"""Several processes on CPU (gloo): DDP and FSDP2 reproduce the one-process run with the same global batch,
checkpoints resume on another number of processes, online and reward-model training run distributed.

Each run is a real launch (``torchrun --standalone``, 2 processes) of the command line, compared with a
one-process launch with twice the gradient accumulation (the same global batch: batch-size x processes x
grad-accum). Both use one thread per process (torchrun's default), so the sums are formed alike: the per-step
losses and gradient norms agree to 1e-6 (measured: bit-identical on this machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import arithmetic_rows

pytestmark = pytest.mark.slow

TOL = 1e-6


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def launch(n: int, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "preftune", *args] if n == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--standalone",
         "-m", "preftune", *args]
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if ok:
        assert p.returncode == 0, f"{' '.join(args[:2])} on {n} process(es) failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(a: list[dict], b: list[dict], keys=("loss", "grad_norm"), tol: float = TOL) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            assert abs(ra[k] - rb[k]) <= tol * max(1.0, abs(ra[k])), (ra["step"], k, ra[k], rb[k])


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("dist")
    rows = [r for r in arithmetic_rows(80, seed=2) if r["chosen"] != r["rejected"]][:64]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(10, seed=9)
                                          if r["chosen"] != r["rejected"]))
    (d / "model").symlink_to(tiny_dir)
    return d


def train_args(out: str, accum: int, *extra: str) -> list[str]:
    return ["train", "--model", "model", "--data", "pairs.jsonl", "--max-steps", "4", "--batch-size", "4",
            "--lr", "1e-3", "--no-progress", "--save-every", "2", "--grad-accum", str(accum), "--output", out, *extra]


@pytest.fixture(scope="module")
def one_process(work):
    launch(1, *train_args("one", 2, "--eval-data", "eval.jsonl", "--eval-every", "2"), cwd=work)
    return metrics(work / "one")


@pytest.mark.parametrize("engine,layout", [("ddp", "packed"), ("fsdp2", "packed"), ("fsdp2", "prefix_shared"),
                                           ("ddp", "padded")])
def test_two_processes_reproduce_one_with_the_same_global_batch(work, one_process, engine, layout):
    out = f"two-{engine}-{layout}"
    launch(2, *train_args(out, 1, "--distributed", engine, "--eval-data", "eval.jsonl", "--eval-every", "2",
                          "--layout", layout), cwd=work)
    info = json.loads((work / out / "run_info.json").read_text())
    # accelerate/torch can silently fall back to one process or another engine: the run says what it ran on
    assert (info["engine"], info["processes"], info["backend"]) == (engine, 2, "gloo")
    two = metrics(work / out)
    # the one-process run is packed: another layout sums the same terms in another order (float rounding only)
    tol = TOL if layout == "packed" else 1e-5
    assert_same_steps(one_process, two, tol=tol)
    assert_same_steps([r for r in one_process if "eval/loss" in r], [r for r in two if "eval/loss" in r],
                      keys=("eval/loss",), tol=tol)
    # final/ is a normal Hugging Face directory with the full weights, equal to the one-process run's
    from safetensors.torch import load_file

    a, b = load_file(str(work / "one/final/model.safetensors")), load_file(str(work / out / "final/model.safetensors"))
    assert set(a) == set(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < (1e-6 if layout == "packed" else 1e-4)


@pytest.mark.parametrize("engines", [("ddp", 1), (1, "fsdp2")], ids=["ddp2-to-1", "1-to-fsdp2"])
def test_a_checkpoint_resumes_on_another_number_of_processes(work, one_process, engines):
    first, then = engines
    out = f"resume-{first}-{then}"

    def run(engine, *more):
        n = 1 if engine == 1 else 2
        args = train_args(out, 2 if n == 1 else 1, "--eval-data", "eval.jsonl", "--eval-every", "2", *more)
        return launch(n, *args, *(["--distributed", engine] if n == 2 else []), cwd=work)

    run(first)
    # as if the run had stopped after step 2: its later checkpoint and final/ are gone
    import shutil

    shutil.rmtree(work / out / "checkpoints" / "step-4")
    shutil.rmtree(work / out / "final")
    p = run(then, "--resume")
    assert "resumed from" in p.stdout and "(step 2)" in p.stdout
    assert_same_steps(one_process, metrics(work / out))


def test_accelerate_launch_runs_the_same_training(work, one_process):
    """accelerate's launcher (on CPU: --multi_gpu with ACCELERATE_USE_CPU, or it starts one process only)."""
    env = {**_env(), "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "preftune", *train_args("accel", 1, "--eval-data", "eval.jsonl", "--eval-every", "2")]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((work / "accel" / "run_info.json").read_text())
    assert (info["engine"], info["processes"], info["backend"]) == ("ddp", 2, "gloo")
    assert_same_steps(one_process, metrics(work / "accel"))


def test_a_resume_with_another_global_batch_is_refused(work):
    out = "resume-refused"
    launch(1, *train_args(out, 2), cwd=work)
    p = launch(2, *train_args(out, 2, "--resume"), cwd=work, ok=False)  # 2 x 2 micro-batches: another batch
    assert p.returncode != 0
    assert "grad_accum 2 -> 4" in p.stderr


def test_online_grpo_on_two_processes_samples_and_learns_as_one(work):
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n"
                                                for a in range(4) for b in range(4)))
    (work / "reward.py").write_text("def fn(prompts, completions, **kw):\n"
                                    "    return [sum(c.isdigit() for c in t) / (1 + len(t)) for t in completions]\n")

    def run(n, out, *extra):
        launch(n, "online", "--algo", "grpo", "--model", "model", "--prompts", "prompts.jsonl", "--reward-fn",
               "reward.py:fn", "--num-generations", "2", "--batch-size", "4", "--grad-accum", str(4 // (2 * n)),
               "--max-new-tokens", "4", "--max-steps", "3", "--lr", "1e-3", "--no-progress", "--save-every", "0",
               "--output", out, *extra, cwd=work)

    run(1, "grpo-one")
    run(2, "grpo-two")
    assert_same_steps(metrics(work / "grpo-one"), metrics(work / "grpo-two"), keys=("loss", "reward"))
    # FSDP2: the first generation gathers the sharded layers inside the root's forward, outside training (it once
    # ran under inference mode, and the training forward after it failed); step 1 samples as one process does
    run(2, "grpo-fsdp2", "--distributed", "fsdp2")
    sharded = metrics(work / "grpo-fsdp2")
    assert len(sharded) == 3
    assert_same_steps(metrics(work / "grpo-one")[:1], sharded[:1], keys=("loss", "reward"))

    def completions(out):
        return [(r["step"], r["prompt"], r["completion"], r["reward"])
                for r in map(json.loads, (work / out / "completions.jsonl").read_text().splitlines())]

    one, two = completions("grpo-one"), completions("grpo-two")
    assert len(one) == 3 * 8 and one == two  # every process's samples, logged once, as one process samples them


def test_online_resume_inside_a_reused_generation_batch(work):
    """GRPO with --num-iterations 2 checkpointed after step 1, in the middle of a generation batch: every
    process's samples are in the checkpoint, and each continues on its own."""
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n"
                                                for a in range(4) for b in range(4)))
    (work / "reward.py").write_text("def fn(prompts, completions, **kw):\n"
                                    "    return [sum(c.isdigit() for c in t) / (1 + len(t)) for t in completions]\n")

    def run(out, *more):
        launch(2, "online", "--algo", "grpo", "--model", "model", "--prompts", "prompts.jsonl", "--reward-fn",
               "reward.py:fn", "--num-generations", "2", "--batch-size", "4", "--num-iterations", "2",
               "--max-new-tokens", "4", "--max-steps", "3", "--lr", "1e-3", "--no-progress", "--save-every", "1",
               "--keep-checkpoints", "5", "--output", out, *more, cwd=work)

    run("it-full")
    run("it-resumed")
    import shutil

    for s in (2, 3):
        shutil.rmtree(work / "it-resumed" / "checkpoints" / f"step-{s}")
    shutil.rmtree(work / "it-resumed" / "final")
    run("it-resumed", "--resume")
    full, resumed = metrics(work / "it-full"), metrics(work / "it-resumed")
    assert_same_steps(full, resumed, keys=("loss", "grad_norm", "reward"))


def test_reward_model_training_on_two_processes(work):
    launch(1, "rm", "train", "--model", "model", "--data", "pairs.jsonl", "--max-steps", "3", "--batch-size", "4",
           "--grad-accum", "2", "--lr", "1e-3", "--no-progress", "--output", "rm-one", cwd=work)
    launch(2, "rm", "train", "--model", "model", "--data", "pairs.jsonl", "--max-steps", "3", "--batch-size", "4",
           "--grad-accum", "1", "--lr", "1e-3", "--no-progress", "--output", "rm-two", "--distributed", "fsdp2",
           cwd=work)
    assert_same_steps(metrics(work / "rm-one"), metrics(work / "rm-two"))
    assert json.loads((work / "rm-two" / "run_info.json").read_text())["engine"] == "fsdp2"


def test_an_engine_without_a_launcher_is_refused(work):
    p = launch(1, *train_args("no-launcher", 1, "--distributed", "fsdp2"), cwd=work, ok=False)
    assert p.returncode == 2 and "needs several processes" in p.stderr and "torchrun" in p.stderr
