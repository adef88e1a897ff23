"""P67 (Secrets of RLHF II): preference strength (eq. 4), the strength-based reward losses (flip, eq. 5 label
smoothing, eq. 6 adaptive margin), the SimCSE term (eq. 9) and ``preftune rm strength``. Closed forms are written out
here, independently of the code under test."""
from __future__ import annotations

import json
import math

import pytest
import torch

from preftune.data.types import PairExample
from preftune.errors import ConfigError
from preftune.objectives import get
from preftune.reward import PairScores, RewardEnsemble
from preftune.reward.robust_objectives import info_nce, strength_loss
from preftune.reward.strength import (auroc, flip_detection_auroc, flip_pairs, pair_strength, strength_from_margins,
                                      weakest, with_strength)

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))   # -log sigmoid(-x)


class Table:
    """A scorer with known scores: ``score`` looks each response up."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, prompts, responses):
        return torch.tensor([self.scores[r] for r in responses])


# ------------------------------------------------------------------------------------------- strength (eq. 4)

def test_strength_is_the_mean_and_population_std_of_the_members_margins():
    s = strength_from_margins(T([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5]]))
    assert s.mean.tolist() == [2.0, -1.0, 0.5]
    assert s.std.tolist() == [1.0, 1.0, 0.0]          # sqrt(((1-2)^2 + (3-2)^2) / 2) = 1: divided by M, not M-1
    one = strength_from_margins(T([[4.0, -1.0]]))
    assert one.mean.tolist() == [4.0, -1.0] and one.std.tolist() == [0.0, 0.0]   # one model: no spread


def test_pair_strength_from_three_scorers_by_hand():
    members = [Table({"a": 2.0, "b": 1.0, "c": 0.0, "d": 1.0}),
               Table({"a": 1.0, "b": 1.0, "c": 3.0, "d": 0.0}),
               Table({"a": 4.0, "b": 0.0, "c": 0.0, "d": 0.0})]
    # pair 0: chosen a, rejected b -> margins 1, 0, 4; pair 1: chosen c, rejected d -> -1, 3, 0
    for models in (members, RewardEnsemble(members)):
        s = pair_strength(models, ["x", "y"], ["a", "c"], ["b", "d"])
        assert s.margins.tolist() == [[1.0, -1.0], [0.0, 3.0], [4.0, 0.0]]
        assert s.mean.tolist() == pytest.approx([5 / 3, 2 / 3])
        var0 = ((1 - 5 / 3) ** 2 + (0 - 5 / 3) ** 2 + (4 - 5 / 3) ** 2) / 3
        var1 = ((-1 - 2 / 3) ** 2 + (3 - 2 / 3) ** 2 + (0 - 2 / 3) ** 2) / 3
        assert s.std.tolist() == pytest.approx([math.sqrt(var0), math.sqrt(var1)])
    with pytest.raises(ValueError, match="2 prompts, 1 chosen"):
        pair_strength(members, ["x", "y"], ["a"], ["b"])


def test_weakest_by_threshold_and_by_fraction():
    s = T([0.5, -1.0, 0.0, -0.2, 2.0])
    assert weakest(s, below=0.0).tolist() == [False, True, False, True, False]
    assert weakest(s, fraction=0.4).tolist() == [False, True, False, True, False]   # round(0.4 * 5) = 2 weakest
    assert weakest(T([1.0, 1.0, 1.0]), fraction=0.34).tolist() == [True, False, False]  # ties: first by position
    assert not weakest(s, fraction=0.0).any() and weakest(s, fraction=1.0).all()
    with pytest.raises(ConfigError, match="one of below"):
        weakest(s)
    with pytest.raises(ConfigError, match="fraction must be in"):
        weakest(s, fraction=1.5)


def test_auroc_by_hand_and_its_limits():
    # positives 0.35, 0.8; negatives 0.1, 0.4: of the 4 (pos, neg) pairs, 3 are ordered -> 0.75
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.0, 1.0], [0, 1]) == 1.0 and auroc([1.0, 0.0], [0, 1]) == 0.0
    assert auroc([1.0, 1.0, 1.0], [1, 0, 0]) == 0.5                   # ties count 1/2
    assert auroc([0.2, 0.2, 0.9], [1, 0, 1]) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(auroc([1.0, 2.0], [1, 1]))
    # low strength marks a flip: strength -2 (flipped) and 1, 3 (clean) -> perfectly found
    assert flip_detection_auroc(T([1.0, -2.0, 3.0]), [False, True, False]) == 1.0


def test_flip_pairs_swaps_and_negates_the_strength():
    pairs = [PairExample("p", "good", "bad", row=0, extras={"score_chosen": 2.0, "score_rejected": 1.0}),
             PairExample("q", "yes", "no", row=1)]
    out = flip_pairs(pairs, [True, False], T([-0.5, 0.7]))
    assert (out[0].chosen, out[0].rejected, out[0].extras) == ("bad", "good", {"score_chosen": 1.0,
                                                                               "score_rejected": 2.0,
                                                                               "strength": 0.5})
    assert (out[1].chosen, out[1].rejected, out[1].extras["strength"]) == ("yes", "no", 0.7)
    ws = with_strength(pairs, strength_from_margins(T([[1.0, 2.0], [3.0, 2.0]])))
    assert [p.extras["strength"] for p in ws] == [2.0, 2.0] and [p.extras["strength_std"] for p in ws] == [1.0, 0.0]


# ------------------------------------------------------------------------- strength losses (sec. 2.4, eqs. 5-6)

def test_strength_loss_closed_forms():
    rc, rr, mu = T([1.0, 0.5]), T([0.0, 2.0]), T([-1.0, 0.5])
    d = [1.0, -1.5]
    plain, _ = strength_loss(rc, rr, mu)
    assert plain.tolist() == pytest.approx([softplus(-x) for x in d])          # -log sigmoid(d)
    flip, masks = strength_loss(rc, rr, mu, flip_below=0.0)
    assert masks["flipped"].tolist() == [True, False]
    assert flip.tolist() == pytest.approx([softplus(d[0]), softplus(-d[1])])   # pair 0 trained as rejected > chosen
    margin, _ = strength_loss(rc, rr, mu, margin_scale=2.0)                    # eq. 6: -log sigmoid(d - 2 mu)
    assert margin.tolist() == pytest.approx([softplus(-(d[0] + 2.0)), softplus(-(d[1] - 1.0))])
    both, _ = strength_loss(rc, rr, mu, flip_below=0.0, margin_scale=1.0)      # flipped pair: z = -d - (+1)
    assert both.tolist() == pytest.approx([softplus(-(-d[0] - 1.0)), softplus(-(d[1] - 0.5))])
    a = 0.2                                                                    # eq. 5 on the pair with mu < 0
    soft, masks = strength_loss(rc, rr, mu, smooth_below=0.0, alpha=a)
    assert masks["smoothed"].tolist() == [True, False]
    assert soft.tolist() == pytest.approx([(1 - a) * softplus(-d[0]) + a * softplus(d[0]), softplus(-d[1])])
    extra, _ = strength_loss(rc, rr, mu, margin_scale=1.0, margin=T([0.3, 0.3]))  # the data's margin adds
    assert extra.tolist() == pytest.approx([softplus(-(d[0] + 1.0 - 0.3)), softplus(-(d[1] - 0.5 - 0.3))])


def test_gradient_directions():
    rc, rr = T([1.0]).requires_grad_(), T([0.0])
    strength_loss(rc, rr, T([-1.0]))[0].sum().backward()
    assert rc.grad.item() < 0                      # plain BT trusts the label: raise the chosen score
    rc.grad = None
    strength_loss(rc, rr, T([-1.0]), flip_below=0.0)[0].sum().backward()
    assert rc.grad.item() > 0                      # flipped: lower the (labelled) chosen score
    rc.grad = None
    strength_loss(rc, rr, T([-1.0]), smooth_below=0.0, alpha=0.5)[0].sum().backward()
    # alpha = 1/2: the smoothed target is 1/2, so the gradient pushes d towards 0 -- from d = 1, downwards
    assert rc.grad.item() > 0
    rc.grad = None
    strength_loss(rc, rr, T([3.0]), margin_scale=1.0)[0].sum().backward()
    g_margin = rc.grad.item()
    rc.grad = None
    strength_loss(rc, rr, T([3.0]))[0].sum().backward()
    assert g_margin < rc.grad.item() < 0           # a strong pair's margin asks for a larger gap: a larger push


def test_registered_presets_match_the_closed_form_and_report_metrics():
    stats = PairScores(T([1.0, 0.5]), T([0.0, 2.0]), extras={"strength": T([-1.0, 0.5])})
    d = [1.0, -1.5]
    out = get("rm_flip_margin")(stats)
    assert out.loss.tolist() == pytest.approx([softplus(-(-d[0] - 1.0)), softplus(-(d[1] - 0.5))])
    assert out.metrics["strength/flipped"].item() == 0.5 and out.metrics["accuracy"].item() == 0.5
    assert get("rm_flip")(stats).loss.tolist() == pytest.approx([softplus(d[0]), softplus(-d[1])])
    assert get("rm_adaptive_margin")(stats).loss.tolist() == pytest.approx(
        [softplus(-(d[0] + 1.0)), softplus(-(d[1] - 0.5))])
    a = 0.1
    assert get("rm_soft_label_margin")(stats).loss.tolist() == pytest.approx(
        [(1 - a) * softplus(-(d[0] + 1.0)) + a * softplus(d[0] + 1.0), softplus(-(d[1] - 0.5))])
    # every knob off is bradley_terry
    assert get("rm_strength_bt")(stats).loss.tolist() == pytest.approx(get("bradley_terry")(stats).loss.tolist())
    # label smoothing on every pair needs no strength
    bare = PairScores(T([1.0]), T([0.0]))
    assert get("rm_label_smoothing", alpha=0.3)(bare).loss.item() == pytest.approx(0.7 * softplus(-1.0)
                                                                                   + 0.3 * softplus(1.0))


def test_refusals():
    with pytest.raises(ConfigError, match="flip_below must be a number"):
        get("rm_flip", flip_below=float("nan"))
    with pytest.raises(ConfigError, match="alpha=0.6 is not allowed"):
        get("rm_soft_label_margin", alpha=0.6)
    with pytest.raises(ConfigError, match="margin_scale=-1"):
        get("rm_adaptive_margin", margin_scale=-1.0)
    with pytest.raises(ValueError, match="needs each pair's 'strength'"):
        get("rm_flip")(PairScores(T([1.0]), T([0.0])))
    with pytest.raises(ValueError, match="with a strength threshold or a margin needs"):
        get("rm_label_smoothing", margin_scale=1.0)(PairScores(T([1.0]), T([0.0])))


# ---------------------------------------------------------------------------------------- SimCSE (eq. 9)

def test_info_nce_by_hand():
    a = T([[1.0, 0.0], [0.0, 1.0]])
    # sim = identity / tau: loss_i = -log(e^(1/tau) / (e^(1/tau) + e^0)) = log(1 + e^(-1/tau))
    assert info_nce(a, a, 0.5).tolist() == pytest.approx([math.log1p(math.exp(-2.0))] * 2)
    b = T([[1.0, 1.0], [0.0, 2.0]])   # cos(a0,b0) = 1/sqrt2, cos(a0,b1) = 0, cos(a1,b0) = 1/sqrt2, cos(a1,b1) = 1
    c = 1 / math.sqrt(2)
    want0 = -math.log(math.exp(c) / (math.exp(c) + 1.0))
    want1 = -math.log(math.e / (math.exp(c) + math.e))
    assert info_nce(a, b, 1.0).tolist() == pytest.approx([want0, want1])


def test_simcse_instances_without_dropout():
    fc, fr = T([[1.0, 0.0], [0.0, 1.0]]), T([[0.0, 0.0], [0.0, 0.0]])
    stats = PairScores(T([0.0, 0.0]), T([0.0, 0.0]), extras={"chosen_features": fc, "rejected_features": fr})
    # difference: instances f_c - f_r = e0, e1 and their negatives -e0, -e1; two identical views (dropout 0).
    # For e0: sims to (e0, e1, -e0, -e1) are (1, 0, -1, 0) / tau
    tau = 0.5
    want = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0 + math.exp(-2.0)))
    out = get("rm_simcse", dropout=0.0, tau=tau)(stats)
    assert out.loss.tolist() == pytest.approx([want, want])
    # pairs: instances e0, e1, 0, 0 -- cosine with a zero vector is 0
    pairs = get("rm_simcse", dropout=0.0, tau=tau, representation="pairs")(stats)
    w_resp = -math.log(math.exp(2.0) / (math.exp(2.0) + 3.0))     # e0 against (e0, e1, 0, 0)
    w_zero = -math.log(1.0 / 4.0)                                  # 0 against anything: all sims 0
    assert pairs.loss.tolist() == pytest.approx([(w_resp + w_zero) / 2] * 2)
    with pytest.raises(ConfigError, match="representation='x' is not allowed"):
        get("rm_simcse", representation="x")


def test_pair_features_read_the_last_real_token(tiny_dir):
    from preftune.models.loading import load_tokenizer
    from preftune.reward.contrastive_forward import last_token_features
    from preftune.reward.model import load_reward_model

    tok = load_tokenizer(str(tiny_dir))
    model = load_reward_model(str(tiny_dir), tokenizer=tok).eval()
    a, b = tok("1+2=3")["input_ids"], tok("1+2=34 5")["input_ids"]
    assert len(a) < len(b)
    ids = torch.full((2, len(b)), tok.pad_token_id)
    ids[0, :len(a)], ids[1] = torch.tensor(a), torch.tensor(b)
    mask = (torch.arange(len(b)) < torch.tensor([[len(a)], [len(b)]])).long()
    with torch.no_grad():
        got = last_token_features(model, ids, mask)
        alone = model(input_ids=torch.tensor([a]), output_hidden_states=True).hidden_states[-1][0, -1]
        # the score head reads the same state: its output is the model's score of the unpadded sequence
        assert torch.allclose(got[0], alone, atol=1e-5)
        assert torch.allclose(model.score(got[0]), model(input_ids=torch.tensor([a])).logits[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_flip_with_known_strength_trains_as_bradley_terry_on_the_clean_labels(tiny_dir, tmp_path):
    """12 of 32 labels flipped, and a strength that marks them (-1 flipped, +1 clean): on the trainer, rm_flip on the
    noisy pairs takes the same steps as bradley_terry on the clean pairs; bradley_terry on the noisy pairs does not."""
    from conftest import arithmetic_rows

    from preftune.models.loading import load_tokenizer
    from preftune.reward import train_reward_model
    from preftune.reward.model import load_reward_model
    from preftune.train import TrainConfig

    tok = load_tokenizer(str(tiny_dir))
    rows = arithmetic_rows(32, seed=2)
    clean = [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i) for i, r in enumerate(rows)]
    flipped = [i % 8 < 3 for i in range(32)]
    noisy = with_strength(flip_pairs(clean, flipped), T([-1.0 if f else 1.0 for f in flipped]))

    def losses(loss: str, name: str, data) -> list[float]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)   # the same new score head for every run
            model = load_reward_model(str(tiny_dir), tokenizer=tok)
        cfg = TrainConfig(model=str(tiny_dir), data="", output=str(tmp_path / name), loss=loss, batch_size=8,
                          lr=3e-3, max_steps=8, progress=False, seed=0, lr_schedule="constant", save_final=False)
        return [h["loss"] for h in train_reward_model(cfg, model=model, tokenizer=tok, train_examples=data).history]

    flip, ceiling = losses("rm_flip", "flip", noisy), losses("bradley_terry", "clean", clean)
    bt = losses("bradley_terry", "bt", noisy)
    assert flip == pytest.approx(ceiling, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(bt, ceiling)) > 1e-2


@pytest.mark.slow
def test_simcse_term_trains_through_rm_train(tiny_dir, tmp_path):
    """``bradley_terry + rm_simcse`` runs on the trainer unchanged (features supplied by a second pass) and the
    contrastive loss falls."""
    from conftest import arithmetic_rows

    from preftune.reward import train_reward_model
    from preftune.train import TrainConfig

    from preftune.models.loading import load_tokenizer
    from preftune.reward.model import load_reward_model

    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(32, seed=2)))
    tok = load_tokenizer(str(tiny_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)   # the new score head does not depend on the tests run before
        model = load_reward_model(str(tiny_dir), tokenizer=tok)
    cfg = TrainConfig(model=str(tiny_dir), data=str(p), output=str(tmp_path / "cl"), loss="bradley_terry,rm_simcse:0.5",
                      batch_size=16, lr=3e-3, max_steps=16, progress=False, seed=0, lr_schedule="constant",
                      save_final=False)
    h = train_reward_model(cfg, model=model, tokenizer=tok).history
    assert "loss/rm_simcse" in h[0] and "simcse/cos_chosen_rejected" in h[0]
    first, last = h[0]["loss/rm_simcse"], sum(x["loss/rm_simcse"] for x in h[-4:]) / 4
    assert last < first - 0.1, (first, last)


def test_strength_objective_refuses_pairs_without_strength_before_training(tiny_dir, tmp_path):
    from preftune.reward import train_reward_model
    from preftune.train import TrainConfig

    pairs = [PairExample("1+2=", "3", "4", row=i) for i in range(4)]
    cfg = TrainConfig(model=str(tiny_dir), data="", output=str(tmp_path / "x"), loss="rm_flip_margin",
                      batch_size=2, max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="needs each pair's preference strength"):
        train_reward_model(cfg, train_examples=pairs)


# ----------------------------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_rm_strength_cli_writes_strength_flips_and_margins(tiny_dir, tmp_path, capsys):
    from conftest import arithmetic_rows

    from preftune.cli.main import main
    from preftune.models.loading import load_tokenizer
    from preftune.reward import RewardModel
    from preftune.reward.model import load_reward_model

    tok = load_tokenizer(str(tiny_dir))
    dirs = []
    for s in range(2):   # two reward models that differ in their (random) score heads
        torch.manual_seed(s)
        m = load_reward_model(str(tiny_dir), tokenizer=tok)
        m.save_pretrained(tmp_path / f"m{s}")
        tok.save_pretrained(tmp_path / f"m{s}")
        dirs.append(tmp_path / f"m{s}")
    rows = [dict(r, flipped=i % 3 == 0, extra="kept") for i, r in enumerate(arithmetic_rows(12, seed=3))]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = ",".join(map(str, dirs))

    assert main(["rm", "strength", "--models", models, "--data", str(data), "--output", str(tmp_path / "s.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    rms = [RewardModel.from_pretrained(d) for d in dirs]
    prompts = [r["prompt"] for r in rows]
    d = torch.stack([rm.score(prompts, [r["chosen"] for r in rows]) - rm.score(prompts, [r["rejected"] for r in rows])
                     for rm in rms])
    assert [o["strength"] for o in out] == pytest.approx(((d[0] + d[1]) / 2).tolist(), abs=1e-5)
    assert [o["strength_std"] for o in out] == pytest.approx(((d[0] - d[1]).abs() / 2).tolist(), abs=1e-5)
    assert all(o["extra"] == "kept" and o["chosen"] == r["chosen"] for o, r in zip(out, rows))
    assert "AUROC of -strength against the `flipped` column" in capsys.readouterr().err

    assert main(["rm", "strength", "--models", models, "--data", str(data), "--output", str(tmp_path / "f.jsonl"),
                 "--flip-fraction", "0.25", "--margin-scale", "2"]) == 0
    flipped = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    weakest3 = set(sorted(range(12), key=lambda i: out[i]["strength"])[:3])
    for i, (o, f) in enumerate(zip(out, flipped)):
        assert f["strength_flipped"] == (i in weakest3)
        want = (o["rejected"], o["chosen"]) if i in weakest3 else (o["chosen"], o["rejected"])
        assert (f["chosen"], f["rejected"]) == want
        assert f["strength"] == pytest.approx(-o["strength"] if i in weakest3 else o["strength"])
        assert f["margin"] == pytest.approx(2 * f["strength"])

    # a row that already has a margin, and a bad row: one-line errors naming file, row and field
    capsys.readouterr()
    (tmp_path / "m.jsonl").write_text(json.dumps(dict(rows[0], margin=1.0)) + "\n")
    assert main(["rm", "strength", "--models", models, "--data", str(tmp_path / "m.jsonl"), "--margin-scale", "1"]) == 2
    assert "row 1, field 'margin'" in capsys.readouterr().err
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "1+1=", "chosen": "2"}) + "\n")
    assert main(["rm", "strength", "--models", models, "--data", str(tmp_path / "b.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.jsonl" in err[0] and "row 2" in err[0] and "rejected" in err[0]
