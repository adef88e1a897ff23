"""P31 GPO: SPPO's squared loss on GPM preference scores, in closed form; its two score sources; its minimiser
and gradient; refusals; and the scores taken from a GPM's score matrix."""
from __future__ import annotations

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import available, get
from preftune.objectives.base import PairStats

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def _stats(pc, pr, rc, rr, **kw):
    return PairStats(T(pc), T(pr), T(rc), T(rr), **{k: T(v) for k, v in kw.items()})


def test_registered_with_its_paper_section():
    assert "gpo" in available()
    o = get("gpo")
    assert o.beta == 0.1 and o.source == "margin" and o.needs == ("margin",) and o.needs_reference
    assert "sec. 5" in o.paper and get("gpo", source="scores").needs == ("score_chosen", "score_rejected")


def test_closed_form_with_score_columns():
    # h_w = -1 - (-1.5) = 0.5, h_l = -3 - (-2) = -1; eta = 1/0.5 = 2
    st = _stats([-1.0, 0.0], [-3.0, -1.0], [-1.5, 0.0], [-2.0, -1.0],
                score_chosen=[0.3, -0.2], score_rejected=[-0.4, 0.1])
    out = get("gpo", beta=0.5, source="scores")(st)
    want = [(0.5 - 2 * 0.3) ** 2 + (-1.0 - 2 * -0.4) ** 2,   # 0.01 + 0.04
            (0.0 - 2 * -0.2) ** 2 + (0.0 - 2 * 0.1) ** 2]    # 0.16 + 0.04
    torch.testing.assert_close(out.loss, T(want))
    assert float(out.metrics["gpo/score_chosen"]) == pytest.approx(0.05)
    assert float(out.metrics["rewards/chosen"]) == pytest.approx(0.5 * (0.5 + 0.0) / 2)


def test_margin_source_halves_the_pair_score_and_equals_sppo_hard_at_one():
    st = _stats([-1.0, 0.5], [-2.0, -1.0], [-1.2, 0.0], [-1.5, -1.0], margin=[0.6, 1.0])
    out = get("gpo", beta=0.25)(st)
    hw, hl, eta = [0.2, 0.5], [-0.5, 0.0], 4.0
    want = [(hw[i] - eta * m / 2) ** 2 + (hl[i] + eta * m / 2) ** 2 for i, m in enumerate([0.6, 1.0])]
    torch.testing.assert_close(out.loss, T(want))
    hard = _stats([-1.0, 0.5], [-2.0, -1.0], [-1.2, 0.0], [-1.5, -1.0], margin=[1.0, 1.0])
    torch.testing.assert_close(get("gpo", beta=0.25)(hard).loss, get("sppo_hard", beta=0.25)(hard).loss)


def test_minimum_at_log_ratio_eta_times_score_and_gradient_direction():
    s_w, s_l, beta = 0.3, -0.3, 0.1
    # at h = eta * s (the multiplicative-weights update) the loss is zero
    at_min = _stats([3.0], [-3.0], [0.0], [0.0], score_chosen=[s_w], score_rejected=[s_l])
    assert float(get("gpo", beta=beta, source="scores")(at_min).loss) == pytest.approx(0.0, abs=1e-12)
    # below the target the chosen log-prob is pushed up, above it the rejected one is pushed down
    pc, pr = T([1.0]).requires_grad_(), T([-5.0]).requires_grad_()
    st = PairStats(pc, pr, T([0.0]), T([0.0]), score_chosen=T([s_w]), score_rejected=T([s_l]))
    gc, gr = torch.autograd.grad(get("gpo", beta=beta, source="scores")(st).loss.sum(), [pc, pr])
    assert float(gc) == pytest.approx(2 * (1.0 - 3.0)) and float(gc) < 0
    assert float(gr) == pytest.approx(2 * (-5.0 + 3.0)) and float(gr) < 0


def test_scores_are_targets_without_gradient_and_weights_multiply():
    sc = T([0.5]).requires_grad_()
    st = PairStats(T([0.0]), T([0.0]), T([0.0]), T([0.0]), score_chosen=sc, score_rejected=T([0.0]),
                   weight=T([3.0]))
    out = get("gpo", beta=1.0, source="scores")(st)
    assert float(out.loss) == pytest.approx(3.0 * 0.25)
    assert not out.loss.requires_grad


def test_refusals():
    st = _stats([0.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="score_chosen"):
        get("gpo", source="scores")(st)
    with pytest.raises(ValueError, match="margin"):
        get("gpo")(st)
    with pytest.raises(ValueError, match="reference"):
        get("gpo")(PairStats(T([0.0]), T([0.0]), margin=T([1.0])))
    with pytest.raises(ConfigError, match="beta"):
        get("gpo", beta=0.0)
    with pytest.raises(ConfigError, match="source"):
        get("gpo", source="win_rate")


def test_scores_from_a_gpm_score_matrix():
    from preftune.reward.gpm import policy_scores, score_matrix

    # three responses on the unit circle 120 degrees apart: a perfect cycle, each beats one and loses to one,
    # so every response scores 0 against the uniform policy over them and GPO's target log-ratio is 0
    ang = torch.tensor([0.0, 2.0944, 4.1888], dtype=torch.float64)
    v = torch.stack([ang.cos(), ang.sin()], -1)
    s = policy_scores(score_matrix(v))
    torch.testing.assert_close(s, torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    # add a fourth response (at -60 degrees): the cycle no longer balances, and each row mean is that response's target
    v4 = torch.cat([v, torch.tensor([[0.5, -0.8660254]], dtype=torch.float64)])
    S = score_matrix(v4)
    s4 = policy_scores(S)
    torch.testing.assert_close(s4, S.sum(1) / 4)
    st = PairStats(T([0.0]), T([0.0]), T([0.0]), T([0.0]), score_chosen=s4[3:], score_rejected=s4[:1])
    out = get("gpo", beta=0.5, source="scores")(st)
    torch.testing.assert_close(out.loss, (2 * s4[3:]) ** 2 + (2 * s4[:1]) ** 2)


@pytest.mark.slow
def test_trains_through_the_trainer_on_score_columns(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import arithmetic_rows
    from preftune.data.types import PairExample
    from preftune.train import TrainConfig, train

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    ex = [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i,
                      extras={"score_chosen": 0.3, "score_rejected": -0.2})
          for i, r in enumerate(arithmetic_rows(4, seed=5))]
    cfg = TrainConfig(output=str(tmp_path / "gpo"), loss="gpo", loss_params={"beta": 0.5, "source": "scores"},
                      max_steps=8, batch_size=4, lr=3e-3, progress=False, group_by_length=False, save_final=False)
    res = train(cfg, model=model, tokenizer=tok, train_examples=ex)
    # step 1: the policy is the reference (h = 0), so the loss is (s_w / beta)^2 + (s_l / beta)^2
    assert res.history[0]["loss"] == pytest.approx((0.3 / 0.5) ** 2 + (0.2 / 0.5) ** 2, rel=1e-5)
    # then the log-ratios move to the fixed point h = eta * s: the implicit rewards beta * h approach s itself
    last = res.history[-1]
    assert last["rewards/chosen"] == pytest.approx(0.3, abs=0.05)
    assert -0.3 < last["rewards/rejected"] < -0.1
    assert last["loss"] < 0.1 * res.history[0]["loss"]
