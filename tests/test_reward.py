"""Reward models (issue 14, core): the Bradley-Terry loss in closed form, first-step parity with TRL's
RewardTrainer, training through the trainer's loop (another forward), final/ as a sequence classifier, the
scoring interface, and refusals."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import get
from preftune.reward import PairScores, RewardModel, train_reward_model
from preftune.train import TrainConfig, train

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_bradley_terry_closed_form_with_margin_and_centring():
    rc, rr, m = [1.0, -0.5, 2.0], [0.0, 0.5, 2.5], [0.5, 0.0, -1.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    plain = get("bradley_terry")(PairScores(T(rc), T(rr)))
    torch.testing.assert_close(plain.loss, T([-math.log(sig(a - b)) for a, b in zip(rc, rr)]))
    out = get("bradley_terry", center_rewards_coefficient=0.1)(PairScores(T(rc), T(rr), margin=T(m)))
    want = [-math.log(sig(a - b - d)) + 0.1 * (a + b) ** 2 for a, b, d in zip(rc, rr, m)]
    torch.testing.assert_close(out.loss, T(want))
    assert out.metrics["accuracy"].item() == pytest.approx(1 / 3)
    assert out.metrics["margin"].item() == pytest.approx((1.0 - 1.0 - 0.5) / 3)
    assert out.metrics["min_reward"].item() == -0.5 and out.metrics["max_reward"].item() == 2.5
    # the gradient raises the chosen reward and lowers the rejected one
    c, r = T(rc).requires_grad_(), T(rr).requires_grad_()
    gc, gr = torch.autograd.grad(get("bradley_terry")(PairScores(c, r)).loss.sum(), [c, r])
    assert bool((gc < 0).all()) and bool((gr > 0).all())


PAIRS = [("The capital of France is", " Paris.", " Berlin, of course."),
         ("Two plus two equals", " four.", " five."),
         ("Water boils at", " one hundred degrees.", " zero degrees, always and everywhere."),
         ("The sky is", " blue.", " green.")]
MARGINS = [0.5, 0.0, 1.0, -0.25]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    from preftune.models.tiny import build_model, build_tokenizer

    tmp = tmp_path_factory.mktemp("rm")
    tok = build_tokenizer([p + c for p, c, _ in PAIRS] * 5 + [p + r for p, _, r in PAIRS] * 5, vocab_size=300)
    build_model(len(tok), hidden_size=32, num_layers=2, num_heads=2, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(tmp / "lm")
    tok.save_pretrained(tmp / "lm")
    torch.manual_seed(0)  # the new score head
    rm = AutoModelForSequenceClassification.from_pretrained(tmp / "lm", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp / "rm")
    tok.save_pretrained(tmp / "rm")
    return tmp / "rm"


@pytest.mark.bench
def test_first_step_loss_matches_trl_reward_trainer(rm_dir, tmp_path):
    """TRL tokenizes prompt + response (+ EOS) itself; preftune scores the very same ids through its forward
    and objective. Margin column and reward centring on."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from preftune.data.collate import collate_pairs
    from preftune.data.types import TokenizedPair
    from preftune.reward import ScoreForward
    from preftune.suppliers.base import MicroBatch

    tok = AutoTokenizer.from_pretrained(rm_dir)
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                                     "rejected": [r for _, _, r in PAIRS], "margin": MARGINS})
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], per_device_train_batch_size=len(PAIRS),
                        use_cpu=True, bf16=False, fp16=False, center_rewards_coefficient=0.05, save_strategy="no",
                        dataset_num_proc=None, logging_steps=1)
    trainer = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(rm_dir), args=args,
                            train_dataset=ds, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(rows)
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, copy.copy(batch)).item()

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    items = [TokenizedPair([], r["chosen_ids"], r["rejected_ids"], row=i, extras={"margin": m})
             for i, (r, m) in enumerate(zip(rows, MARGINS))]
    obj = get("bradley_terry", center_rewards_coefficient=0.05)
    with torch.no_grad():
        stats = ScoreForward()(MicroBatch(model, None, obj, collate_pairs(items, tok.pad_token_id)))
    got = obj(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert abs(want - math.log(2)) > 1e-3  # a random head: not trivially log 2, so the comparison can fail


def _data(tmp_path, n=32):
    from conftest import arithmetic_rows
    rows = arithmetic_rows(n, seed=2)
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p, rows


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output=str(out), batch_size=8, lr=2e-3, max_steps=30,
                progress=False, seed=0, lr_schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def test_reward_model_trains_saves_a_sequence_classifier_and_scores(tiny_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data, rows = _data(tmp_path)
    res = train_reward_model(_cfg(tiny_dir, data, tmp_path / "rm", eval_data=str(data), max_steps=120, lr=3e-3))
    first, last = res.history[0], res.history[-1]
    assert {"accuracy", "margin", "rewards/chosen", "rewards/rejected", "mean_reward"} <= set(first)
    assert res.eval_history[-1]["accuracy"] >= 0.9  # on the training pairs: the model learned them
    assert last["loss"] < first["loss"] - 0.2 and res.eval_history[-1]["loss"] < first["loss"] - 0.2
    info = json.loads((tmp_path / "rm" / "run_info.json").read_text())
    assert info["objective"] == "bradley_terry" and info["reference"] == "none"
    m = AutoModelForSequenceClassification.from_pretrained(res.final_dir)  # plain transformers loads final/
    assert m.config.num_labels == 1
    rm = RewardModel.from_pretrained(res.final_dir)
    good = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    bad = rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert good.shape == (len(rows),) and float((good > bad).float().mean()) >= 0.9


def test_reward_model_resume_is_bitwise(tiny_dir, tmp_path):
    import shutil

    data, _ = _data(tmp_path)
    kw = dict(max_steps=6, save_every=3)
    full = train_reward_model(_cfg(tiny_dir, data, tmp_path / "a", **kw))
    run = tmp_path / "b"
    train_reward_model(_cfg(tiny_dir, data, run, **kw))
    shutil.rmtree(run / "checkpoints" / "step-6")
    shutil.rmtree(run / "final")
    resumed = train_reward_model(_cfg(tiny_dir, data, run, resume=True, **kw))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_reward_objective_and_layout_are_refused_where_they_do_not_apply(tiny_dir, tmp_path):
    data, _ = _data(tmp_path, 8)
    with pytest.raises(ConfigError, match="needs scores, which `preftune train` does not compute"):
        train(_cfg(tiny_dir, data, tmp_path / "p", loss="bradley_terry"))
    with pytest.raises(ConfigError, match=r"layout 'packed' is not available to this model's forward .*"
                                          r"set --layout padded"):
        train_reward_model(_cfg(tiny_dir, data, tmp_path / "q", layout="packed"))
    with pytest.raises(ConfigError, match="loss 'ipo' trains a policy, not a reward model"):
        train_reward_model(_cfg(tiny_dir, data, tmp_path / "r", loss="ipo"))


def test_reward_model_with_lora_keeps_the_score_head_trainable(tiny_dir, tmp_path):
    data, _ = _data(tmp_path)
    res = train_reward_model(_cfg(tiny_dir, data, tmp_path / "lora", lora_r=4, max_steps=20, lr=5e-3))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    from transformers import AutoModelForSequenceClassification
    AutoModelForSequenceClassification.from_pretrained(res.final_dir)  # merged, loads plainly


def test_rm_cli_trains_and_scores(tiny_dir, tmp_path, capsys):
    from preftune.cli.main import main

    data, rows = _data(tmp_path, 16)
    out = tmp_path / "rm"
    rc = main(["rm", "train", "--model", str(tiny_dir), "--data", str(data), "--output", str(out), "--max-steps", "3",
               "--batch-size", "8", "--center-rewards-coefficient", "0.01", "--no-progress"])
    assert rc == 0 and (out / "final" / "config.json").exists()
    assert json.loads((out / "run_info.json").read_text())["objective_config"] == {"center_rewards_coefficient": 0.01}
    score_in = tmp_path / "rows.jsonl"
    score_in.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["chosen"], "id": i}) + "\n"
                                for i, r in enumerate(rows[:5])))
    rc = main(["rm", "score", "--model", str(out / "final"), "--data", str(score_in), "--output",
               str(tmp_path / "scored.jsonl")])
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert rc == 0 and [r["id"] for r in scored] == list(range(5)) and all(isinstance(r["score"], float) for r in scored)
    rm = RewardModel.from_pretrained(out / "final")
    assert scored[0]["score"] == pytest.approx(float(rm.score([rows[0]["prompt"]], [rows[0]["chosen"]])[0]), rel=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    capsys.readouterr()
    rc = main(["rm", "score", "--model", str(out / "final"), "--data", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"preftune rm: error: {bad}, row 1, field 'response': is missing or not a non-empty string"
