"""preftune.ranking part 1, stateless losses: RankList (P22), PLD (P45), MW loss (P43), LDR-KL (P44), the
P27 metrics, and the InfoNCE / NT-Xent baselines. Each value is recomputed here from the formula written out
in plain Python floats; plus limit cases and gradient directions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from preftune.errors import ConfigError
from preftune.ranking.infonce import info_nce, nt_xent
from preftune.ranking.ldr import ldr_kl_loss
from preftune.ranking.mann_whitney import expected_calibration_error, mw_loss, roc_auc
from preftune.ranking.pld import kd_loss, pld_loss, teacher_optimal_permutation
from preftune.ranking.ranklist import listnet_loss, ndcg_at_k, progressive_skip, ranklist_loss, ranknet_loss
from preftune.ranking.uniformity import negative_penalty_weights, tolerance, uniformity


def softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x


def lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ============================================================================ P22 RankList

def _ranklist_by_hand(s, rel, valid, max_skip, exact):
    # order by relevance, descending, ties in input order; compare i only with items <= max_skip positions below
    # and of strictly lower relevance
    idx = [i for i in sorted(range(len(s)), key=lambda i: -rel[i]) if valid[i]]
    tot = 0.0
    for a, i in enumerate(idx):
        window = [j for b, j in enumerate(idx) if 1 <= b - a <= max_skip and rel[i] > rel[j]]
        if exact:
            tot += sum(softplus(s[j] - s[i]) for j in window)
        else:
            tot += math.log(1 + sum(math.exp(s[j] - s[i]) for j in window))
    return tot


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("max_skip", [1, 2, None])
def test_ranklist_matches_the_formula_written_out(exact, max_skip):
    torch.manual_seed(0)
    s = torch.randn(3, 6, dtype=torch.float64)
    rel = torch.tensor([[0, 3, 1, 2, 2, 0], [4, 4, 1, 0, 3, 2], [1, 0, 2, 0, 1, 3]], dtype=torch.float64)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[2, 5] = valid[2, 0] = False
    got = ranklist_loss(s, rel, max_skip=max_skip, approx="exact" if exact else "lse", mask=valid, reduction="none")
    for q in range(3):
        want = _ranklist_by_hand(s[q].tolist(), rel[q].tolist(), valid[q].tolist(), max_skip or 5, exact)
        assert got[q].item() == pytest.approx(want, rel=1e-10)


def test_ranklist_full_window_is_listmle_for_a_strict_order():
    # with distinct grades and the whole list as window, the lse form is the Plackett-Luce NLL of the true order
    s = [0.3, -1.0, 2.0, 0.5]
    rel = [1.0, 3.0, 0.0, 2.0]
    order = sorted(range(4), key=lambda i: -rel[i])
    want = sum(lse([s[j] for j in order[k:]]) - s[order[k]] for k in range(4))
    got = ranklist_loss(torch.tensor([s], dtype=torch.float64), torch.tensor([rel], dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_ranklist_limits_and_gradient_direction():
    rel = torch.tensor([[0.0, 2.0, 1.0]])
    perfect = torch.tensor([[-50.0, 50.0, 0.0]])
    assert ranklist_loss(perfect, rel).item() < 1e-20
    s = torch.zeros(1, 3, requires_grad=True)
    ranklist_loss(s, rel).backward()
    assert s.grad[0, 1] < 0 < s.grad[0, 0]            # raise the best, lower the worst
    # one grade only: nothing to compare
    assert ranklist_loss(torch.randn(2, 4), torch.ones(2, 4)).item() == 0.0


def test_progressive_skip_grows_from_neighbours_to_the_whole_list():
    # 1 + round(t/4 * 7) for t = 0..4 (Python rounds 3.5 to 4 and 5.25 to 5)
    assert [progressive_skip(t, 5, 9) for t in range(5)] == [1, 3, 5, 6, 8]
    assert progressive_skip(10, 5, 9) == 8
    with pytest.raises(ConfigError):
        progressive_skip(0, 0, 9)


def test_ranklist_rejects_bad_hyperparameters():
    with pytest.raises(ConfigError, match="max_skip"):
        ranklist_loss(torch.zeros(1, 3), torch.zeros(1, 3), max_skip=0)
    with pytest.raises(ConfigError, match="approx"):
        ranklist_loss(torch.zeros(1, 3), torch.zeros(1, 3), approx="max")
    with pytest.raises(ConfigError, match="queries, candidates"):
        ranklist_loss(torch.zeros(3), torch.zeros(3))


def test_ranknet_listnet_and_ndcg_by_hand():
    s, rel = [0.5, -0.2, 1.0], [2.0, 0.0, 1.0]
    pairs = [(i, j) for i in range(3) for j in range(3) if rel[i] > rel[j]]
    want_rn = sum(softplus(s[j] - s[i]) for i, j in pairs) / len(pairs)
    t = [math.exp(r) / sum(math.exp(x) for x in rel) for r in rel]
    want_ln = -sum(t[i] * (s[i] - lse(s)) for i in range(3))
    S, R = torch.tensor([s], dtype=torch.float64), torch.tensor([rel], dtype=torch.float64)
    assert ranknet_loss(S, R).item() == pytest.approx(want_rn, rel=1e-12)
    assert listnet_loss(S, R).item() == pytest.approx(want_ln, rel=1e-12)
    # predicted order: item 2 (rel 1), item 0 (rel 2), item 1 (rel 0)
    dcg = (2 ** 1 - 1) / math.log2(2) + (2 ** 2 - 1) / math.log2(3)
    ideal = (2 ** 2 - 1) / math.log2(2) + (2 ** 1 - 1) / math.log2(3)
    assert ndcg_at_k(S, R).item() == pytest.approx(dcg / ideal, rel=1e-6)
    assert ndcg_at_k(S, R, 1).item() == pytest.approx(1 / 3, rel=1e-6)


# ============================================================================ P45 PLD

def test_pld_matches_the_formula_written_out():
    torch.manual_seed(1)
    s = torch.randn(3, 5, dtype=torch.float64)
    t = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([2, 0, 4])
    T = 2.0
    got = pld_loss(s, t, y, temperature=T, reduction="none")
    for b in range(3):
        tb, sb = t[b].tolist(), s[b].tolist()
        pi = [int(y[b])] + sorted([c for c in range(5) if c != int(y[b])], key=lambda c: -tb[c])
        z = sum(math.exp(x / T) for x in tb)
        alpha = [math.exp(tb[c] / T) / z for c in pi]
        want = sum(alpha[k] * (lse([sb[c] for c in pi[k:]]) - sb[pi[k]]) for k in range(5))
        assert got[b].item() == pytest.approx(want, rel=1e-10)
    assert teacher_optimal_permutation(t, y)[:, 0].tolist() == y.tolist()


def test_pld_is_translation_invariant_and_is_weighted_ce_for_two_classes():
    torch.manual_seed(2)
    s, t, y = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 6, (4,))
    assert pld_loss(s + 3.7, t, y).item() == pytest.approx(pld_loss(s, t, y).item(), rel=1e-12)
    s2, t2 = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    y2 = torch.randint(0, 2, (5,))
    ce = F.cross_entropy(s2, y2, reduction="none")
    w = torch.softmax(t2, 1).gather(1, y2[:, None]).squeeze(1)
    assert torch.allclose(pld_loss(s2, t2, y2, reduction="none"), w * ce)


def test_pld_gradient_raises_the_true_label_and_leaves_the_teacher_alone():
    t = torch.tensor([[3.0, 1.0, 0.0, -1.0]], requires_grad=True)
    # teacher agrees with the label: the label's logit gets the strongest push up
    s = torch.zeros(1, 4, requires_grad=True)
    pld_loss(s, t, torch.tensor([0])).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, 0] == s.grad.min()
    assert t.grad is None
    # teacher disagrees: the label is still pushed up, the teacher's favourite more (its weight is larger);
    # the gradient sums to zero (translation invariance) and the least-liked class is pushed down most
    s = torch.zeros(1, 4, requires_grad=True)
    pld_loss(s, t, torch.tensor([2])).backward()
    assert s.grad[0, 2] < 0 and s.grad[0, 0] < s.grad[0, 2]
    assert s.grad.sum().item() == pytest.approx(0.0, abs=1e-6) and s.grad[0, 3] == s.grad.max()
    with pytest.raises(ConfigError, match="temperature"):
        pld_loss(s, t, torch.tensor([2]), temperature=0.0)


def test_kd_loss_by_hand():
    s, t, y, a, T = [0.2, -0.5, 1.0], [1.0, 0.0, 2.0], 1, 0.3, 2.0
    p = [math.exp(x / T) / sum(math.exp(v / T) for v in t) for x in t]
    logq = [x / T - lse([v / T for v in s]) for x in s]
    kl = sum(p[i] * (math.log(p[i]) - logq[i]) for i in range(3))
    want = (1 - a) * (lse(s) - s[y]) + a * T * T * kl
    got = kd_loss(torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64), torch.tensor([y]),
                  alpha=a, temperature=T)
    assert got.item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([0]), alpha=1.5)


# ============================================================================ P43 MW loss

def test_mw_loss_global_and_per_query_by_hand():
    s = [[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]]
    y = [[1, 0, 0], [0, 1, 1]]
    T = 0.5
    pos = [s[q][c] for q in range(2) for c in range(3) if y[q][c]]
    neg = [s[q][c] for q in range(2) for c in range(3) if not y[q][c]]
    want_g = sum(softplus(-(p - n) / T) for p in pos for n in neg) / (len(pos) * len(neg))
    per_pair = [softplus(-(s[q][i] - s[q][j]) / T) for q in range(2) for i in range(3) for j in range(3)
                if y[q][i] and not y[q][j]]
    want_q = sum(per_pair) / len(per_pair)
    S, Y = torch.tensor(s, dtype=torch.float64), torch.tensor(y)
    assert mw_loss(S, Y, temperature=T).item() == pytest.approx(want_g, rel=1e-12)
    assert mw_loss(S, Y, temperature=T, scope="query").item() == pytest.approx(want_q, rel=1e-12)


def test_mw_loss_bounds_the_area_over_the_curve_and_pushes_positives_up():
    torch.manual_seed(3)
    s = torch.randn(6, 6, requires_grad=True)
    y = torch.eye(6)
    loss = mw_loss(s, y)
    assert loss.item() / math.log(2) >= 1 - roc_auc(s, y).item()
    loss.backward()
    assert (s.grad[y > 0] < 0).all() and (s.grad[y == 0] > 0).all()
    with pytest.raises(ConfigError, match="scope"):
        mw_loss(s, y, scope="row")
    with pytest.raises(ConfigError, match="positive and one negative"):
        mw_loss(s, torch.zeros(6, 6))


def test_roc_auc_counts_pairs_and_half_ties():
    s = [0.1, 0.4, 0.4, 0.8, 0.3, 0.4]
    y = [0, 1, 0, 1, 1, 0]
    P = [a for a, b in zip(s, y) if b]
    N = [a for a, b in zip(s, y) if not b]
    want = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in P for n in N) / (len(P) * len(N))
    assert roc_auc(torch.tensor(s), torch.tensor(y)).item() == pytest.approx(want)


def test_expected_calibration_error_by_hand():
    p = [0.05, 0.15, 0.12, 0.95, 0.9, 0.55]
    y = [0, 1, 0, 1, 1, 0]
    # bins of width 0.1: {0.05}, {0.15, 0.12}, {0.55}, {0.95, 0.9}
    want = (abs(0 - 0.05) + abs(1 - (0.15 + 0.12)) + abs(0 - 0.55) + abs(2 - (0.95 + 0.9))) / 6
    got = expected_calibration_error(torch.tensor(p, dtype=torch.float64), torch.tensor(y))
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_info_nce_and_nt_xent_by_hand():
    s, T = [[0.9, 0.1, -0.2], [0.3, 0.5, 0.0]], 0.1
    y = [[1, 0, 0], [0, 1, 1]]
    terms = [lse([x / T for x in s[q]]) - s[q][c] / T for q in range(2) for c in range(3) if y[q][c]]
    got = info_nce(torch.tensor(s, dtype=torch.float64), torch.tensor(y), temperature=T)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    torch.manual_seed(4)
    z1, z2 = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    z = [F.normalize(v, dim=0).tolist() for v in torch.cat([z1, z2])]
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))
    tot = 0.0
    for i in range(6):
        j = (i + 3) % 6
        tot += lse([cos(z[i], z[k]) / 0.5 for k in range(6) if k != i]) - cos(z[i], z[j]) / 0.5
    assert nt_xent(z1, z2, temperature=0.5).item() == pytest.approx(tot / 6, rel=1e-10)


# ============================================================================ P44 LDR-KL (fixed temperature)

def test_ldr_kl_matches_the_formula_and_its_limits():
    f, y, lam, c = [1.0, -0.5, 2.0, 0.3], 1, 0.7, 0.4
    delta = [f[k] - f[y] + (c if k != y else 0.0) for k in range(4)]
    want = lam * (lse([d / lam for d in delta]) - math.log(4))
    F_, Y = torch.tensor([f], dtype=torch.float64), torch.tensor([y])
    assert ldr_kl_loss(F_, Y, lam=lam, margin=c, normalize="none").item() == pytest.approx(want, rel=1e-12)
    # lam -> 0: the Crammer-Singer hinge max_k delta_k; lam -> inf: the mean of delta
    assert ldr_kl_loss(F_, Y, lam=1e-4, margin=c, normalize="none").item() == pytest.approx(max(delta), abs=1e-3)
    assert ldr_kl_loss(F_, Y, lam=1e5, margin=c, normalize="none").item() == pytest.approx(sum(delta) / 4, abs=1e-4)
    # lam = 1, no margin, raw logits: cross-entropy minus log K
    ce = F.cross_entropy(F_, Y).item()
    assert ldr_kl_loss(F_, Y, lam=1.0, margin=0.0, normalize="none").item() == pytest.approx(ce - math.log(4))


def test_ldr_kl_softplus_normalisation_by_hand_and_gradient():
    f, y = [0.3, -1.2, 2.0], 2
    g = [softplus(x) for x in f]
    g = [x / (sum(g) / 3) for x in g]
    delta = [g[k] - g[y] + (0.1 if k != y else 0.0) for k in range(3)]
    want = 10 * (lse([d / 10 for d in delta]) - math.log(3))
    got = ldr_kl_loss(torch.tensor([f], dtype=torch.float64), torch.tensor([y]), lam=10.0, margin=0.1)
    assert got.item() == pytest.approx(want, rel=1e-12)
    s = torch.zeros(1, 3, requires_grad=True)
    ldr_kl_loss(s, torch.tensor([0]), lam=1.0, margin=1.0, normalize="none").backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]
    with pytest.raises(ConfigError, match="lam"):
        ldr_kl_loss(s, torch.tensor([0]), lam=0.0)
    with pytest.raises(ConfigError, match="normalize"):
        ldr_kl_loss(s, torch.tensor([0]), normalize="max")


# ============================================================================ P27 metrics

def test_uniformity_and_tolerance_by_hand():
    z = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]
    labels = [0, 0, 1, 1]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    sq = [sum((a - b) ** 2 for a, b in zip(z[i], z[j])) for i, j in pairs]
    want_u = math.log(sum(math.exp(-2 * d) for d in sq) / len(sq))
    same = [sum(a * b for a, b in zip(z[i], z[j])) for i in range(4) for j in range(4)
            if i != j and labels[i] == labels[j]]
    Z = torch.tensor(z, dtype=torch.float64)
    assert uniformity(Z).item() == pytest.approx(want_u, rel=1e-12)
    assert tolerance(Z, torch.tensor(labels)).item() == pytest.approx(sum(same) / len(same), rel=1e-12)
    # all points equal: the least uniform (0) and the most tolerant (1)
    assert uniformity(torch.ones(5, 3)).item() == pytest.approx(0.0, abs=1e-12)
    assert tolerance(torch.ones(5, 3), torch.zeros(5)).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="same label"):
        tolerance(Z, torch.arange(4))


def test_negative_penalty_weights_are_the_infonce_gradient_and_sharpen_with_small_temperature():
    torch.manual_seed(5)
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    T = 0.3
    s = (F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T).requires_grad_(True)
    F.cross_entropy(s / T, torch.arange(5), reduction="sum").backward()
    w = negative_penalty_weights(z1, z2, temperature=T)
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(w[off], s.grad[off])
    def spread(t):
        r = negative_penalty_weights(z1, z2, temperature=t)[0, 1:]
        return (r.max() / r.min()).item()
    assert spread(0.05) > spread(0.5) > spread(5.0)


# ============================================================================ end to end

def test_ranklist_trains_a_linear_scorer_to_the_true_order():
    # a linear truth with graded labels: a few dozen gradient steps on RankList must recover most of the order.
    # Plain gradient steps on one thread: an optimiser's first step and thread contention cost seconds here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(20, 8, 5, generator=g)
        truth = x @ torch.randn(5, generator=g)
        labels = torch.bucketize(truth, torch.tensor([-1.0, 0.0, 1.0]))
        w = torch.zeros(5, requires_grad=True)
        before = ndcg_at_k(x @ w.detach() + 1e-3 * torch.randn(20, 8, generator=g), labels, 3).mean().item()
        for step in range(40):
            loss = ranklist_loss(x @ w, labels, max_skip=progressive_skip(step, 40, 8))
            loss.backward()
            with torch.no_grad():
                w -= 0.05 * w.grad
                w.grad = None
        after = ndcg_at_k(x @ w.detach(), labels, 3).mean().item()
    finally:
        torch.set_num_threads(threads)
    assert after > 0.95 and after > before + 0.1
