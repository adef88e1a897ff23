"""Issue 12, the run directory and the trainer's boundaries: nobody can silently corrupt a run, wrong inputs
do not train to wrong results with exit 0, and faults end in one line, not a traceback.

(Config values and TRL names: tests/test_run_safety_config.py; data boundaries: tests/test_run_safety_data.py.)
"""
from __future__ import annotations

import errno
import json
import math
import shutil

import pytest
import torch

from preftune.errors import CheckpointError, ConfigError
from preftune.train import TrainConfig, TrainingError, train
from preftune.train import checkpoint as ck
from preftune.train.rundir import run_lock

from conftest import arithmetic_rows


def _cfg(tiny_dir, data, out, **kw):
    base = dict(model=str(tiny_dir), data=str(data), output=str(out), loss="dpo", loss_params={"beta": 0.5},
                batch_size=8, lr=5e-3, max_steps=4, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_file(tmp_path, pair_rows):
    return _write(tmp_path / "pairs.jsonl", pair_rows)


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(run / "final" / "model.safetensors"))


def _losses(res):
    return [h["loss"] for h in res.history if "loss" in h]


# ----------------------------------------------------------------------------- silent corruption and loss


def test_overwrite_clears_the_old_run_so_resume_cannot_continue_it(tiny_dir, data_file, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_dir, data_file, run, max_steps=6, save_every=2, keep_checkpoints=5))
    assert [s for s, _ in ck.list_checkpoints(run)] == [2, 4, 6]
    # a new run in the same directory, shorter, other seed
    new = train(_cfg(tiny_dir, data_file, run, max_steps=2, seed=1, overwrite=True, save_every=None))
    assert [s for s, _ in ck.list_checkpoints(run)] == [2]  # the old run's step-4/step-6 are gone
    alone = train(_cfg(tiny_dir, data_file, tmp_path / "alone", max_steps=2, seed=1, save_every=None))
    for k, v in _weights(alone.output_dir).items():
        assert torch.equal(v, _weights(run)[k]), k
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    res = train(_cfg(tiny_dir, data_file, run, max_steps=2, seed=1, resume=True, save_every=None))
    assert res.steps == 2 and _losses(new) == _losses(alone)


def test_a_checkpoint_of_another_run_is_refused_by_its_identity(tiny_dir, data_file, tmp_path):
    other, run = tmp_path / "other", tmp_path / "run"
    train(_cfg(tiny_dir, data_file, other, max_steps=4, seed=1, save_every=2))
    train(_cfg(tiny_dir, data_file, run, max_steps=4, save_every=2))
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.copytree(other / "checkpoints" / "step-4", run / "checkpoints" / "step-4")  # left behind / copied in
    with pytest.raises(ConfigError, match=r"cannot resume .* with other settings \(seed 1 -> 0\)"):
        train(_cfg(tiny_dir, data_file, run, max_steps=4, save_every=2, resume=True))
    state = json.loads((run / "checkpoints" / "step-2" / "state.json").read_text())
    assert len(state["run_id"]) == 32 and state["run_settings"]["seed"] == 0


def test_a_second_process_on_the_same_output_gets_a_one_line_error(tiny_dir, data_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):  # as if another preftune train were running there
        with pytest.raises(ConfigError, match=r"^run directory .* is in use by another preftune process \(pid \d+\)"):
            train(_cfg(tiny_dir, data_file, run))
    assert not (run / "metrics.jsonl").exists()
    res = train(_cfg(tiny_dir, data_file, run, max_steps=1))  # released: the run goes ahead
    assert res.steps == 1


def test_the_lock_dies_with_a_killed_process(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from pathlib import Path; from preftune.train.rundir import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
        with run_lock(run):
            pass
    proc.kill()
    proc.wait()
    with run_lock(run):  # SIGKILL released it
        pass


def test_checkpoints_by_default_and_before_final(tiny_dir, data_file, tmp_path):
    assert TrainConfig().save_every == 500  # TRL's save_steps default
    run = tmp_path / "run"
    train(_cfg(tiny_dir, data_file, run, max_steps=3, save_every=None))
    assert [s for s, _ in ck.list_checkpoints(run)] == [3]  # written before final/, whatever save_every says


def test_resume_without_a_checkpoint_does_not_silently_start_over(tiny_dir, data_file, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_dir, data_file, run, max_steps=3))
    shutil.rmtree(run / "checkpoints")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="has metrics but no checkpoint to resume from; pass --restart"):
        train(_cfg(tiny_dir, data_file, run, max_steps=3, resume=True))
    assert (run / "metrics.jsonl").read_text() == before  # nothing truncated
    res = train(_cfg(tiny_dir, data_file, run, max_steps=3, resume=True, restart=True))
    assert [h["step"] for h in res.history] == [1, 2, 3]


def test_resume_from_a_chosen_checkpoint_drops_the_later_ones(tiny_dir, data_file, tmp_path):
    run = tmp_path / "run"
    full = train(_cfg(tiny_dir, data_file, run, max_steps=6, save_every=2, keep_checkpoints=5))
    res = train(_cfg(tiny_dir, data_file, run, max_steps=6, save_every=2, keep_checkpoints=5,
                     resume=str(run / "checkpoints" / "step-2")))
    assert [h["step"] for h in res.history] == [1, 2, 3, 4, 5, 6]
    assert _losses(res) == _losses(full)  # the same run, continued from step 2, bitwise
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        train(_cfg(tiny_dir, data_file, run, max_steps=6, resume=str(run / "checkpoints" / "step-99")))


def test_a_missing_metrics_line_is_reported_on_resume(tiny_dir, data_file, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(tiny_dir, data_file, run, max_steps=4, save_every=2, keep_checkpoints=3))
    shutil.rmtree(run / "checkpoints" / "step-4")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0]] + lines[2:]) + "\n")  # step 2's record lost
    capsys.readouterr()
    train(_cfg(tiny_dir, data_file, run, max_steps=4, save_every=2, keep_checkpoints=3, resume=True))
    assert "metrics.jsonl has no record for step 2" in capsys.readouterr().out


def test_a_manifest_pointing_outside_the_checkpoint_is_refused(tiny_dir, data_file, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_dir, data_file, run, max_steps=2))
    step = run / "checkpoints" / "step-2"
    (tmp_path / "elsewhere.bin").write_bytes(b"x")
    man = json.loads((step / "manifest.json").read_text())
    import hashlib
    man["files"]["../../../elsewhere.bin"] = hashlib.sha256(b"x").hexdigest()
    (step / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match=r"lists a path outside the checkpoint \('../../../elsewhere.bin'\)"):
        ck.verify_checkpoint(step)
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        train(_cfg(tiny_dir, data_file, run, max_steps=2, resume=True))


# ----------------------------------------------------------------------------- wrong results with exit 0


def _tiny(path, vocab_size=128, texts=None, **kw):
    from preftune.models.tiny import make_tiny
    texts = texts or [f"{r['prompt']}{r['chosen']}" for r in arithmetic_rows(400, seed=1)] + ["hello world"] * 5
    return make_tiny(path, texts, vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, **kw)


def test_a_reference_of_another_vocabulary_is_refused(tiny_dir, data_file, tmp_path):
    other = _tiny(tmp_path / "other", vocab_size=300)
    with pytest.raises(ConfigError, match=r"--ref-model .* has a vocabulary of \d+ tokens, the policy \d+: its "
                                          r"log-probs would be of other tokens"):
        train(_cfg(tiny_dir, data_file, tmp_path / "r", ref_model=str(other)))


def test_a_reference_of_another_tokenizer_is_refused(tiny_dir, data_file, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = "+", "="
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two ids exchanged: every "+" would be scored as "="
    (other / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ConfigError, match="has another tokenizer than the policy"):
        train(_cfg(tiny_dir, data_file, tmp_path / "r", ref_model=str(other)))


def test_sequences_past_the_position_limit_are_refused_before_training(tmp_path):
    small = _tiny(tmp_path / "small", max_position_embeddings=8)
    rows = [{"prompt": "+".join(str(d) for d in range(9)) + "=", "chosen": "36", "rejected": "35"}] * 8
    data = _write(tmp_path / "long.jsonl", rows)
    with pytest.raises(ConfigError, match=r"a sequence of \d+ tokens exceeds the model's position limit 8 "
                                          r"\(max_position_embeddings\) with max_length 1024; set --max-length 8"):
        train(_cfg(small, data, tmp_path / "r"))
    res = train(_cfg(small, data, tmp_path / "ok", max_length=8, max_prompt_length=5, max_steps=1))  # as told
    assert res.steps == 1
    assert not (tmp_path / "r").exists()  # and no empty run directory is left


def test_a_tokenizer_without_pad_or_eos_is_a_one_line_error(tiny_dir, data_file, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ConfigError, match="has neither a pad token nor an eos token"):
        train(_cfg(tiny_dir, data_file, tmp_path / "r"), tokenizer=tok)


def test_dropout_is_off_by_default_as_in_trl(tmp_path, data_file):
    from transformers import AutoConfig

    model = _tiny(tmp_path / "drop")
    conf = AutoConfig.from_pretrained(model)
    conf.attention_dropout = 0.5
    conf.save_pretrained(model)
    first = train(_cfg(model, data_file, tmp_path / "off", max_steps=1)).history[0]["loss"]
    assert first == pytest.approx(math.log(2), abs=1e-6)  # policy = reference exactly
    on = train(_cfg(model, data_file, tmp_path / "on", max_steps=1, disable_dropout=False)).history[0]["loss"]
    assert abs(on - math.log(2)) > 1e-4  # attention dropout in the policy's forward, none in the reference's


# ----------------------------------------------------------------------------- one line, not a traceback


def test_output_that_is_a_file_or_unwritable(tiny_dir, data_file, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"--output .* is a file, not a directory"):
        train(_cfg(tiny_dir, data_file, f))
    import pathlib

    orig = pathlib.Path.mkdir

    def deny(self, *a, **kw):
        if self.name == "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return orig(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", deny)  # running as root, a read-only dir is hard to make for real
    with pytest.raises(ConfigError, match=r"^cannot create --output .*ro: Permission denied$"):
        train(_cfg(tiny_dir, data_file, tmp_path / "ro"))


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tiny_dir, data_file, tmp_path,
                                                                                   monkeypatch):
    import safetensors.torch

    run = tmp_path / "run"
    orig = safetensors.torch.save_file
    calls = []

    def full(tensors, filename, *a, **kw):
        calls.append(filename)
        if "step-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(tensors, filename, *a, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(TrainingError, match=r"^writing checkpoint step-4 in .* failed: No space left on device; "
                                            r"the previous checkpoints are intact"):
        train(_cfg(tiny_dir, data_file, run, max_steps=6, save_every=2))
    assert [s for s, _ in ck.list_checkpoints(run)] == [2]
    ck.verify_checkpoint(run / "checkpoints" / "step-2")
    assert not list((run / "checkpoints").glob(".step-*"))  # no half-written checkpoint left


def test_cuda_without_cuda_is_a_config_error(tiny_dir, data_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        train(_cfg(tiny_dir, data_file, tmp_path / "r", device="cuda"))


def test_unknown_lora_target_names_the_model_layers(tiny_dir, data_file, tmp_path):
    with pytest.raises(ConfigError, match=r"--lora-target 'nope_proj': .*this model's linear layers are .*q_proj"):
        train(_cfg(tiny_dir, data_file, tmp_path / "r", lora_r=4, lora_target="nope_proj"))


@pytest.mark.parametrize("damage", ["model_type", "safetensors"])
def test_unknown_architecture_or_corrupt_weights_is_one_line(tiny_dir, data_file, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    if damage == "model_type":
        conf = json.loads((bad / "config.json").read_text())
        conf["model_type"] = "no_such_architecture"
        (bad / "config.json").write_text(json.dumps(conf))
    else:
        w = bad / "model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(ConfigError, match=r"^cannot load model '.*bad': ") as info:
        train(_cfg(bad, data_file, tmp_path / "r"))
    assert "\n" not in str(info.value)


def test_a_failed_run_leaves_no_empty_run_directory(tiny_dir, tmp_path):
    with pytest.raises(Exception):
        train(_cfg(tiny_dir, tmp_path / "missing.jsonl", tmp_path / "new" / "run"))
    assert not (tmp_path / "new" / "run").exists()


def test_cli_errors_are_one_line_with_exit_2(tiny_dir, data_file, tmp_path, capsys):
    from preftune.cli.main import main

    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["train", "--model", str(tiny_dir), "--data", str(data_file), "--output", str(f), "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("preftune train: error: --output")


# ----------------------------------------------------------------------------- what a TRL user expects


def test_learning_rate_metric_and_eval_at_the_end_without_eval_every(tiny_dir, data_file, tmp_path):
    res = train(_cfg(tiny_dir, data_file, tmp_path / "r", max_steps=3, eval_data=str(data_file), lr_schedule="constant"))
    assert all(h["learning_rate"] == h["lr"] == 5e-3 for h in res.history)
    assert [e["step"] for e in res.eval_history] == [3]  # evaluated once, at the end
    assert "eval/loss" in res.history[-1]


def test_kto_trains_on_paired_data_split_as_trl_does(tiny_dir, data_file, tmp_path):
    res = train(_cfg(tiny_dir, data_file, tmp_path / "kto", loss="kto", loss_params={"beta": 0.5}, max_steps=2))
    info = json.loads((tmp_path / "kto" / "run_info.json").read_text())
    assert info["data_kind"] == "unpaired" and info["train_examples"] == 2 * 32
    assert res.history[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # KTO at the reference: 1 - sigmoid(0)


def test_logits_metrics_are_trls_mean_logit_over_response_tokens():
    """``logits/chosen`` (TRL): the policy's logits averaged over the chosen responses' tokens and the vocabulary.
    The chunked head's logit sums equal a full-logits computation, in any layout."""
    from preftune.data.collate import collate_pairs
    from preftune.data.packed import collate_pairs_packed
    from preftune.data.types import TokenizedPair
    from preftune.models import build_model
    from preftune.models.logprobs import sequence_logps
    from preftune.train.forward import logit_metrics
    from preftune.kinds import get_kind

    model = build_model(32, hidden_size=16, num_layers=1, num_heads=2)
    items = [TokenizedPair([5, 6, 7][: 2 + i % 2], [9, 10, 11, 2][: 2 + i % 3], [14, 15, 2][: 1 + i % 3], row=i)
             for i in range(4)]
    batch = collate_pairs(items, 0)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    want = {}
    for name, rows in (("chosen", range(4)), ("rejected", range(4, 8))):
        tot, n = 0.0, 0
        for s in rows:
            t = batch.seq_mask[s].nonzero().flatten()
            tot += float(logits[s, t - 1].sum())
            n += len(t)
        want[f"logits/{name}"] = tot / (n * 32)
    for collate in (collate_pairs, collate_pairs_packed):
        b = collate(items, 0)
        out = sequence_logps(model, b, chunk_size=3)
        got = logit_metrics(out, get_kind("pair").groups(b))
        for k, v in want.items():
            assert float(got[k]) == pytest.approx(v, rel=1e-5, abs=1e-6), (collate.__name__, k)
    full = sequence_logps(model, batch, full_logits=True)
    assert float(logit_metrics(full, get_kind("pair").groups(batch))["logits/chosen"]) == \
        pytest.approx(want["logits/chosen"], rel=1e-5, abs=1e-6)


def test_trainer_logs_logits_metrics(tiny_dir, data_file, tmp_path):
    res = train(_cfg(tiny_dir, data_file, tmp_path / "r", max_steps=1))
    assert {"logits/chosen", "logits/rejected"} <= set(res.history[0])


def test_precomputed_reference_refuses_what_it_cannot_look_up(tiny_dir, data_file, tmp_path):
    """Found on the way: a row-keyed cache cannot tell apart the two halves of a split pair, nor score the
    mismatched pairs KTO makes per batch; both trained silently against wrong reference values before."""
    with pytest.raises(ConfigError, match="row 1 holds more than one example .*use --ref model"):
        train(_cfg(tiny_dir, data_file, tmp_path / "split", loss="kto", ref="precomputed"))
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0}
            for i, r in enumerate(arithmetic_rows(16, seed=3))]
    unpaired = _write(tmp_path / "u.jsonl", rows)
    with pytest.raises(ConfigError, match="needs reference log-probs of mismatched prompt/completion pairs"):
        train(_cfg(tiny_dir, unpaired, tmp_path / "kl", loss="kto", ref="precomputed"))
    res = train(_cfg(tiny_dir, unpaired, tmp_path / "ok", loss="kto", ref="precomputed", max_steps=1,
                     loss_params={"beta": 0.5, "kl_estimate": "none"}))
    assert res.history[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy = cached reference


def test_eval_data_of_another_kind_is_one_line(tiny_dir, data_file, tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2", "label": True}, {"prompt": "1+2=", "completion": "4", "label": False}]
    unpaired = _write(tmp_path / "eval_unpaired.jsonl", rows)
    with pytest.raises(ConfigError) as info:
        train(_cfg(tiny_dir, data_file, tmp_path / "r", eval_data=str(unpaired)))
    msg = str(info.value)
    assert "eval_unpaired.jsonl" in msg and "unpaired" in msg and "\n" not in msg
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
