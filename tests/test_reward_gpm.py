"""P31 GPM: the skew-symmetric operator, the preference score and loss in closed form, the heads, the encoder on a
Hugging Face model, and the cyclic demonstration (a Bradley-Terry model at chance, a GPM near 100%)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward.gpm import (GPM, GPMHead, LastTokenEncoder, gpm_loss, policy_scores, preference_probability,
                                 preference_score, score_matrix, skew_operator)

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_skew_operator_is_the_scaled_block_diagonal_matrix():
    R = skew_operator(T([2.0, 0.5]))
    want = T([[0, -2, 0, 0],
              [2, 0, 0, 0],
              [0, 0, 0, -0.5],
              [0, 0, 0.5, 0]])
    torch.testing.assert_close(R, want)
    torch.testing.assert_close(R.T, -R)
    batched = skew_operator(T([[1.0], [3.0]]))
    torch.testing.assert_close(batched, T([[[0, -1], [1, 0]], [[0, -3], [3, 0]]]))


def test_preference_score_closed_form_and_skew_symmetry():
    vi, vj, gate = T([1.0, 2.0, 3.0, 4.0]), T([5.0, 6.0, 7.0, 8.0]), T([2.0, 0.5])
    # <R v_i, v_j> by hand: R v_i = (-2*2, 2*1, -0.5*4, 0.5*3) = (-4, 2, -2, 1.5); dot (5, 6, 7, 8) = -20+12-14+12
    assert float(preference_score(vi, vj, gate)) == pytest.approx(-10.0)
    assert float(preference_score(vj, vi, gate)) == pytest.approx(10.0)
    assert float(preference_score(vi, vi, gate)) == 0.0
    # no gate: every eigenvalue 1 -> (1*6 - 2*5) + (3*8 - 4*7) = -4 - 4
    assert float(preference_score(vi, vj)) == pytest.approx(-8.0)


def test_sign_convention_matches_the_authors_two_dimensional_loss():
    # general_preference/models/loss.py GeneralPreferenceLoss: result = c[0] * r[1] - c[1] * r[0]
    c, r = T([[0.6, -0.8], [0.1, 0.3]]), T([[0.2, 0.9], [-0.5, 0.4]])
    want = c[:, 0] * r[:, 1] - c[:, 1] * r[:, 0]
    torch.testing.assert_close(preference_score(c, r), want)


def test_three_unit_embeddings_120_degrees_apart_form_a_cycle():
    ang = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    A, B, C = (T([math.cos(a), math.sin(a)]) for a in ang)
    for x, y in ((A, B), (B, C), (C, A)):  # s(x > y) = sin(angle(y) - angle(x)) = sin(120 deg)
        assert float(preference_score(x, y)) == pytest.approx(math.sqrt(3) / 2)
    assert float(preference_probability(A, B, tau=0.1)) == pytest.approx(1 / (1 + math.exp(-math.sqrt(3) / 2 / 0.1)))


def test_score_matrix_equals_every_pairwise_score_and_policy_scores_are_row_means():
    g = torch.Generator().manual_seed(0)
    v, gate = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    S = score_matrix(v, gate)
    want = torch.stack([torch.stack([preference_score(v[i], v[j], gate) for j in range(5)]) for i in range(5)])
    torch.testing.assert_close(S, want)
    torch.testing.assert_close(S.T, -S)
    torch.testing.assert_close(policy_scores(S), want.sum(1) / 5)
    batched = score_matrix(v.expand(2, 5, 6), gate.expand(2, 3))
    torch.testing.assert_close(batched[1], S)


def test_gpm_loss_closed_form_with_tau_and_margin_and_its_gradient():
    vw, vl, gate = T([[1.0, 0.0]]), T([[0.6, 0.8]]), T([[0.5]])
    s = 0.5 * (1.0 * 0.8 - 0.0 * 0.6)  # 0.4
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert float(gpm_loss(vw, vl, gate, tau=0.1)) == pytest.approx(-math.log(sig(s / 0.1)))
    assert float(gpm_loss(vw, vl, gate, tau=0.2, margin=T([0.1]))) == pytest.approx(-math.log(sig((s - 0.1) / 0.2)))
    # the gradient on the eigenvalue is -sigmoid(-s/tau)/tau times the block's term (0.8): it raises the gate
    g_ = gate.clone().requires_grad_()
    (d,) = torch.autograd.grad(gpm_loss(vw, vl, g_, tau=0.1).sum(), [g_])
    assert float(d) == pytest.approx(-sig(-s / 0.1) / 0.1 * 0.8)
    with pytest.raises(ConfigError, match="tau"):
        gpm_loss(vw, vl, gate, tau=0.0)
    with pytest.raises(ValueError, match="even"):
        preference_score(T([1.0, 2.0, 3.0]), T([1.0, 2.0, 3.0]))


def test_head_normalises_embeddings_and_gates_with_a_softmax():
    torch.manual_seed(0)
    head = GPMHead(8, k=3)
    h, hx = torch.randn(4, 8), torch.randn(4, 8)
    v, lam = head.embedding(h), head.eigenvalues(hx)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(v, head.embed(h) / head.embed(h).norm(dim=-1, keepdim=True))
    logits = hx @ head.gate.weight.T
    torch.testing.assert_close(lam, logits.exp() / logits.exp().sum(-1, keepdim=True))
    raw = GPMHead(8, k=3, gate=False, normalize=False)
    torch.testing.assert_close(raw.embedding(h), h @ raw.embed.weight.T)
    assert raw.eigenvalues(hx) is None
    with pytest.raises(ConfigError, match="k"):
        GPMHead(8, k=0)


def test_last_token_encoder_reads_each_sequences_last_real_token():
    from preftune.models.tiny import build_model

    lm = build_model(40, hidden_size=16, num_layers=1, num_heads=2)
    enc = LastTokenEncoder(lm).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = ids != 0
    mask[1] = True
    with torch.no_grad():
        h = enc(ids, mask)
        alone = lm(input_ids=ids[:1, :3], output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(h[0], alone, atol=1e-5, rtol=1e-5)
    gpm = GPM(enc, 16, k=2)
    v, gate = gpm(ids, mask, ids[:, :2], mask[:, :2])
    assert v.shape == (2, 4) and gate.shape == (2, 2)


def test_beats_is_a_regular_tournament():
    from preftune.reward.gpm_cyclic import beats

    assert beats(0, 1, 3) and beats(1, 2, 3) and beats(2, 0, 3) and not beats(1, 0, 3)
    for n in (3, 5, 7):
        for a in range(n):
            assert sum(beats(a, b, n) for b in range(n) if b != a) == (n - 1) // 2


def test_demo_config_refuses_an_even_cycle():
    from preftune.reward.gpm_cyclic import CyclicConfig, run_cyclic_demo

    with pytest.raises(ConfigError, match="odd"):
        run_cyclic_demo([0], CyclicConfig(n_types=4))


@pytest.mark.slow
def test_cli_demo_bradley_terry_at_chance_gpm_near_perfect_on_cyclic_pairs(tmp_path):
    from preftune.cli.main import main

    out, fig = tmp_path / "r.json", tmp_path / "gpm-cyclic.png"
    rc = main(["rm", "gpm-demo", "--seeds", "0", "1", "--train-pairs", "800", "--test-pairs", "300",
               "--steps", "150", "--output", str(out), "--figure", str(fig)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in res["runs"]:
        assert run["gpm"]["cyclic"] >= 0.9, run
        assert run["gpm"]["transitive"] >= 0.85, run
        assert 0.3 <= run["bt"]["cyclic"] <= 0.7, run   # a scalar cannot rank A > B > C > A
        assert run["bt"]["transitive"] >= 0.7, run       # ... but learns the transitive part (it overfits
        # the fillers on small training sets, hence below the GPM)
        S = torch.tensor(run["gpm_type_scores"])          # the learned cycle: A > B, B > C, C > A
        assert S[0, 1] > 0 and S[1, 2] > 0 and S[2, 0] > 0
    assert res["summary"]["gpm"]["cyclic"]["mean"] > res["summary"]["bt"]["cyclic"]["mean"] + 0.3


def test_pair_tensors_prepend_the_prompt_and_pad_right():
    from preftune.reward.gpm_train import PairTensors, pair_accuracy

    d = PairTensors.from_lists([[1], [2, 3]], [[7, 8], [9]], [[5], [6, 6, 6]], margin=[0.5, 0.0])
    assert d.chosen_ids.tolist() == [[1, 7, 8], [2, 3, 9]] and d.chosen_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert d.rejected_ids.tolist() == [[1, 5, 0, 0, 0], [2, 3, 6, 6, 6]]
    assert d.rejected_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert d.prompt_ids.tolist() == [[1, 0], [2, 3]] and len(d) == 2
    assert d.select(torch.tensor([1])).margin.tolist() == [0.0]
    assert pair_accuracy(torch.tensor([1.0, -2.0, 0.0, 3.0])) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="one of each"):
        PairTensors.from_lists([[1]], [[2]], [])


def test_gpm_without_gate_needs_no_prompt_and_with_a_gate_refuses_none():
    from preftune.reward.gpm_train import BagEncoder

    ids, mask = torch.tensor([[1, 2], [3, 0]]), torch.tensor([[True, True], [True, False]])
    v, gate = GPM(BagEncoder(5, 8), 8, k=2, gate=False)(ids, mask)
    assert gate is None and v.shape == (2, 4)
    with pytest.raises(ValueError, match="prompt"):
        GPM(BagEncoder(5, 8), 8, k=2)(ids, mask)
