"""Diagnostics on cases known by construction: hand-set logits, hand tables, hand-made hidden
states, a linear softmax model with analytic gradients, known distributions."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from preftune import diagnostics as D
from preftune.data.types import TokenizedPair
from preftune.models.logprobs import SeqLogps
from preftune.models.tiny import build_model

V, EOS, PAD = 64, 2, 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_set_model(bias: dict[int, float] | None = None, seed: int = 0):
    """A tiny Llama whose next-token logits are a constant bias vector: zero weights in the
    head, so p(token) = softmax(bias) at every position, whatever the context."""
    m = build_model(V, hidden_size=16, num_layers=1, num_heads=2, seed=seed, pad_token_id=PAD, eos_token_id=EOS)
    head = torch.nn.Linear(16, V, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for tok, b in (bias or {}).items():
            head.bias[tok] = b
    m.lm_head = head
    return m


def pair(prompt, chosen, rejected, row=0, **extras):
    return TokenizedPair(list(prompt), list(chosen), list(rejected), row=row, extras=extras)


# ----------------------------------------------------------------------------- P02 ranking accuracy


def test_ranking_accuracy_uniform_model_prefers_shorter_responses():
    m = hand_set_model()  # uniform: log p(y) = -|y| log V exactly
    pairs = [pair([5, 6, 7], [10] * (2 + i), [11] * (4 + i), row=i) for i in range(4)]
    r = D.ranking_accuracy(m, None, pairs)
    np.testing.assert_allclose(r.policy_chosen, -(2 + np.arange(4)) * math.log(V), rtol=1e-5)
    assert r.accuracy == 1.0              # shorter chosen: higher summed likelihood
    assert r.accuracy_normalized == 0.0   # equal per-token likelihood: ties count as wrong
    assert r.ref_accuracy == 1.0 and r.alignment_gap is not None
    swapped = [pair(p.prompt_ids, p.rejected_ids, p.chosen_ids, row=p.row) for p in pairs]
    assert D.ranking_accuracy(m, None, swapped).accuracy == 0.0


def test_ranking_accuracy_hand_set_logits_and_reference():
    policy = hand_set_model({10: 5.0})     # token 10 is much more likely than any other
    ref = hand_set_model()                 # uniform reference: every pair a tie
    pairs = [pair([5, 6], [10] * 3, [20 + i] * 3, row=i) for i in range(5)]
    r = D.ranking_accuracy(policy, ref, pairs, beta=0.1)
    assert r.accuracy == 1.0 and r.accuracy_normalized == 1.0
    assert r.ref_accuracy == 0.0
    # reference margin 0, assumed alpha 0.75 > 0.5: the DPO optimum ranks every pair right
    assert r.idealized_accuracy == 1.0 and "assumed" in r.alpha_source
    np.testing.assert_allclose(r.ref_logratio, 0.0, atol=1e-6)
    np.testing.assert_allclose(r.flip_loss, math.log(2), rtol=1e-6)


def test_idealized_accuracy_hand_table():
    # columns: log pi_ref(chosen), log pi_ref(rejected), alpha = P(chosen > rejected)
    rc = [-10.0, -5.0, -7.0, -3.0, -4.0]
    rr = [-8.0, -6.0, -7.0, -9.0, -3.5]
    alpha = [0.75, 0.5, 0.6, 0.1, 0.9]
    # correct iff (rc - rr) + log(alpha / (1 - alpha)) / beta > 0, by hand:
    # beta=1:   -2+1.0986<0 F | 1>0 T | 0+0.405>0 T | 6-2.197>0 T | -0.5+2.197>0 T
    # beta=0.1: -2+10.99>0 T  | 1>0 T | 4.05>0 T    | 6-21.97<0 F | -0.5+21.97>0 T
    assert D.idealized_correct(rc, rr, alpha, 1.0).tolist() == [False, True, True, True, True]
    assert D.idealized_correct(rc, rr, alpha, 0.1).tolist() == [True, True, True, False, True]
    assert D.idealized_ranking_accuracy(rc, rr, alpha, 1.0) == pytest.approx(0.8)
    # alpha = 1: the optimum ranks every pair correctly, whatever the reference
    assert D.idealized_ranking_accuracy(rc, rr, 1.0, 5.0) == 1.0
    d, loss = D.difficulty(rc, rr, beta=0.5)
    np.testing.assert_allclose(d, [2.0, -1.0, 0.0, -6.0, 0.5])
    np.testing.assert_allclose(loss, [math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5)), math.log(2),
                                      math.log1p(math.exp(3.0)), math.log1p(math.exp(-0.25))])
    with pytest.raises(ValueError, match="alpha"):
        D.idealized_correct(rc, rr, 1.5, 0.1)


def test_ranking_accuracy_reads_preference_probability_column():
    m = hand_set_model()
    # same lengths, so the uniform reference ties; alpha decides: 0.3 < 0.5 ranks wrongly
    pairs = [pair([5], [10, 11], [12, 13], row=0, preference_prob=0.9),
             pair([5], [10, 11], [12, 13], row=1, preference_prob=0.3)]
    r = D.ranking_accuracy(m, None, pairs)
    assert "preference_prob" in r.alpha_source
    assert r.idealized_accuracy == 0.5


# ----------------------------------------------------------------------------- P16 CHES


def test_ches_from_hand_made_hidden_states():
    h_c = torch.tensor([[1.0, 0.0], [0.0, 2.0]])   # S+ = (1, 2), mean (0.5, 1)
    h_r = torch.tensor([[1.0, 1.0]])               # S- = (1, 1)
    # CHES = <S+, S-> - ||S+||^2 = 3 - 5
    assert D.ches_from_hidden(h_c, h_r).item() == pytest.approx(-2.0)
    # normalised: <(0.5, 1), (1, 1)> - ||(0.5, 1)||^2 = 1.5 - 1.25
    assert D.ches_from_hidden(h_c, h_r, normalized=True).item() == pytest.approx(0.25)
    # identical responses: CHES is exactly 0
    assert D.ches_from_hidden(h_c, h_c).item() == pytest.approx(0.0)


def test_ches_scores_match_hidden_states_at_predicting_positions():
    m = build_model(V, hidden_size=16, num_layers=1, num_heads=2, seed=3)
    pairs = [pair([3, 4, 5], [10, 11, 12, 13], [14, 15], row=0), pair([6], [16, 17], [18, 19, 20, 21, 22], row=1)]
    r = D.ches_scores(m, pairs, batch_size=2)  # one padded batch of unequal lengths

    def pred_hidden(prompt, resp):  # unpadded, alone: positions len(prompt)-1 .. len(seq)-2
        ids = torch.tensor([prompt + resp])
        h = m.model(input_ids=ids).last_hidden_state[0]
        return h[len(prompt) - 1: len(prompt) + len(resp) - 1]

    m.eval()
    with torch.no_grad():
        for i, p in enumerate(pairs):
            hc, hr = pred_hidden(p.prompt_ids, p.chosen_ids), pred_hidden(p.prompt_ids, p.rejected_ids)
            sc, sr = hc.double().sum(0), hr.double().sum(0)
            assert r.scores[i] == pytest.approx(float(sc @ sr - sc @ sc), rel=1e-4, abs=1e-6)
            mc, mr = hc.double().mean(0), hr.double().mean(0)
            assert r.normalized[i] == pytest.approx(float(mc @ mr - mc @ mc), rel=1e-4, abs=1e-6)


def test_filter_by_ches_drops_the_top_fraction():
    m = build_model(V, hidden_size=16, num_layers=1, num_heads=2, seed=1)
    g = torch.Generator().manual_seed(0)
    pairs = [pair(torch.randint(3, V, (4,), generator=g).tolist(), torch.randint(3, V, (3 + i % 3,), generator=g).tolist(),
                  torch.randint(3, V, (2 + i % 4,), generator=g).tolist(), row=i) for i in range(8)]
    scores = D.ches_scores(m, pairs).scores
    kept, report = D.filter_by_ches(m, None, pairs, drop=0.25)
    worst = set(np.argsort(-scores)[:2].tolist())
    assert report["dropped"] == 2 and sorted(report["dropped_rows"]) == sorted(worst)
    assert [p.row for p in kept] == [i for i in range(8) if i not in worst]
    kept_n, rep_n = D.filter_by_ches(m, None, pairs, drop=0.25, normalized=True)
    assert rep_n["by"] == "ln_ches" and len(kept_n) == 6
    assert D.filter_by_ches(m, None, pairs, drop=0.0)[0] == pairs


# ----------------------------------------------------------------------------- P08 entanglement


class LinearSoftmaxLM(torch.nn.Module):
    """log p(y_t | x_<t) = W[y_t, x_{t-1}] - logsumexp(W[:, x_{t-1}]): one-hot hidden states
    (frozen identity embedding) and a trainable V x V head, the only parameter."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, vocab)
        self.embed.weight.data = torch.eye(vocab)
        self.embed.weight.requires_grad_(False)
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        self.head.weight.data = torch.randn(vocab, vocab, generator=g)
        self.config = SimpleNamespace(pad_token_id=0)
        model = self

        class Decoder(torch.nn.Module):
            def forward(self, input_ids, attention_mask=None, use_cache=False, position_ids=None):
                return SimpleNamespace(last_hidden_state=model.embed(input_ids))

        self._decoder = Decoder()

    def get_decoder(self):
        return self._decoder

    def get_output_embeddings(self):
        return self.head


def analytic_grad(W: np.ndarray, prompt: list[int], resp: list[int]) -> np.ndarray:
    """d/dW of sum_t log p(y_t | y_{t-1}): column c gets e_y - softmax(W[:, c]) per position."""
    seq = prompt + resp
    G = np.zeros_like(W)
    for t in range(len(prompt), len(seq)):
        c, y = seq[t - 1], seq[t]
        p = np.exp(W[:, c] - W[:, c].max())
        p /= p.sum()
        G[:, c] += np.eye(W.shape[0])[y] - p
    return G


def test_gradient_entanglement_matches_analytic_gradients():
    vocab = 7
    m = LinearSoftmaxLM(vocab, seed=2)
    W = m.head.weight.detach().double().numpy()
    pairs = [pair([1, 2], [3, 4, 3], [3, 5], row=0), pair([4], [6], [6, 1, 2], row=1), pair([5, 5], [2], [2], row=2)]
    r = D.gradient_entanglement(m, pairs)
    for i, p in enumerate(pairs):
        gw, gl = analytic_grad(W, p.prompt_ids, p.chosen_ids), analytic_grad(W, p.prompt_ids, p.rejected_ids)
        assert r.inner[i] == pytest.approx(float((gw * gl).sum()), rel=1e-5)
        assert r.norm_chosen[i] == pytest.approx(float(np.linalg.norm(gw)), rel=1e-5)
        assert r.norm_rejected[i] == pytest.approx(float(np.linalg.norm(gl)), rel=1e-5)
    assert r.parameters == vocab * vocab      # the frozen embedding is left out
    assert r.cosine[2] == pytest.approx(1.0)  # identical responses: the same gradient
    assert m.head.weight.grad is None         # .grad untouched
    with pytest.raises(ValueError, match="no trainable parameter"):
        D.gradient_entanglement(m, pairs, params="nothing_matches")


def test_entanglement_condition_by_hand():
    # DPO (c_w = c_l = 1): d_w = |g_w|^2 - <.,.>, d_l = <.,.> - |g_l|^2
    c = D.entanglement_condition(inner=[3.0, 1.0, 4.0], norm_w_sq=[2.0, 2.0, 5.0], norm_l_sq=[5.0, 5.0, 3.0])
    np.testing.assert_allclose(c["delta_chosen"], [-1.0, 1.0, 1.0])
    np.testing.assert_allclose(c["delta_rejected"], [-2.0, -4.0, 1.0])
    assert c["entangled"].tolist() == [True, False, True]   # both down | proper | both up
    assert c["chosen_down"].tolist() == [True, False, False]
    assert c["rejected_up"].tolist() == [False, False, True]
    # length-normalised weights change the verdict: c_w = 1/2, c_l = 1/4 on pair 0
    c2 = D.entanglement_condition(3.0, 2.0, 5.0, c_w=0.5, c_l=0.25)
    assert float(c2["delta_chosen"]) == pytest.approx(0.25) and float(c2["delta_rejected"]) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- P46 top-k indicators


def test_topk_stats_of_a_known_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    ent, mass = D.topk_stats(logits, k=2)
    assert mass.item() == pytest.approx(0.75)
    assert ent.item() == pytest.approx(-(0.5 * math.log(0.5) + 0.25 * math.log(0.25)))
    ent_r, _ = D.topk_stats(logits, k=2, renormalize=True)
    assert ent_r.item() == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    ent_all, mass_all = D.topk_stats(logits, k=4)
    assert mass_all.item() == pytest.approx(1.0) and ent_all.item() == pytest.approx(1.75 * math.log(2))


def test_topk_indicators_on_uniform_model_and_warning():
    m = hand_set_model()
    pairs = [pair([5, 6], [10] * (2 + i), [11] * 3, row=i) for i in range(3)]
    r = D.topk_indicators(m, pairs, k=8)
    assert r.mass == pytest.approx(8 / V, rel=1e-5)
    assert r.entropy == pytest.approx(8 / V * math.log(V), rel=1e-5)
    assert r.tokens == 2 + 3 + 4
    assert D.topk_indicators(m, pairs, k=8, which="both").tokens == 9 + 9
    assert D.overoptimisation_warning([3, 2, 1], [0.9, 0.8, 0.7])
    assert not D.overoptimisation_warning([3, 2, 2], [0.9, 0.8, 0.7])   # entropy flat at the end
    assert not D.overoptimisation_warning([3, 2, 1], [0.7, 0.8, 0.9])   # mass rising
    trend = D.topk_across_checkpoints([("a", hand_set_model()), ("b", hand_set_model({10: 3.0})),
                                       ("c", hand_set_model({10: 6.0}))], pairs, k=8, window=3)
    assert trend["warning"] is False  # peaking on one token: entropy falls but top-k mass rises


# ----------------------------------------------------------------------------- P38 / P52 length bias


class FixedReference:
    """A reference source with log pi_ref(y) = -2 |y|."""

    def logps(self, batch, *, per_token=False):
        n = batch.seq_mask.sum(-1)
        return SeqLogps(sums=-2.0 * n.float(), lengths=n, mask=batch.seq_mask)


def test_length_bias_reward_correlation_and_sample_lengths():
    policy = hand_set_model()  # uniform: log pi(y) = -|y| log V, so r = beta |y| (2 - log V): linear in |y|
    pairs = [pair([5, 6], [10] * (1 + i), [11] * (6 - i), row=i) for i in range(5)]
    r = D.length_bias(policy, FixedReference(), pairs, sample_prompts=0)
    assert r.reward_length_pearson == pytest.approx(-1.0) and r.reward_length_spearman == pytest.approx(-1.0)
    np.testing.assert_allclose(r.rewards_chosen, 0.1 * (1 + np.arange(5)) * (2 - math.log(V)), rtol=1e-5)
    assert r.sample_length is None and r.ref_sample_length is None   # a source cannot sample
    # samples: a policy that always says EOS vs a uniform reference that almost never does
    eos_policy = hand_set_model({EOS: 30.0})
    r2 = D.length_bias(eos_policy, policy, pairs, sample_prompts=3, max_new_tokens=6)
    assert r2.sample_length == 1.0
    assert r2.ref_sample_length > 3.0 and r2.sample_length_ratio < 0.34
    assert D.reward_length_correlation([1, 2, 3, 4], [10, 20, 30, 40])["pearson"] == pytest.approx(1.0)


def test_logp_change_against_reference():
    policy, ref = hand_set_model({10: 2.0}), hand_set_model()
    pairs = [pair([5], [10, 10], [11, 11], row=0)]
    ch = D.logp_change(policy, ref, pairs)
    lse = math.log(V - 1 + math.exp(2.0))
    assert ch.chosen[0] == pytest.approx(2 * (2.0 - lse + math.log(V)), rel=1e-5)
    assert ch.rejected[0] == pytest.approx(2 * (-lse + math.log(V)), rel=1e-5)
    assert ch.summary()["chosen_down_frac"] == 0.0
