"""Unpaired, listwise, wrapper, token-level and auxiliary objectives; curriculum sampler. Hand formulas."""
import math

import pytest
import torch

from preftune.data.types import RankedExample
from preftune.objectives import ListStats, PairStats, UnpairedStats, build, get
from preftune.objectives.auxiliary import degrade
from preftune.objectives.curriculum import CurriculumSampler, curriculum_pairs
from preftune.objectives.wrappers import log_sum_sq_probs


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):
    return math.log(sig(x))


T = lambda v, g=False: torch.tensor(v, dtype=torch.float64, requires_grad=g)  # noqa: E731


# unpaired --------------------------------------------------------------------------------

def ustats(g=False, **kw):
    return UnpairedStats(T([-5.0, -8.0, -6.0], g), torch.tensor([True, False, False]), T([-6.0, -7.0, -6.5]),
                         torch.tensor([5, 4, 2]), kl_policy_logps=T([-6.0, -7.0, -5.0]),
                         kl_reference_logps=T([-6.5, -7.0, -5.2]), **kw)


H = [1.0, -1.0, 0.5]


def test_kto_value():
    z0 = max(0.0, ((-6.0 + 6.5) + 0 + (-5.0 + 5.2)) / 3)
    b = 0.1
    want = [1 - sig(b * (H[0] - z0)), 2 * (1 - sig(b * (z0 - H[1]))), 2 * (1 - sig(b * (z0 - H[2])))]
    out = get("kto", beta=b, undesirable_weight=2.0)(ustats())
    torch.testing.assert_close(out.loss, T(want))
    assert get("kto", kl_estimate="none").needs == ()


def test_kto_gradient_signs():
    s = ustats(g=True)
    g = torch.autograd.grad(get("kto")(s).loss.sum(), [s.policy_logps])[0]
    assert g[0] < 0 and g[1] > 0 and g[2] > 0


def test_bco_value_shift_and_udm():
    b = 0.1
    r = [b * x for x in H]
    d = sum(r) / 3
    want = [-ls(r[0] - d), -ls(-(r[1] - d)), -ls(-(r[2] - d))]
    torch.testing.assert_close(get("bco", beta=b, shift="batch")(ustats()).loss, T(want))
    obj = get("bco", beta=b)  # running mean includes this batch
    torch.testing.assert_close(obj(ustats()).loss, T(want))
    assert obj.delta == pytest.approx(d)
    w = [1.0, 20.0, 0.1]
    s = ustats(extras={"density_ratio": T(w)})
    want2 = [-ls(r[0]), 10.0 * -ls(-r[1]), 0.5 * -ls(-r[2])]  # clipped to [0.5, 10]
    torch.testing.assert_close(get("bco", beta=b, shift="none", udm=True)(s).loss, T(want2))


def test_npo_and_retain():
    b = 0.2
    forget = [-(2 / b) * ls(-b * x) for x in H]
    nll0 = 5.0 / 5
    # per-example values whose batch mean is mean_forget + lambda * retain token-mean NLL (authors' TOFU code):
    # 3 examples, 2 forget (scaled by 3/2), 1 retain of 5 tokens (scaled by lambda * 3 / 5 per summed NLL)
    torch.testing.assert_close(get("npo", beta=b)(ustats()).loss, T([0.0, 1.5 * forget[1], 1.5 * forget[2]]))
    torch.testing.assert_close(get("npo_rt", beta=b)(ustats()).loss, T([3 * nll0, 1.5 * forget[1], 1.5 * forget[2]]))
    s = ustats(g=True)
    g = torch.autograd.grad(get("npo_rt")(s).loss.sum(), [s.policy_logps])[0]
    assert g[0] < 0 and g[1] > 0 and g[2] > 0  # retain pushed up, forget pushed down


def test_npo_small_beta_tends_to_gradient_ascent():
    s = ustats(g=True)
    g = torch.autograd.grad(get("npo", beta=1e-6)(s).loss.mean(), [s.policy_logps])[0]
    assert g[1].item() == pytest.approx(0.5, rel=1e-4)  # gradient ascent on the forget mean: 1 / n_forget


# listwise --------------------------------------------------------------------------------

def lstats(g=False, valid=None):
    pol = T([[-3.0, -5.0, -4.0], [-2.0, -6.0, -1.0]], g)
    ref = T([[-4.0, -4.0, -4.0], [-3.0, -3.0, -3.0]])
    scores = torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])
    return ListStats(pol, scores, ref, valid=valid)


def test_plackett_luce_value():
    b = 0.5
    # list 0: order by score -> idx 1, 2, 0 ; rewards b*h = b*[1, -1, 0]
    r0 = [b * 1, b * -1, b * 0]
    o = [r0[1], r0[2], r0[0]]
    nll0 = -((o[0] - math.log(sum(math.exp(x) for x in o))) + (o[1] - math.log(math.exp(o[1]) + math.exp(o[2]))))
    r1 = [b * 1, b * -3, b * 2]
    nll1 = -((r1[0] - math.log(sum(math.exp(x) for x in r1))) + (r1[1] - math.log(math.exp(r1[1]) + math.exp(r1[2]))))
    torch.testing.assert_close(get("plackett_luce", beta=b)(lstats()).loss, T([nll0, nll1]))
    # padding: the masked third entry disappears -> K = 2 Plackett-Luce = DPO
    v = torch.tensor([[True, True, False], [True, True, False]])
    out = get("plackett_luce", beta=b)(lstats(valid=v)).loss
    torch.testing.assert_close(out, T([-ls(b * (-1 - 1)), -ls(b * (1 + 3))]))


def test_plackett_luce_gradient_pushes_best_up():
    s = lstats(g=True)
    g = torch.autograd.grad(get("plackett_luce")(s).loss.sum(), [s.policy_logps])[0]
    assert g[0, 1] < 0 and g[0, 0] > 0  # best (score 3) up, worst (score 1) down
    assert g[1, 0] < 0 and g[1, 2] > 0


def test_tpo_lambda_and_uniform():
    b = 0.5
    s = lstats()
    r = [[b * 1, b * -1, b * 0], [b * 1, b * -3, b * 2]]
    sc = [[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]]
    want_u, want_l = [], []
    for i in range(2):
        # the rank induced by the policy's rewards (ties by label score), as LiPO-lambda defines it
        order = sorted(range(3), key=lambda k: (-r[i][k], -sc[i][k], k))
        rank = {k: p + 1 for p, k in enumerate(order)}
        tot_u, tot_l, n = 0.0, 0.0, 0
        for a in range(3):
            for c in range(3):
                if sc[i][a] > sc[i][c]:
                    term = -ls(r[i][a] - r[i][c])
                    lam = abs((2 ** sc[i][a] - 1) - (2 ** sc[i][c] - 1)) * abs(
                        1 / math.log(1 + rank[a]) - 1 / math.log(1 + rank[c]))
                    tot_u += term
                    tot_l += lam * term
                    n += 1
        want_u.append(tot_u / n)
        want_l.append(tot_l)
    torch.testing.assert_close(get("tpo", beta=b, weighting="uniform")(s).loss, T(want_u))
    torch.testing.assert_close(get("tpo", beta=b)(s).loss, T(want_l))


def test_tpo_step_weights():
    b = 1.0
    pt = T([[[-1.0, -2.0], [-1.0, -1.0]]])
    rt = T([[[-1.5, -1.0], [-2.0, -1.0]]])
    w = T([[[1.0, 0.0], [0.5, 1.0]]])
    s = ListStats(pt.sum(-1), torch.tensor([[1.0, 0.0]]), rt.sum(-1), policy_token_logps=pt,
                  reference_token_logps=rt, extras={"step_weights": w})
    r0, r1 = 1.0 * 0.5 + 0.0 * -1.0, 0.5 * 1.0 + 1.0 * 0.0
    lam = abs(1 - 0) * abs(1 / math.log(2) - 1 / math.log(3))
    torch.testing.assert_close(get("tpo", beta=b, step_rewards=True)(s).loss, T([lam * -ls(r0 - r1)]))


# wrappers --------------------------------------------------------------------------------

def pstats(g=False, **kw):
    return PairStats(T([-5.0, -9.0], g), T([-7.0, -6.0], g), T([-6.0, -8.0]), T([-6.5, -6.5]),
                     torch.tensor([4, 5]), torch.tensor([3, 6]), **kw)


HC, HR = [1.0, -1.0], [-0.5, 0.5]


# madpo, lcpo's Gibbs posterior and tars against their authors' code: tests/test_fidelity_wrappers.py


def test_lcpo_posterior_value_and_noise_estimate():
    eps, b = 0.2, 0.1
    obj = get("lcpo", noise_init=eps, posterior_beta=b, momentum=0.5)
    z = [b * (HC[i] - HR[i]) for i in range(2)]
    q = [(1 - eps) * sig(x) / ((1 - eps) * sig(x) + eps * sig(-x)) for x in z]
    want = [q[i] * -ls(z[i]) + (1 - q[i]) * -ls(-z[i]) for i in range(2)]
    out = obj(pstats())
    torch.testing.assert_close(out.loss, T(want))
    assert obj.noise_rate == pytest.approx(0.5 * eps + 0.5 * (1 - sum(q) / 2))
    # noise 0 -> posterior 1 -> base objective
    torch.testing.assert_close(get("lcpo", noise_init=0.0, momentum=0.0)(pstats()).loss, get("dpo")(pstats()).loss)


def test_lcpo_wraps_reference_free_simpo():
    s = PairStats(T([-5.0]), T([-7.0]), chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([7]))
    obj = get("lcpo", base="simpo", beta=2.0, gamma=0.5, noise_init=0.1, momentum=0.0, prob_model="implicit_margin")
    assert not obj.needs_reference
    z = 0.1 * (-1.0 - -1.0)
    q = 0.9 * sig(z) / (0.9 * sig(z) + 0.1 * sig(-z))
    want = q * -ls(2 * -1 - 2 * -1 - 0.5) + (1 - q) * -ls(2 * -1 - 2 * -1 - 0.5)
    torch.testing.assert_close(obj(s).loss, T([want]))


def token_pair(g=True):
    pct = T([[-1.0, -2.0, 0.0]], g)
    prt = T([[-0.5, -0.5, -1.0]], g)
    rct = T([[-1.5, -1.5, 0.0]])
    rrt = T([[-1.0, -1.0, -1.0]])
    mc = torch.tensor([[True, True, False]])
    mr = torch.tensor([[True, True, True]])
    return PairStats(pct.sum(-1), prt.sum(-1), rct.sum(-1), rrt.sum(-1), mc.sum(-1), mr.sum(-1),
                     pct, prt, rct, rrt, mc, mr)


def test_wpo_weights():
    s = token_pair(g=False)
    dpo = get("dpo")(s).loss
    wc = math.exp((-1.0 - 2.0) / 2)
    wr = math.exp((-0.5 - 0.5 - 1.0) / 3)
    torch.testing.assert_close(get("wpo", alignment="none")(s).loss, dpo * wc * wr)
    lss = T([[-0.2, -0.4, 0.0]]), T([[-0.1, -0.1, -0.1]])
    s.extras.update({"chosen_log_sum_sq_probs": lss[0], "rejected_log_sum_sq_probs": lss[1]})
    wc2 = math.exp((-1.0 + 0.2 - 2.0 + 0.4) / 2)
    wr2 = math.exp((-2.0 + 0.3) / 3)
    torch.testing.assert_close(get("wpo")(s).loss, dpo * wc2 * wr2)
    # log_sum_sq_probs helper: one-hot-ish distribution
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert log_sum_sq_probs(logits).item() == pytest.approx(math.log(0.25 ** 2 + 0.75 ** 2))


def test_sparse_po_masks():
    s = token_pair(g=False)
    ones_c, ones_r = s.chosen_mask.double(), s.rejected_mask.double()
    s.extras.update({"chosen_reward_mask": ones_c, "rejected_reward_mask": ones_r})
    # all-ones masks and no KL term = DPO (the authors always add the KL term: kl_term='none' is an ablation)
    torch.testing.assert_close(get("sparse_po", kl_term="none")(s).loss, get("dpo")(s).loss)
    mc = T([[1.0, 0.0, 0.0]])
    mr = T([[0.0, 1.0, 0.5]])
    kc, kr = T([[0.3, 0.2, 0.0]]), T([[0.1, 0.4, 0.2]])
    s.extras.update({"chosen_reward_mask": mc, "rejected_reward_mask": mr, "chosen_token_kl": kc,
                     "rejected_token_kl": kr})
    b = 0.1
    u = b * (1.0 * 0.5) - b * (1.0 * 0.5 + 0.5 * 0.0)
    d = b * (1.0 * 0.4 + 0.5 * 0.2) - b * (1.0 * 0.3)
    torch.testing.assert_close(get("sparse_po", kl_term="sequential")(s).loss, T([-ls(u - d)]))
    assert "token_kl" in get("sparse_po", kl_term="sequential").needs


def test_sparse_mask_helpers():
    from preftune.objectives.token_level import SparseMaskHead, activation_mask
    m = torch.tensor([[True, True, False]])
    hs = [torch.tensor([[[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]]])]
    # the authors' zn_rescale: mean over the hidden dimension, z-normalised over the response, min-max rescaled
    torch.testing.assert_close(activation_mask(hs, m), torch.tensor([[1.0, 0.0, 0.0]]))
    head = SparseMaskHead(1, 2)  # layers, hidden size: the reference's states of every layer
    rm, km = head(torch.randn(1, 3, 1, 2), m)
    assert rm.shape == (1, 3) and rm[0, 2] == 0 and km is rm and bool((rm >= 0).all())  # one shared ReLU mask


# auxiliary -------------------------------------------------------------------------------

def test_spo_rank_and_classify():
    s = PairStats(T([-4.0]), T([-9.0]), chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([4]),
                  extras={"degraded_logps": T([[-6.0, -6.0]]), "degraded_lengths": torch.tensor([[3, 2]])})
    sc = [-1.0, -2.0, -3.0]
    nll = -((sc[0] - math.log(sum(math.exp(x) for x in sc))) + (sc[1] - math.log(math.exp(sc[1]) + math.exp(sc[2]))))
    torch.testing.assert_close(get("spo", mode="rank")(s).loss, T([nll]))
    torch.testing.assert_close(get("spo", mode="classify")(s).loss,
                               T([-(sc[0] - math.log(sum(math.exp(x) for x in sc)))]))
    total = build("dpo:1,spo:0.5")
    assert "degraded" in total.needs


def test_degrade_drops_the_ratio():
    g = torch.Generator().manual_seed(0)
    ids = list(range(10))
    out = degrade(ids, 0.3, g)
    assert len(out) == 7 and out == sorted(out) and set(out) <= set(ids)
    assert degrade(ids, 0.0) == ids and len(degrade([5], 1.0)) == 1


def test_rejected_floor_and_f_sft():
    s = pstats(g=True)
    # rejected log-ratios: -0.5, 0.5 -> penalty relu(-h - tau) with tau = 0.2
    torch.testing.assert_close(get("rejected_floor", tau=0.2)(s).loss, T([0.3, 0.0]))
    g = torch.autograd.grad(get("rejected_floor", tau=0.2)(s).loss.sum(), [s.policy_rejected_logps])[0]
    assert g[0] < 0 and g[1] == 0  # pushes the collapsing rejected log-prob back up
    hb = [HC[0] / 4, HC[1] / 5]
    torch.testing.assert_close(get("f_sft")(s).loss, T([-(1 - math.exp(-x)) for x in hb]))
    torch.testing.assert_close(get("f_sft", f_divergence="reverse_kl")(s).loss, T([-x for x in hb]))


# wrappers and registry -------------------------------------------------------------------

def test_wrapper_hparams_route_to_base_and_validate():
    o = get("lcpo", base="ipo", beta=0.7)
    assert o.base_objective.name == "ipo" and o.base_objective.beta == 0.7
    with pytest.raises(ValueError, match="no hyperparameter"):
        get("lcpo", base="ipo", gamma=1.0)
    with pytest.raises(ValueError, match="unknown objective"):
        get("madpo", base="nope")
    o = build("madpo", base="simpo", gamma=0.3, tau=2.0)
    assert o.base_objective.gamma == 0.3 and o.tau == 2.0
    with pytest.raises(ValueError, match="wraps pair objectives"):
        get("wpo", base="kto")


# curriculum ------------------------------------------------------------------------------

def test_curriculum_pairs_and_sampler():
    ex = [RankedExample("p0", ("a", "b", "c", "d"), (4.0, 1.0, 3.0, 2.0), row=0),
          RankedExample("p1", ("e", "f", "g"), (0.0, 2.0, 1.0), row=1)]
    pairs = curriculum_pairs(ex)
    assert [(p.pair.chosen, p.pair.rejected, p.stage) for p in pairs] == [
        ("a", "c", 2), ("a", "d", 1), ("a", "b", 0), ("f", "g", 1), ("f", "e", 0)]
    assert pairs[2].pair.extras["margin"] == 3.0 and pairs[0].difficulty == -1.0
    order = list(CurriculumSampler(pairs, shuffle_within_stage=False))
    assert [pairs[i].stage for i in order] == [0, 0, 1, 1, 2]
    assert order[:2] == [2, 4]  # stage 0 by difficulty: gap 3 before gap 2
    allp = curriculum_pairs(ex, pairing="all", num_stages=2)
    assert len(allp) == 6 + 3
    easy = [p for p in allp if p.stage == 0]
    assert min(p.pair.extras["margin"] for p in easy) >= max(p.pair.extras["margin"] for p in allp if p.stage == 1)


def test_wrappers_refuse_bases_that_sort_the_batch():
    from preftune.errors import ConfigError

    for wrapper in ("wpo", "madpo", "lcpo"):
        with pytest.raises(ConfigError, match="sorts its batch into quantiles"):
            get(wrapper, base="aot")
