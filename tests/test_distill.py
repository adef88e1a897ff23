"""P60 (DCKD, ADPA): the losses against hand computations, their limits and gradient directions, the teacher
supplier against a plain full-logits forward, its refusals, and tiny end-to-end runs with an effect."""
from __future__ import annotations

import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import PairStats, get
from preftune.objectives.distill import expected_advantage, forward_kl, token_advantage

from conftest import arithmetic_rows

S = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]       # student logits at two positions, vocabulary of 3
T = [[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]]       # teacher (aligned) logits
R = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]        # teacher's reference logits


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl_by_hand(s, t):  # sum_a p_t(a) log(p_t(a) / p_s(a))
    ps, pt = softmax(s), softmax(t)
    return sum(q * math.log(q / p) for p, q in zip(ps, pt))


def adv_by_hand(s, t, r, beta):  # sum_a p_s(a) * beta * log(p_t(a) / p_r(a))
    ps, pt, pr = softmax(s), softmax(t), softmax(r)
    return sum(p * beta * math.log(q / w) for p, q, w in zip(ps, pt, pr))


def test_forward_kl_and_expected_advantage_match_hand_computation():
    got = forward_kl(torch.tensor(S), torch.tensor(T))
    assert got.tolist() == pytest.approx([kl_by_hand(s, t) for s, t in zip(S, T)], rel=1e-5)
    got = expected_advantage(torch.tensor(S), torch.tensor(T), torch.tensor(R), beta=0.5)
    assert got.tolist() == pytest.approx([adv_by_hand(s, t, r, 0.5) for s, t, r in zip(S, T, R)], rel=1e-5, abs=1e-6)
    a = token_advantage(torch.tensor(T), torch.tensor(R), beta=2.0)[0].tolist()
    pt, pr = softmax(T[0]), softmax(R[0])
    assert a == pytest.approx([2.0 * math.log(q / w) for q, w in zip(pt, pr)], rel=1e-5)


def test_limits_student_equals_teacher_and_teacher_equals_its_reference():
    z = torch.randn(4, 7)
    assert forward_kl(z, z).abs().max().item() < 1e-6                       # no distillation loss
    assert expected_advantage(torch.randn(4, 7), z, z).abs().max().item() < 1e-6  # A = 0 everywhere
    # A is invariant to a shift of either model's logits (log-softmax), so a shifted copy is the same model
    assert expected_advantage(torch.randn(4, 7), z, z + 3.0).abs().max().item() < 1e-5


def test_gradient_directions():
    s = torch.tensor(S[0], requires_grad=True)
    forward_kl(s, torch.tensor(T[0])).backward()
    # d KL / d z_s = p_s - p_t: the token the teacher prefers more (index 1) is pushed up, the others down
    ps, pt = softmax(S[0]), softmax(T[0])
    assert s.grad.tolist() == pytest.approx([a - b for a, b in zip(ps, pt)], abs=1e-6)
    assert s.grad[1] < 0 and s.grad[0] > 0
    s = torch.tensor(S[0], requires_grad=True)
    (-expected_advantage(s, torch.tensor(T[0]), torch.tensor(R[0]))).backward()
    adv = [math.log(q / w) for q, w in zip(pt, softmax(R[0]))]
    best, worst = max(range(3), key=adv.__getitem__), min(range(3), key=adv.__getitem__)
    assert s.grad[best] < 0 < s.grad[worst]   # descent raises the highest-advantage token, lowers the lowest


def _pair_stats(kc, kr, mc, mr, key):
    B = kc.shape[0]
    return PairStats(torch.zeros(B), torch.zeros(B), extras={
        f"chosen_{key}": kc, f"rejected_{key}": kr, "chosen_teacher_mask": mc, "rejected_teacher_mask": mr})


def test_dckd_objective_reduces_by_batch_token_mean_and_by_sequence():
    kc = torch.tensor([[0.2, 0.4, 9.0], [1.0, 0.0, 0.0]])
    kr = torch.tensor([[0.5, 0.0, 0.0], [0.1, 0.3, 0.2]])
    mc = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)   # the 9.0 is padding: never counted
    mr = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    out = get("dckd", chosen_weight=2.0, rejected_weight=0.5)(_pair_stats(kc, kr, mc, mr, "teacher_kl"))
    batch = 2.0 * (0.2 + 0.4 + 1.0) / 3 + 0.5 * (0.5 + 0.1 + 0.3 + 0.2) / 4
    assert out.loss.tolist() == pytest.approx([batch, batch], rel=1e-6)
    out = get("dckd", normalize="sequence")(_pair_stats(kc, kr, mc, mr, "teacher_kl"))
    assert out.loss.tolist() == pytest.approx([(0.2 + 0.4) / 2 + 0.5, 1.0 + (0.1 + 0.3 + 0.2) / 3], rel=1e-6)


def test_adpa_objective_is_minus_beta_times_expected_advantage_on_the_chosen_sides():
    ac = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    ar = torch.tensor([[0.5, 0.5], [-3.0, 1.0]])
    m = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    st = _pair_stats(ac, ar, m, m, "expected_advantage")
    rej = get("adpa", beta=0.2)(st).loss
    assert rej.tolist() == pytest.approx([-0.2 * (0.5 + 0.5 - 3.0) / 3] * 2, rel=1e-6)
    both = get("adpa", beta=0.2, on="both", normalize="sequence")(st).loss
    assert both.tolist() == pytest.approx([-0.2 * ((1.0 - 1.0) / 2 + 0.5), -0.2 * (2.0 - 3.0)], rel=1e-6)


def test_bad_hyperparameters_and_missing_teacher_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="on="):
        get("adpa", on="prompt")
    with pytest.raises(ConfigError, match="beta"):
        get("adpa", beta=0.0)
    from preftune.suppliers.teacher import _paths

    with pytest.raises(ConfigError, match="--teacher-model DIR"):
        _paths(get("dckd"))
    with pytest.raises(ConfigError, match="--teacher-ref-model DIR"):
        _paths(get("adpa", teacher_model="somewhere"))
    from preftune.objectives.compose import build

    both = build("sft:1,dckd:1,adpa:1", teacher_model="t", teacher_ref_model="r")  # a composition's terms share them
    assert _paths(both) == {"teacher_model": "t", "teacher_ref_model": "r"}
    with pytest.raises(ConfigError, match="one teacher"):
        _paths(build("dckd:1,adpa:1", teacher_ref_model="r").__class__(
            [(1.0, get("dckd", teacher_model="a")), (1.0, get("adpa", teacher_model="b", teacher_ref_model="r"))]))


# ----------------------------------------------------------------------------- the supplier, on tiny models


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    """The tiny student (tests' tiny_dir), a larger teacher and a teacher reference with its tokenizer."""
    from transformers import AutoTokenizer

    from preftune.models.tiny import build_model

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name, seed in (("teacher", 11), ("teacher_ref", 12)):
        m = build_model(len(tok), hidden_size=48, num_layers=2, num_heads=4, seed=seed,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        m.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        out[name] = root / name
    other = build_model(len(tok) + 5, hidden_size=16, num_layers=1, num_heads=2, seed=3)
    other.save_pretrained(root / "other", safe_serialization=True)
    out["other"] = root / "other"
    return out


def _batch(tok, rows, layout="auto"):
    from preftune.data.types import TokenizedPair
    from preftune.kinds import get_kind

    items = [TokenizedPair(tok(r["prompt"]).input_ids, tok(r["chosen"]).input_ids + [tok.eos_token_id],
                           tok(r["rejected"]).input_ids + [tok.eos_token_id], row=i) for i, r in enumerate(rows)]
    return get_kind("pair").collator(layout, tok.pad_token_id)(items)


def test_supplier_matches_a_plain_full_logits_forward(tiny_dir, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune.models.logprobs import sequence_logps
    from preftune.suppliers.base import MicroBatch
    from preftune.suppliers.teacher import TeacherTerms

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_dir)
    teacher = AutoModelForCausalLM.from_pretrained(models["teacher"])
    tref = AutoModelForCausalLM.from_pretrained(models["teacher_ref"])
    obj = get("adpa", teacher_model=str(models["teacher"]), teacher_ref_model=str(models["teacher_ref"]))
    sup = TeacherTerms()
    sup.prepare(obj, None, [], [], tok.pad_token_id, "cpu")

    def supplied(batch):
        step = MicroBatch(student, None, obj, batch, chunk_size=5)  # small chunks: positions cross chunk borders
        step.policy = sequence_logps(student, batch, keep_states=True)
        stats = PairStats(torch.zeros(3), torch.zeros(3))
        sup.supply(stats, step)
        return stats

    rows = arithmetic_rows(3, seed=4)
    batch, packed = _batch(tok, rows, "padded"), _batch(tok, rows, "packed")
    stats, pstats = supplied(batch), supplied(packed)
    for key in ("chosen_teacher_kl", "rejected_teacher_kl", "chosen_expected_advantage"):  # the layouts agree
        assert pstats.extras[key].sum(-1).tolist() == pytest.approx(stats.extras[key].sum(-1).tolist(), rel=1e-4)
    # independently: plain forwards of each padded sequence, position t-1 predicts token t
    B = batch.num_examples
    for s in range(batch.seq_mask.shape[0]):
        row = batch.seq_row[s]
        ids, att = batch.input_ids[row:row + 1], batch.attention_mask[row:row + 1]
        with torch.no_grad():
            zs, zt, zr = (m(input_ids=ids, attention_mask=att).logits[0] for m in (student, teacher, tref))
        side, i = ("chosen", s) if s < B else ("rejected", s - B)
        for t in batch.seq_mask[s].nonzero().flatten().tolist():
            kl = forward_kl(zs[t - 1], zt[t - 1]).item()
            adv = expected_advantage(zs[t - 1], zt[t - 1], zr[t - 1]).item()
            assert stats.extras[f"{side}_teacher_kl"][i, t].item() == pytest.approx(kl, rel=1e-4, abs=1e-6)
            assert stats.extras[f"{side}_expected_advantage"][i, t].item() == pytest.approx(adv, rel=1e-4, abs=1e-6)
        assert torch.equal(stats.extras[f"{side}_teacher_mask"][i], batch.seq_mask[s].bool())
        assert stats.extras[f"{side}_teacher_kl"][i][~batch.seq_mask[s].bool()].abs().max() == 0


def test_teacher_with_another_vocabulary_is_refused(tiny_dir, models, tmp_path):
    from preftune.train import TrainConfig, train

    rows = arithmetic_rows(8, seed=5)
    from preftune.data.types import PairExample

    ex = [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i) for i, r in enumerate(rows)]
    cfg = TrainConfig(model=str(tiny_dir), output=str(tmp_path / "x"), loss="dckd", max_steps=1, batch_size=4,
                      progress=False, save_final=False, teacher_model=str(models["other"]))
    with pytest.raises(ConfigError, match="output tokens, the student"):
        train(cfg, train_examples=ex)


@pytest.mark.slow
def test_dckd_and_adpa_train_the_student_towards_the_teacher(tiny_dir, models, tmp_path):
    """End to end through the trainer: DCKD lowers the KL to the teacher on held-out pairs; ADPA raises the
    student's expected teacher advantage."""
    from transformers import AutoTokenizer

    from preftune.data.types import PairExample
    from preftune.objectives.distill import reduce_tokens
    from preftune.suppliers.base import MicroBatch
    from preftune.suppliers.teacher import TeacherTerms
    from preftune.train import TrainConfig, train

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ex = [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i) for i, r in enumerate(arithmetic_rows(16, 6))]
    held = _batch(tok, arithmetic_rows(16, seed=7))
    paths = dict(teacher_model=str(models["teacher"]), teacher_ref_model=str(models["teacher_ref"]))

    def measure(model):
        obj = get("adpa", **paths)
        stats = PairStats(torch.zeros(16), torch.zeros(16))
        sup = TeacherTerms()
        with torch.no_grad():
            sup.supply(stats, MicroBatch(model, None, obj, held))
        kl = reduce_tokens(stats.extras["rejected_teacher_kl"], stats.extras["rejected_teacher_mask"], "batch")[0]
        adv = reduce_tokens(stats.extras["rejected_expected_advantage"], stats.extras["rejected_teacher_mask"],
                            "batch")[0]
        return kl.item(), adv.item()

    from transformers import AutoModelForCausalLM

    kl0, adv0 = measure(AutoModelForCausalLM.from_pretrained(tiny_dir))
    base = dict(model=str(tiny_dir), max_steps=6, batch_size=8, lr=5e-3, progress=False, save_final=False)
    res = train(TrainConfig(output=str(tmp_path / "dckd"), loss="dckd", teacher_model=paths["teacher_model"], **base),
                train_examples=ex)
    kl1, _ = measure(res.model)
    assert kl1 < 0.7 * kl0, (kl0, kl1)
    assert res.history[-1]["distill/kl_rejected"] < res.history[0]["distill/kl_rejected"]
    res = train(TrainConfig(output=str(tmp_path / "adpa"), loss="adpa", beta=1.0, **paths, **base), train_examples=ex)
    _, adv1 = measure(res.model)
    assert adv1 > adv0 + 0.02, (adv0, adv1)
