"""Closed-form, limit-case and gradient tests for preftune.ranking part 2: GroCo (P68), UNPG (P50),
dual-head KD (P17), P2C (P49), PLD denoising (P71), SAF (P62), IBCL (P75).

Expected values are written out here with ``math`` on Python floats from the papers' equations (as quoted in
each module's docstring), never by calling the function under test.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from preftune.errors import ConfigError
from preftune.ranking import denoise, dual_head_kd, groco, ibcl, p2c, saf, unpg


def T(x):
    return torch.tensor(x, dtype=torch.float64)


def close(got, want, rtol=1e-6, atol=1e-9):
    torch.testing.assert_close(got.double() if torch.is_tensor(got) else T(got), T(want), rtol=rtol, atol=atol)


def cauchy(a, b, s):  # P68: probability that a comparator keeps (a, b) in place
    return 0.5 + math.atan(s * (b - a)) / math.pi


def sig(x):
    return 1 / (1 + math.exp(-x))


# ============================================================================ GroCo (P68)
def test_diff_sort_two_elements_closed_form():
    a, b, s = 0.7, 0.2, 3.0
    al = cauchy(a, b, s)
    v, Q = groco.diff_sort(T([[a, b]]), s)
    close(v[0], [al * a + (1 - al) * b, (1 - al) * a + al * b])
    close(Q[0], [[al, 1 - al], [1 - al, al]])


def test_diff_sort_three_elements_by_hand():
    # odd-even transposition network for n = 3: comparators (0,1), then (1,2), then (0,1)
    x, s = [2.0, 0.5, 1.0], 2.0
    v = list(x)
    P = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    for lo in (0, 1, 0):
        hi = lo + 1
        al = cauchy(v[lo], v[hi], s)
        v[lo], v[hi] = al * v[lo] + (1 - al) * v[hi], (1 - al) * v[lo] + al * v[hi]
        for i in range(3):
            P[i][lo], P[i][hi] = al * P[i][lo] + (1 - al) * P[i][hi], (1 - al) * P[i][lo] + al * P[i][hi]
    got_v, got_Q = groco.diff_sort(T([x]), s)
    close(got_v[0], v)
    close(got_Q[0], P)
    close(got_Q[0].sum(0), [1.0, 1.0, 1.0])  # doubly stochastic
    close(got_Q[0].sum(1), [1.0, 1.0, 1.0])


def test_groco_one_positive_one_negative_is_minus_log_alpha():
    # x = [neg, pos]: q_neg = (alpha, 1 - alpha), q_pos = (1 - alpha, alpha) -> both BCE terms are -log(alpha)
    pos, neg, s = 0.4, 0.1, 1.0
    al = cauchy(neg, pos, s)
    got = groco.groco_loss(T([[neg, pos]]), torch.tensor([[0, 1]]), steepness=s, topk_neg=1)
    close(got, -math.log(al))


def test_groco_only_topk_negatives_count_and_order_inside_rows_is_free():
    lab = torch.tensor([[1, 0, 0, 0, 1]])
    a = groco.groco_loss(T([[0.9, 0.8, 0.1, -0.5, 0.6]]), lab, topk_neg=1)
    b = groco.groco_loss(T([[0.9, 0.8, -3.0, -0.7, 0.6]]), lab, topk_neg=1)  # easy negatives changed
    close(a, float(b))
    perm = [4, 2, 0, 3, 1]
    c = groco.groco_loss(T([[0.9, 0.8, 0.1, -0.5, 0.6]])[:, perm], lab[:, perm], topk_neg=1)
    close(c, float(a))


def test_groco_limits_and_gradient_directions():
    lab = torch.tensor([[1, 1, 0, 0]])
    losses = [float(groco.groco_loss(T([[m, m + 0.1, 0.0, -0.1]]), lab, topk_neg=2)) for m in (-2.0, 0.0, 2.0, 50.0)]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.02 and losses[0] > 1.0
    s = T([[0.2, 0.3, 0.25, 0.1]]).requires_grad_(True)
    groco.groco_loss(s, lab, topk_neg=2).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, 1] < 0 and s.grad[0, 2] > 0 and s.grad[0, 3] > 0


def test_groco_validation():
    with pytest.raises(ConfigError, match="same number"):
        groco.groco_loss(T([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1, 0], [1, 1]]))
    with pytest.raises(ConfigError, match="topk_neg"):
        groco.groco_loss(T([[1.0, 0.0]]), torch.tensor([[1, 0]]), topk_neg=2)
    with pytest.raises(ConfigError, match="steepness"):
        groco.GroCoLoss(steepness=0)


# ============================================================================ UNPG (P50)
def test_box_whisker_filter_drops_outliers():
    # sorted [0, .1, .2, .3, 5]: Q1 = s[1] = .1, Q3 = s[3] = .3, IQR .2 -> keep [-.2, .6]
    got = unpg.box_whisker_filter(T([0.3, 5.0, 0.0, 0.2, 0.1]), whisker=1.5)
    close(got, [0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="whisker"):
        unpg.box_whisker_filter(T([0.0]), whisker=-1)


def test_unpg_loss_closed_form():
    x = [[1.0, 0.0], [0.6, 0.8]]           # unit vectors, cos(x0, x1) = 0.6, labels differ
    W = [[1.0, 0.0], [0.0, 1.0]]
    y, s, m = [0, 1], 4.0, 0.2
    cos = [[x[i][0] * W[j][0] + x[i][1] * W[j][1] for j in range(2)] for i in range(2)]
    sn = 0.6
    want = 0.0
    for i in range(2):
        logits = [cos[i][j] - (m if j == y[i] else 0.0) for j in range(2)] + [sn]
        want += -(s * logits[y[i]] - math.log(sum(math.exp(s * z) for z in logits)))
    want /= 2
    cl = unpg.margin_cosine_logits(T(x), T(W), torch.tensor(y), m, "cosface")
    close(unpg.unpg_loss(cl, T(x), torch.tensor(y), scale=s), want)


def test_unpg_reduces_to_margin_loss_without_negative_pairs_and_arcface_margin():
    x, W, y = T([[1.0, 2.0], [2.0, 1.0]]), T([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1])
    cl = unpg.margin_cosine_logits(x, W, y, 0.3, "cosface")
    close(unpg.unpg_loss(cl, x, y, scale=8.0), float(F.cross_entropy(8.0 * cl, y)))
    c = 2 / math.sqrt(5)  # cos(x0, W1)
    arc = unpg.margin_cosine_logits(x[:1], W, y[:1], 0.3, "arcface")
    close(arc[0], [1 / math.sqrt(5), math.cos(math.acos(c) + 0.3)])


def test_unpg_gradient_pushes_different_labels_apart():
    x = T([[1.0, 0.1], [0.9, 0.3]]).requires_grad_(True)
    W = T([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    unpg.unpg_loss(unpg.margin_cosine_logits(x, W, y, 0.0), x, y, scale=4.0).backward()
    g_unpg = x.grad.clone()
    x.grad = None
    F.cross_entropy(4.0 * unpg.margin_cosine_logits(x, W, y, 0.0), y).backward()
    extra = g_unpg - x.grad                  # the part the batch negative pair adds
    z = F.normalize(x.detach(), dim=-1)
    # descending along -extra lowers cos(x0, x1): the extra gradient has a positive component along d cos/dx
    dcos0 = (z[1] - (z[0] @ z[1]) * z[0]) / x.detach()[0].norm()
    assert float(extra[0] @ dcos0) > 0
    with pytest.raises(ConfigError, match="margin"):
        unpg.UNPGHead(4, 3, margin=1.5)


# ============================================================================ dual-head KD (P17)
def test_binary_kl_and_norm_closed_form():
    zs, zt, Tt = [0.5, -1.0], [1.5, 0.0], 2.0

    def bkl(p, q):
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    want = Tt ** 2 * sum(bkl(sig(t / Tt), sig(s / Tt)) for s, t in zip(zs, zt))
    close(dual_head_kd.binary_kl(T([zs]), T([zt]), Tt), want)
    want_n = Tt ** 2 * sum(bkl(0.5, sig((s - t) / Tt)) for s, t in zip(zs, zt))
    close(dual_head_kd.binary_kl_norm(T([zs]), T([zt]), Tt), want_n)
    close(dual_head_kd.binary_kl_norm(T([zt]), T([zt]), Tt), 0.0)


def test_kd_kl_closed_form():
    zs, zt, Tt = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5], 4.0

    def sm(z):
        e = [math.exp(v / Tt) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = sm(zs), sm(zt)
    want = Tt ** 2 * sum(p * math.log(p / q) for p, q in zip(pt, ps))
    close(dual_head_kd.kd_kl(T([zs]), T([zt]), Tt), want)


def test_dual_head_separates_head_gradients():
    torch.manual_seed(0)
    h = torch.randn(5, 4, requires_grad=True)
    heads = dual_head_kd.DualHead(4, 3)
    teacher, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    main, aux = heads(h)
    dual_head_kd.DualHeadKDLoss(alpha=1.0)(main, aux, teacher, y).backward()
    g_main, g_aux, g_h = heads.main.weight.grad.clone(), heads.aux.weight.grad.clone(), h.grad.clone()
    heads.zero_grad()
    h.grad = None
    main, aux = heads(h)
    F.cross_entropy(main, y).backward()
    torch.testing.assert_close(g_main, heads.main.weight.grad)       # main head: CE only
    assert heads.aux.weight.grad is None or heads.aux.weight.grad.abs().sum() == 0
    assert g_aux.abs().sum() > 0                                      # aux head: logit-level loss only
    assert (g_h - h.grad).abs().sum() > 0                             # backbone gets both
    with pytest.raises(ConfigError, match="alpha"):
        dual_head_kd.DualHeadKDLoss(alpha=-1)
    with pytest.raises(ConfigError, match="temperature"):
        dual_head_kd.binary_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_binary_kl_norm_gradient_moves_aux_towards_teacher():
    zs = T([[2.0, -1.0]]).requires_grad_(True)
    dual_head_kd.binary_kl_norm(zs, T([[0.0, 0.0]]), 2.0).backward()
    assert zs.grad[0, 0] > 0 and zs.grad[0, 1] < 0


# ============================================================================ P2C (P49)
def test_p2c_closed_form_two_heads():
    l1, l2 = [[1.0, 0.0], [0.2, 0.4]], [[0.0, 0.5], [1.0, -1.0]]
    y, pref = [0, 1], [1, 2]
    r1, r2 = [[0.3, -0.2], [0.1, 0.4]], [[-0.1, 0.0], [0.5, 0.2]]    # [H, B]
    lp, lc, ld = 0.7, 0.5, 0.2

    def sm(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    def ce(z, k):
        return -math.log(sm(z)[k])

    cls = sum(0.5 * (ce(l1[b], y[b]) + ce(l2[b], y[b])) for b in range(2)) / 2
    t = [1.0, 0.5]
    P = [[sig(r1[h][b] - r2[h][b]) for b in range(2)] for h in range(2)]  # P(x1 > x2)
    prf = sum(-(t[b] * math.log(P[h][b]) + (1 - t[b]) * math.log(1 - P[h][b])) for h in range(2) for b in range(2)) / 4
    D = [sm(l1[b])[y[b]] - sm(l2[b])[y[b]] for b in range(2)]
    cons = (max(0.0, -D[0]) + abs(D[1])) / 2
    div = 0.0
    for h in range(2):
        for g in range(2):
            if h != g:
                div += sum(-(P[h][b] * math.log(P[g][b]) + (1 - P[h][b]) * math.log(1 - P[g][b])) for b in range(2)) / 2
    div /= 2
    loss, parts = p2c.p2c_loss(T(l1), T(l2), torch.tensor(y), T(r1), T(r2), torch.tensor(pref),
                               lambda_pref=lp, lambda_cons=lc, lambda_div=ld)
    close(parts["cls"], cls)
    close(parts["pref"], prf)
    close(parts["cons"], cons)
    close(parts["div"], div)
    close(loss, cls + lp * prf + lc * cons - ld * div)


def test_p2c_one_head_no_diversity_and_gradient_direction():
    r1 = T([0.0, 0.0]).requires_grad_(True)
    loss, parts = p2c.p2c_loss(T([[0.0, 0.0]] * 2), T([[0.0, 0.0]] * 2), torch.tensor([0, 1]), r1, T([0.0, 0.0]),
                               torch.tensor([1, 0]), lambda_cons=0.0)
    assert float(parts["div"]) == 0.0
    close(parts["pref"], math.log(2))
    loss.backward()
    assert r1.grad[0] < 0 < r1.grad[1]   # raise r(x1) where x1 is preferred, lower it where x2 is
    with pytest.raises(ConfigError, match="preference labels"):
        p2c.preference_targets(torch.tensor([3]))
    with pytest.raises(ConfigError, match="lambda_div"):
        p2c.p2c_loss(T([[0.0, 0.0]]), T([[0.0, 0.0]]), torch.tensor([0]), T([0.0]), T([0.0]), torch.tensor([1]),
                     lambda_div=-1)


def test_preference_heads_shape_and_label_conditioning():
    torch.manual_seed(0)
    heads = p2c.PreferenceHeads(4, 3, heads=2)
    h = torch.randn(5, 4)
    out = heads(h, torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == (2, 5) and bool((out.abs() <= 1).all())
    assert not torch.allclose(heads(h, torch.zeros(5, dtype=torch.long)), heads(h, torch.ones(5, dtype=torch.long)))


# ============================================================================ PLD (P71)
def test_bpr_and_pld_probabilities_closed_form():
    close(denoise.bpr_loss(T([2.0]), T([0.5])), [math.log1p(math.exp(-1.5))])
    losses, tau = [0.2, 1.0, 0.5], 0.5
    e = [math.exp(-v / tau) for v in losses]
    close(denoise.pld_probabilities(T([losses]), tau)[0], [v / sum(e) for v in e])
    close(denoise.pld_probabilities(T([losses]), 1e6)[0], [1 / 3] * 3, rtol=1e-5)     # tau -> inf: uniform
    assert denoise.pld_select(T([losses] * 4), 1e-4).tolist() == [0, 0, 0, 0]      # tau -> 0: lowest loss
    with pytest.raises(ConfigError, match="temperature"):
        denoise.pld_probabilities(T([losses]), 0.0)


def test_pld_sampler_step_by_step():
    g = torch.Generator().manual_seed(3)
    items = [[0, 1, 2, 3, 4], [5, 6]]
    S = denoise.PLDSampler(items, 10, k=3, temperature=1e-4, generator=g)
    users, cand, neg = S.sample(6, users=torch.tensor([0, 1, 0, 1, 0, 1]))
    assert cand.shape == (6, 3)
    for u, c, j in zip(users.tolist(), cand.tolist(), neg.tolist()):
        assert set(c) <= set(items[u]) and j not in items[u]
        if u == 0:
            assert len(set(c)) == 3           # enough items: no replacement
    # the loss of each candidate = its item id; tau tiny -> the kept item is the row's smallest id
    kept = S.select(cand, cand.double())
    assert kept.tolist() == cand.min(1).values.tolist()


def test_pld_resampling_downweights_high_loss_items_in_a_training_step():
    # one user, a clean item 0 (low loss) and a noisy item 1 (high loss): PLD keeps item 0 far more often
    g = torch.Generator().manual_seed(0)
    S = denoise.PLDSampler([[0, 1]], 5, k=2, temperature=0.5, generator=g)
    kept = [int(S.select(torch.tensor([[0, 1]]), T([[0.1, 2.0]]))[0]) for _ in range(400)]
    frac = kept.count(0) / 400
    p0 = math.exp(-0.1 / 0.5) / (math.exp(-0.1 / 0.5) + math.exp(-2.0 / 0.5))
    assert abs(frac - p0) < 0.05
    with pytest.raises(ConfigError, match="no training interactions"):
        denoise.PLDSampler([[]], 5)
    with pytest.raises(ConfigError, match="every item"):
        denoise.PLDSampler([[0, 1]], 2)


# ============================================================================ SAF (P62)
def test_trajectory_loss_closed_form_and_zero_at_equal_outputs():
    z, past, tau = [1.0, -0.5, 0.2], [0.0, 0.3, 1.0], 2.0

    def sm(v):
        e = [math.exp(a / tau) for a in v]
        return [a / sum(e) for a in e]

    p, q = sm(past), sm(z)
    close(saf.trajectory_loss(T([z]), T([past]), tau), tau ** 2 * sum(a * math.log(a / b) for a, b in zip(p, q)))
    close(saf.trajectory_loss(T([z]), T([z]), tau), 0.0)


def test_trajectory_buffer_step_by_step():
    buf = saf.TrajectoryBuffer(n_samples=3, n_classes=2, lag=2, dtype=torch.float64)
    idx = torch.tensor([0, 2])
    _, valid = buf.reference(idx, epoch=1)                           # epoch -1 does not exist
    assert not valid.any()
    for e in range(3):
        buf.record(idx, T([[e, 0.0], [e, 1.0]]), epoch=e)
    past, valid = buf.reference(torch.tensor([0, 1, 2]), epoch=2)   # epoch 0's outputs
    close(past, [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert valid.tolist() == [True, False, True]                     # sample 1 was never recorded
    buf.record(idx, T([[3.0, 0.0], [3.0, 1.0]]), epoch=3)            # overwrites epoch 0's slot
    past, valid = buf.reference(idx, epoch=3)                        # epoch 1's outputs
    close(past, [[1.0, 0.0], [1.0, 1.0]])
    assert valid.all()
    _, valid = buf.reference(idx, epoch=5)                           # epoch 3's slot holds epoch 3, not 3
    assert valid.all()
    _, valid = buf.reference(idx, epoch=6)                           # would need epoch 4: never written
    assert not valid.any()


def test_saf_schedule_value_and_gradient():
    s = saf.SAF(n_samples=2, n_classes=2, lam=0.5, temperature=1.0, lag=1, start_epoch=1, end_epoch=3)
    idx = torch.tensor([0, 1])
    first = T([[1.0, 0.0], [0.0, 1.0]])
    assert float(s(first, idx, epoch=0)) == 0.0                       # before start: records only
    z = T([[0.0, 0.0], [0.0, 0.0]]).requires_grad_(True)
    val = s(z, idx, epoch=1)
    p = [sig(1.0), 1 - sig(1.0)]
    kl = sum(a * math.log(a / 0.5) for a in p)                        # both rows have the same KL
    close(val, 0.5 * kl)
    val.backward()
    # d/dz KL(p || softmax(z)) = softmax(z) - p: the gradient pulls z towards the past outputs
    close(z.grad, [[0.5 * (0.5 - p[0]) / 2, 0.5 * (0.5 - p[1]) / 2], [0.5 * (0.5 - p[1]) / 2, 0.5 * (0.5 - p[0]) / 2]])
    assert float(s(T([[5.0, 0.0], [0.0, 5.0]]), idx, epoch=3)) == 0.0  # after end_epoch
    with pytest.raises(ConfigError, match="start_epoch"):
        saf.SAF(2, 2, lag=3, start_epoch=2)
    with pytest.raises(ConfigError, match="lam"):
        saf.SAF(2, 2, lam=-0.1)


# ============================================================================ IBCL (P75)
def G(mu, sigma):
    return ibcl.DiagGaussian({"w": T(mu)}, {"w": T(sigma)})


def test_ibcl_distance_combination_hdr_kl_closed_form():
    a, b = G([0.0, 1.0], [1.0, 1.0]), G([3.0, 5.0], [1.0, 2.0])
    close(a.distance(b), math.sqrt(9 + 16) / 2 + math.sqrt(0 + 1) / 2)
    c = ibcl.convex_combination([a, b], [0.25, 0.75])
    close(c.mu["w"], [2.25, 4.0])
    close(c.sigma["w"], [1.0, 1.75])
    low, high = ibcl.hdr(c, alpha=0.05)
    z = 1.959963984540054                                  # Phi^-1(0.975)
    close(low["w"], [2.25 - z, 4.0 - 1.75 * z])
    close(high["w"], [2.25 + z, 4.0 + 1.75 * z])
    kl = sum(math.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
             for mq, sq, mp, sp in zip([0.0, 1.0], [1.0, 1.0], [3.0, 5.0], [1.0, 2.0]))
    close(ibcl.kl_diag(a, b), kl)
    with pytest.raises(ConfigError, match="sum to 1"):
        ibcl.convex_combination([a, b], [0.5, 0.6])
    with pytest.raises(ConfigError, match="alpha"):
        ibcl.hdr(c, alpha=1.0)


def test_knowledge_base_step_by_step():
    kb = ibcl.KnowledgeBase(threshold=0.1)
    t1 = [G([0.0, 0.0], [1.0, 1.0]), G([1.0, 0.0], [1.0, 1.0])]
    assert kb.add_task(t1) == [0, 1]
    t2 = [G([0.0, 0.05], [1.0, 1.0]), G([4.0, 4.0], [0.5, 0.5])]   # first within d = 0.1 of extreme 0
    assert kb.add_task(t2) == [0, 2]
    assert len(kb.extremes) == 3
    assert [p.mu["w"].tolist() for p in kb.priors()] == [[0.0, 0.0], [4.0, 4.0]]
    # w = (0.5, 0.5): coefficients 1/4 on extremes 0, 1 (task 1) and 0, 2 (task 2)
    want_mu = [0.25 * (0 + 1 + 0 + 4), 0.25 * (0 + 0 + 0 + 4)]
    want_sigma = [0.25 * (1 + 1 + 1 + 0.5)] * 2
    q = kb.combine([0.5, 0.5])
    close(q.mu["w"], want_mu)
    close(q.sigma["w"], want_sigma)
    close(kb.zero_shot([0.5, 0.5])["w"], want_mu)
    g = torch.Generator().manual_seed(0)
    low, high = ibcl.hdr(q, 0.1)
    for _ in range(5):
        w = kb.zero_shot([0.5, 0.5], mode="sample", alpha=0.1, generator=g)["w"]
        assert bool((w >= low["w"]).all() and (w <= high["w"]).all())
    with pytest.raises(ConfigError, match="one weight per task"):
        kb.combine([1.0])
    with pytest.raises(ConfigError, match="same number"):
        kb.add_task([t1[0]])


@pytest.mark.slow
def test_fit_posterior_learns_a_separable_task():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).float()
    model = torch.nn.Linear(2, 1)
    nll = lambda out, t: F.binary_cross_entropy_with_logits(out.squeeze(-1), t)  # noqa: E731
    q = ibcl.fit_posterior(model, x, y, nll, ibcl.gaussian_prior(model, 1.0), steps=120, lr=0.1, generator=g)
    acc = ((torch.func.functional_call(model, q.mu, (x,)).squeeze(-1) > 0).float() == y).float().mean()
    assert acc > 0.95
    assert float(q.mu["weight"][0, 0]) > 0 > float(q.mu["weight"][0, 1])
