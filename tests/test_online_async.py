"""``preftune online --generation-process``: generation and scoring in a second process, weights synced after each
optimizer step, bounded staleness. End to end on a tiny random model (two CPU processes): staleness 0 is the
in-process run exactly; staleness 1 trains on samples one version old, corrects the clipped ratio with the
sampler's log-probs, and resumes to the same run; a silent or dead generation process ends the run with one line;
the generation process never outlives its trainer."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from preftune.errors import ConfigError
from preftune.online import OnlineConfig, train_online
from preftune.online.async_source import GenerationProcessError
from preftune.train import TrainConfig

pytestmark = pytest.mark.slow

REWARD = ("def odd(prompts, completions, **kw):\n"
          "    return [float(sum(ord(ch) % 3 == 0 for ch in c)) for c in completions]\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("async")
    (d / "r.py").write_text(REWARD)
    (d / "p.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+{i + 1}="}) + "\n" for i in range(8)))
    return d


def _cfg(tiny_dir, out, **kw):
    base = dict(model=str(tiny_dir), output=str(out), max_steps=3, batch_size=8, grad_accum=2, lr=3e-2,
                progress=False, save_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _online(files, **kw):
    base = dict(algo="grpo", prompts=str(files / "p.jsonl"), reward_fn=[f"{files / 'r.py'}:odd"], num_generations=4,
                max_new_tokens=4, generation_process=True)
    base.update(kw)
    return OnlineConfig(**base)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _metrics(out, keys=("step", "loss", "reward", "reward_std", "grad_norm", "entropy", "epoch")):
    return [{k: r[k] for k in keys} for r in _rows(out / "metrics.jsonl")]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _child_pid(out):
    return json.loads((out / "run_info.json").read_text())["generation_process"]["pid"]


def _gone(pid, within=10.0):
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < within:
        time.sleep(0.1)
    return not _alive(pid)


def test_staleness_0_is_exactly_the_in_process_run(tiny_dir, files, tmp_path):
    a, b = tmp_path / "inproc", tmp_path / "async"
    train_online(_cfg(tiny_dir, a), _online(files, generation_process=False))
    train_online(_cfg(tiny_dir, b), _online(files, max_staleness=0))
    assert _metrics(a) == _metrics(b)  # same samples, same losses, to the bit
    assert (a / "completions.jsonl").read_text() == (b / "completions.jsonl").read_text()
    assert any(r["grad_norm"] > 0 for r in _metrics(a))  # the policy moved: the weights had to be synced
    assert all(r["policy_lag"] == 0 for r in _rows(b / "metrics.jsonl"))
    assert _gone(_child_pid(b))


def test_staleness_1_trains_on_samples_one_step_old_and_resumes_to_the_same_run(tiny_dir, files, tmp_path):
    a = tmp_path / "a"
    online = _online(files, max_staleness=1)
    train_online(_cfg(tiny_dir, a, max_steps=4, save_every=1, keep_checkpoints=5), online)
    log = _rows(a / "completions.jsonl")
    # generation batch g is sampled with version max(0, g - 1) and trained at step g + 1
    assert {(r["step"], r["policy_version"]) for r in log} == {(1, 0), (2, 0), (3, 1), (4, 2)}
    m = _rows(a / "metrics.jsonl")
    assert [r["policy_lag"] for r in m] == [0, 1, 1, 1]
    # GRPO's loss is -mean(ratio * A) with advantages of mean zero per group: 0 on-policy (ratio 1); a non-zero
    # loss at a lagged step shows the sampler's log-probs reached the ratio as pi_old
    assert abs(m[0]["loss"]) < 1e-6 and any(abs(r["loss"]) > 1e-4 for r in m[1:] if r["grad_norm"] > 0)
    assert all(isinstance(r["logprob"], float) and r["logprob"] <= 0 for r in log)
    assert _gone(_child_pid(a))
    # resume at step 2: the batch sampled with version 1 for step 3 was saved with the checkpoint
    b = tmp_path / "b"
    shutil.copytree(a, b)
    train_online(_cfg(tiny_dir, b, max_steps=4, save_every=1, keep_checkpoints=5,
                      resume=str(b / "checkpoints" / "step-2")), online)
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k and "timing" not in k} for r in rows]
    assert strip(_rows(a / "metrics.jsonl")) == strip(_rows(b / "metrics.jsonl"))
    assert (a / "completions.jsonl").read_text() == (b / "completions.jsonl").read_text()


def test_a_silent_generation_process_ends_the_run_within_the_timeout(tiny_dir, files, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_TEST_GENERATOR_DELAY", "60")
    t0 = time.monotonic()
    with pytest.raises(GenerationProcessError,
                       match=r"^--weight-sync-timeout 2: the generation process \(pid (\d+)\) did not answer: no "
                             r"micro-batch 0 of generation batch 0 within 2 s") as e:
        train_online(_cfg(tiny_dir, tmp_path / "o"), _online(files, weight_sync_timeout=2))
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 60  # not the child's 60 s: the timeout ended it
    assert _gone(int(str(e.value).split("pid ")[1].split(")")[0]), within=2)


def test_a_dead_generation_process_ends_the_run_with_one_line(tiny_dir, files, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_TEST_GENERATOR_EXIT_AFTER", "2")  # dies after generation batch 0 (2 micro-batches)
    # it is found dead either sending the weights of step 1 or waiting for batch 1, whichever comes first
    dead = (r"the generation process \(pid \d+\) exited with code 9 while the trainer waited for (the generation "
            r"process to take the weights of version 1|micro-batch 0 of generation batch 1)")
    with pytest.raises(GenerationProcessError, match=dead) as e:
        train_online(_cfg(tiny_dir, tmp_path / "o"), _online(files))
    assert "\n" not in str(e.value)


def test_the_generation_process_does_not_outlive_a_killed_trainer(tiny_dir, files, tmp_path):
    out = tmp_path / "o"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = {sys.path!r}
        from preftune.online import OnlineConfig, train_online
        from preftune.train import TrainConfig
        train_online(TrainConfig(model={str(tiny_dir)!r}, output={str(out)!r}, max_steps=3, batch_size=8,
                                 progress=False, save_every=0),
                     OnlineConfig(algo="grpo", prompts={str(files / 'p.jsonl')!r},
                                  reward_fn=[{str(files / 'r.py') + ':odd'!r}], num_generations=4, max_new_tokens=4,
                                  generation_process=True))
    """)
    env = {**os.environ, "PREFTUNE_TEST_GENERATOR_DELAY": "300"}  # the run waits on its generation process
    trainer = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not (out / "run_info.json").exists():
            assert trainer.poll() is None and time.monotonic() - t0 < 240, "the trainer did not start"
            time.sleep(0.2)
        pid = _child_pid(out)
        assert _alive(pid)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait()
        assert _gone(pid, within=10)
    finally:
        if trainer.poll() is None:
            trainer.kill()


def test_what_cannot_go_to_another_process_is_refused(tiny_dir, files, tmp_path):
    with pytest.raises(ConfigError, match="a Python reward function passed in memory cannot go there"):
        train_online(_cfg(tiny_dir, tmp_path / "o"), _online(files), reward_functions=[lambda **kw: [0.0]])
    with pytest.raises(ConfigError, match="--max-staleness 1: objective 'rloo' is on-policy"):
        train_online(_cfg(tiny_dir, tmp_path / "o"), _online(files, algo="rloo", max_staleness=1))
    with pytest.raises(ConfigError, match="--max-staleness 1: online_dpo trains on pairs of the current policy"):
        train_online(_cfg(tiny_dir, tmp_path / "o", batch_size=4),
                     _online(files, algo="online_dpo", num_generations=2, max_staleness=1))
