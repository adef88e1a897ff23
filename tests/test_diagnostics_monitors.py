"""Diagnostics as training monitors and as the ``preftune diagnose`` / ``data filter`` CLIs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.data.types import TokenizedPair
from preftune.diagnostics.monitors import MONITORS, make_monitors
from preftune.errors import ConfigError
from preftune.models.tiny import build_model
from preftune.reference import FrozenModel, NoReference
from preftune.callbacks import TrainState

V = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probe_pairs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def toks(k):
        return torch.randint(3, V, (k,), generator=g).tolist()

    return [TokenizedPair(toks(6 + i % 3), toks(3 + i % 5), toks(4 + i % 4), row=i) for i in range(n)]


def make_state(reference="frozen"):
    model = build_model(V, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    ref = FrozenModel.copy_of(model) if reference == "frozen" else NoReference()
    return TrainState(config=None, model=model, tokenizer=None, reference=ref, objective=None,
                      output_dir=Path("."), probe=probe_pairs())


def test_monitors_run_every_n_steps_with_namespaced_metrics():
    state = make_state()
    monitors = make_monitors(list(MONITORS), every=2,
                             entanglement={"max_pairs": 4}, length_bias={"sample_prompts": 2, "max_new_tokens": 4})
    for m in monitors:
        m.on_train_start(state)
    state.step = 1
    assert all(m.on_step_end(state, {}) is None for m in monitors)
    state.step = 2
    out = {}
    for m in monitors:
        res = m.on_step_end(state, {})
        assert res and all(k.startswith(f"diagnostics/{m.name}/") for k in res)
        assert all(isinstance(v, float) for v in res.values())
        out.update(res)
    # the policy still equals its frozen reference: same accuracy, no displacement
    assert out["diagnostics/ranking_accuracy/accuracy"] == out["diagnostics/ranking_accuracy/ref_accuracy"]
    assert abs(out["diagnostics/logp_tracking/chosen_change"]) < 1e-5
    assert out["diagnostics/logp_tracking/against"] == 0.0
    assert out["diagnostics/length_bias/sample_length_ratio"] == 1.0
    assert out["diagnostics/topk_entropy/warning"] == 0.0
    assert 0.0 <= out["diagnostics/entanglement/entangled_frac"] <= 1.0
    assert state.model.training  # train mode restored


def test_monitors_see_displacement_after_a_step_and_work_reference_free():
    state = make_state()
    (logp,) = make_monitors(["logp_tracking"], every=1)
    with torch.no_grad():  # a new head: the policy departs from its frozen reference
        state.model.lm_head.weight.mul_(0).add_(torch.randn_like(state.model.lm_head.weight))
    state.step = 1
    res = logp.on_step_end(state, {})
    assert res["diagnostics/logp_tracking/chosen_change"] != 0.0
    free = make_state("none")
    mons = make_monitors(["ranking_accuracy", "logp_tracking", "length_bias"], every=1,
                         length_bias={"sample_prompts": 0})
    for m in mons:
        m.on_train_start(free)
    free.step = 1
    rk, lp, lb = (m.on_step_end(free, {}) for m in mons)
    assert "diagnostics/ranking_accuracy/ref_accuracy" not in rk
    assert lp["diagnostics/logp_tracking/against"] == 1.0 and lp["diagnostics/logp_tracking/chosen_change"] == 0.0
    assert set(lb) == {"diagnostics/length_bias/seconds"}


def test_make_monitors_validates_names():
    with pytest.raises(ConfigError, match="unknown monitor.*available: ranking_accuracy"):
        make_monitors(["ranking_acc"], every=5)
    with pytest.raises(ConfigError, match="monitor_every"):
        make_monitors(["ches"], every=0)


# ----------------------------------------------------------------------------- end to end, on files


TEXTS = ["What is two plus two?", "Four.", "It is five, surely.", "Name a colour.", "Blue.",
         "I will not answer that.", "Say hello.", "Hello there!", "No."] * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from preftune.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=200, hidden_size=32,
                     num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in
            [("What is two plus two?", "Four.", "It is five, surely."), ("Name a colour.", "Blue.", "No."),
             ("Say hello.", "Hello there!", "I will not answer that."), ("What is two plus two?", "Four.", "No."),
             ("Name a colour.", "Blue.", "I will not answer that."), ("Say hello.", "Hello there!", "No."),
             ("Say hello.", "Hello there!", "Four."), ("Name a colour.", "Blue.", "Hello there!")]]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preftune_diagnose_writes_json_html_and_plots(tiny_dir, data_file, tmp_path):
    from preftune.cli.main import main

    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", str(tiny_dir), "--data", str(data_file), "--output", str(out),
               "--max-pairs", "6", "--sample-prompts", "2", "--max-new-tokens", "4", "--entanglement-pairs", "3",
               "--checkpoints", f"{tiny_dir},{tiny_dir}"])
    assert rc == 0
    res = json.loads((out / "diagnostics.json").read_text())
    assert res["pairs"] == 6
    assert res["ranking_accuracy"]["summary"]["accuracy"] == res["ranking_accuracy"]["summary"]["ref_accuracy"]
    assert len(res["ches"]["per_pair"]["ches"]) == 6 and len(res["entanglement"]["per_pair"]["inner"]) == 3
    assert res["topk"]["across_checkpoints"]["warning"] is False
    html = (out / "report.html").read_text()
    for png in ("ranking_accuracy.png", "margins.png", "ches.png", "entanglement.png", "topk.png"):
        assert (out / png).stat().st_size > 1000 and png in html
    assert main(["diagnose", "--model", str(tiny_dir), "--data", str(data_file), "--output", str(out),
                 "--only", "ches,nonsense"]) == 2


def test_preftune_data_filter_drops_highest_ches(tiny_dir, data_file, tmp_path):
    from preftune.cli.main import main
    from preftune.data import load_examples, tokenize_examples
    from preftune.diagnostics import ches_scores
    from preftune.models.loading import load_model, load_tokenizer

    out = tmp_path / "kept.jsonl"
    assert main(["data", "filter", str(data_file), "--model", str(tiny_dir), "--output", str(out),
                 "--drop", "0.25"]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 6
    examples = load_examples(str(data_file)).examples
    scores = ches_scores(load_model(str(tiny_dir)), tokenize_examples(examples, load_tokenizer(str(tiny_dir))).items)
    top2 = set(sorted(range(8), key=lambda i: -scores.scores[i])[:2])
    expected = [(e.prompt, e.chosen, e.rejected) for i, e in enumerate(examples) if i not in top2]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in kept] == expected


def test_trainer_writes_monitor_metrics(tiny_dir, data_file, tmp_path):
    from preftune.train import TrainConfig, train

    cfg = TrainConfig(model=str(tiny_dir), data=str(data_file), output=str(tmp_path / "run"), max_steps=4,
                      batch_size=4, lr=1e-3, monitor=["ranking_accuracy", "ches", "topk_entropy", "logp_tracking"],
                      monitor_every=2, progress=False)
    train(cfg)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in recs if "step" in r}
    assert "diagnostics/ches/mean" in by_step[2] and "diagnostics/ches/mean" not in by_step[3]
    assert 0.0 <= by_step[4]["diagnostics/ranking_accuracy/accuracy"] <= 1.0
    assert by_step[4]["diagnostics/logp_tracking/chosen_change"] != 0.0  # it has trained
