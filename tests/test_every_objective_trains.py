"""Every registered objective is reachable through the trainer with its defaults, on the data
kind it declares, and takes a finite first step whose value is known where the objective
starts at the reference."""
from __future__ import annotations

import math

import pytest
import torch

from preftune.data.types import PairExample, RankedExample, UnpairedExample
from preftune.objectives import available, get
from preftune.train import TrainConfig, train

from conftest import arithmetic_rows


def _examples(kind: str):
    rows = arithmetic_rows(8, seed=5)
    if kind == "pair":
        # margin (MADPO, GPO, ...) and a preference strength (P67's reward-model objectives; some pairs weak)
        return [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i,
                            extras={"margin": 1.0 + i % 2, "strength": 0.8 - 0.5 * (i % 3), "strength_std": 0.1})
                for i, r in enumerate(rows)]
    if kind == "unpaired":
        return [UnpairedExample(r["prompt"], r["chosen"] if i % 2 else r["rejected"], bool(i % 2), row=i)
                for i, r in enumerate(rows)]
    return [RankedExample(r["prompt"], (r["chosen"], r["rejected"], "0"), (2.0, 1.0, 0.0), row=i)
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("name", available())
def test_objective_trains_one_step_through_the_trainer(name, tiny, tiny_dir, tmp_path):
    import copy

    model, tok = tiny
    obj = get(name)
    # P60 distillation needs a teacher with the student's tokenizer: the student itself (KL 0, advantage 0)
    teachers = {k: str(tiny_dir) for k in ("teacher_model", "teacher_ref_model") if k in obj.hyperparameters()}
    cfg = TrainConfig(output=str(tmp_path / name), loss=name, loss_params=teachers, max_steps=2, batch_size=4,
                      lr=1e-3, progress=False, group_by_length=False, save_final=False)
    if "scores" in obj.needs:  # a reward-model objective: the same loop with the reward model's forward
        from preftune.reward import train_reward_model
        from preftune.reward.model import load_reward_model

        model = load_reward_model(str(tiny_dir), tokenizer=tok)
        res = train_reward_model(cfg, model=copy.deepcopy(model), tokenizer=tok, train_examples=_examples(obj.kind))
    else:
        res = train(cfg, model=copy.deepcopy(model), tokenizer=tok, train_examples=_examples(obj.kind))
    first = res.history[0]
    assert math.isfinite(first["loss"]) and math.isfinite(first["grad_norm"])
    assert res.steps == 2
    if name == "dpo":
        assert first["loss"] == pytest.approx(math.log(2), rel=1e-5)
    if teachers:  # distilling a model into itself: zero loss and no gradient (the limit case)
        assert first["loss"] == pytest.approx(0.0, abs=1e-5)
        return
    if name == "rejected_floor":  # inactive until the rejected log-ratio falls below -tau: no gradient at start
        assert first["loss"] == 0.0
        return
    params_moved = any(not torch.equal(a, b) for a, b in zip(model.parameters(), res.model.parameters()))
    assert params_moved, f"{name}: two optimizer steps left every weight unchanged"
