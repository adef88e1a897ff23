"""Closed-form values, limit cases and gradient signs of the pair objectives (formulas written out by hand)."""
import math

import re

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import PairStats, build, get


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):  # log sigmoid
    return math.log(sig(x))


PC, PR, RC, RR = [-5.0, -9.0], [-7.0, -6.0], [-6.0, -8.0], [-6.5, -6.5]
LC, LR = [4, 5], [3, 6]


def stats(pc=PC, pr=PR, rc=RC, rr=RR, lc=LC, lr=LR, grad=False, **kw):
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=grad)  # noqa: E731
    return PairStats(t(pc), t(pr), None if rc is None else t(rc), None if rr is None else t(rr),
                     torch.tensor(lc), torch.tensor(lr), **kw)


def h(i):
    return PC[i] - RC[i], PR[i] - RR[i]


def check(name, expected, s=None, **hp):
    out = get(name, **hp)(s or stats())
    assert out.loss.shape == (2,)
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    return out


B = 0.1


def test_dpo_value():
    check("dpo", [-ls(B * (h(i)[0] - h(i)[1])) for i in range(2)], beta=B)


@pytest.mark.parametrize("div,f", [
    ("forward_kl", lambda x: 1 - math.exp(-x)),
    ("js_divergence", lambda x: math.log(2) + ls(x)),
    ("alpha_divergence", lambda x: (math.exp(-0.5 * x) - 1) / -0.5),
])
def test_dpo_f_divergences(div, f):
    check("dpo", [-ls(B * (f(h(i)[0]) - f(h(i)[1]))) for i in range(2)], beta=B, f_divergence=div, f_alpha=0.5)


def test_alpha_divergence_one_is_reverse_kl():
    a = get("dpo", f_divergence="alpha_divergence", f_alpha=1.0)(stats()).loss
    torch.testing.assert_close(a, get("dpo")(stats()).loss)


def test_hinge_ipo_lnDPO_values():
    check("hinge", [max(0.0, 1 - B * (h(i)[0] - h(i)[1])) for i in range(2)], beta=B)
    check("ipo", [((h(i)[0] / LC[i] - h(i)[1] / LR[i]) - 1 / (2 * B)) ** 2 for i in range(2)], beta=B)
    check("ln_dpo", [-ls(B * (h(i)[0] / LC[i] - h(i)[1] / LR[i])) for i in range(2)], beta=B)


def test_ipo_minimum_at_half_inverse_beta_per_token():
    beta = 0.5
    # per-token averaged margin exactly 1/(2 beta) = 1: chosen avg log-ratio 1.5, rejected 0.5 (lengths 2, 4)
    s = stats(pc=[3.0], pr=[2.0], rc=[0.0], rr=[0.0], lc=[2], lr=[4], grad=True)
    out = get("ipo", beta=beta)(s)
    assert out.loss.item() == pytest.approx(0.0)
    g = torch.autograd.grad(out.loss.sum(), [s.policy_chosen_logps])[0]
    assert g.abs().item() < 1e-12


def test_exo_rdpo_cdpo_discopop_values():
    eps = 0.2
    z = [B * (h(i)[0] - h(i)[1]) for i in range(2)]
    check("exo_pair", [sig(x) * (ls(x) - math.log(1 - eps)) + sig(-x) * (ls(-x) - math.log(eps)) for x in z],
          beta=B, label_smoothing=eps)
    check("rdpo", [(-(1 - eps) * ls(x) + eps * ls(-x)) / (1 - 2 * eps) for x in z], beta=B, label_smoothing=eps)
    check("cdpo", [-(1 - eps) * ls(x) - eps * ls(-x) for x in z], beta=B, label_smoothing=eps)
    tau = 0.05
    check("discopop", [-ls(x) * (1 - sig(x / tau)) + math.exp(-x) * sig(x / tau) for x in z], beta=B, tau=tau)


@pytest.mark.parametrize("name", ["rdpo", "cdpo"])
def test_eps_zero_is_dpo(name):
    torch.testing.assert_close(get(name, label_smoothing=0.0)(stats()).loss, get("dpo")(stats()).loss)


def test_rpo_alpha_zero_is_dpo_and_value():
    torch.testing.assert_close(get("rpo", alpha=0.0)(stats()).loss, get("dpo")(stats()).loss)
    nll = -(PC[0] + PC[1]) / (LC[0] + LC[1])  # TRL: batch token mean
    check("rpo", [-ls(B * (h(i)[0] - h(i)[1])) + 0.5 * nll for i in range(2)], beta=B, alpha=0.5)
    assert build("dpo:1.0,sft:0.5", beta=B)(stats()).loss.allclose(get("rpo", beta=B, alpha=0.5)(stats()).loss)


def test_nca_bco_sppo_apo_values():
    r = [(B * h(i)[0], B * h(i)[1]) for i in range(2)]
    check("nca_pair", [-ls(c) - 0.5 * ls(-c) - 0.5 * ls(-w) for c, w in r], beta=B)
    check("bco_pair", [-ls(c) - ls(-w) for c, w in r], beta=B)
    check("sppo_hard", [(h(i)[0] - 0.5 / B) ** 2 + (h(i)[1] + 0.5 / B) ** 2 for i in range(2)], beta=B)
    check("apo_zero", [1 - sig(c) + sig(w) for c, w in r], beta=B)
    check("apo_down", [sig(c) + 1 - sig(c - w) for c, w in r], beta=B)


def test_aot_sorts_across_batch():
    pol = sorted([PC[i] - PR[i] for i in range(2)])
    ref = sorted([RC[i] - RR[i] for i in range(2)])
    check("aot", [-ls(B * (pol[i] - ref[i])) for i in range(2)], beta=B)
    hc, hr = sorted(h(i)[0] for i in range(2)), sorted(h(i)[1] for i in range(2))
    e = 0.1
    check("aot_unpaired", [-(1 - e) * ls(B * (hc[i] - hr[i])) - e * ls(-B * (hc[i] - hr[i])) for i in range(2)],
          beta=B, label_smoothing=e)


def _token_stats():
    # chosen 3 tokens, rejected 5 tokens (T = 5); shared length 3
    pct = [[-1.0, -2.0, -0.5, 0, 0]]
    prt = [[-1.5, -0.5, -1.0, -2.0, -3.0]]
    rct = [[-1.2, -1.0, -1.0, 0, 0]]
    rrt = [[-1.0, -1.0, -1.0, -1.0, -1.0]]
    mc = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    mr = torch.ones(1, 5, dtype=torch.bool)
    T = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731
    a, b, c, d = T(pct), T(prt), T(rct), T(rrt)
    return PairStats(a.sum(-1), b.sum(-1), c.sum(-1), d.sum(-1), mc.sum(-1), mr.sum(-1), a, b, c, d, mc, mr), (pct, prt, rct, rrt)


def test_ld_dpo_value_and_alpha_one_is_dpo():
    s, (pct, prt, rct, rrt) = _token_stats()
    al = 0.3
    pc = sum(pct[0][:3])
    pr = sum(prt[0][:3]) + al * sum(prt[0][3:])
    rc = sum(rct[0][:3])
    rr = sum(rrt[0][:3]) + al * sum(rrt[0][3:])
    out = get("ld_dpo", alpha=al, beta=B)(s)
    assert out.loss.item() == pytest.approx(-ls(B * ((pc - rc) - (pr - rr))), rel=1e-9)
    torch.testing.assert_close(get("ld_dpo", alpha=1.0)(s).loss, get("dpo")(s).loss)
    # gradient: the excess rejected tokens are scaled by alpha
    g = torch.autograd.grad(out.loss.sum(), [s.policy_rejected_token_logps])[0][0]
    assert g[3].item() == pytest.approx(al * g[0].item())


# reference-free ---------------------------------------------------------------------------

def lo(a):
    return a - math.log(1 - math.exp(a))


def test_reference_free_values():
    ac = [PC[i] / LC[i] for i in range(2)]
    ar = [PR[i] / LR[i] for i in range(2)]
    s = stats(rc=None, rr=None)
    check("simpo", [-ls(2.0 * ac[i] - 2.0 * ar[i] - 1.0) for i in range(2)], s, beta=2.0, gamma=1.0)
    check("cpo", [-ls(B * (PC[i] - PR[i])) - 0.7 * ac[i] for i in range(2)], s, beta=B, alpha=0.7)
    check("orpo", [-ac[i] - 0.2 * ls(lo(ac[i]) - lo(ar[i])) for i in range(2)], s, lam=0.2, nll_average="sequence")
    check("asft", [-ac[i] + 0.3 * (-ac[i] - math.log(1 - math.exp(ar[i]))) for i in range(2)], s, lam=0.3)
    check("mapo", [-ac[i] + 0.3 * -ls(2.0 * (lo(ac[i]) - lo(ar[i]))) for i in range(2)], s, beta=2.0, gamma=0.3)
    torch.testing.assert_close(get("mapo", beta=1.0, gamma=0.2)(s).loss,
                               get("orpo", lam=0.2, nll_average="sequence")(s).loss)


def test_sft_parity_convention():
    check("sft", [-(PC[0] + PC[1]) / (LC[0] + LC[1])] * 2)


# gradient signs -------------------------------------------------------------------------

UP, DOWN = -1, 1  # sign of dL/dlogp: negative = the loss pushes that log-prob up

SIGNS = {
    "dpo": (UP, DOWN), "hinge": (UP, DOWN), "ipo": (UP, DOWN), "ln_dpo": (UP, DOWN), "exo_pair": (UP, DOWN),
    "rdpo": (UP, DOWN), "cdpo": (UP, DOWN), "discopop": (UP, DOWN), "nca_pair": (UP, DOWN),
    "bco_pair": (UP, DOWN), "sppo_hard": (UP, DOWN), "apo_zero": (UP, DOWN), "apo_down": (DOWN, DOWN),
    "rpo": (UP, DOWN), "simpo": (UP, DOWN), "cpo": (UP, DOWN), "orpo": (UP, DOWN), "asft": (UP, DOWN),
    "mapo": (UP, DOWN), "aot": (UP, DOWN), "aot_unpaired": (UP, DOWN), "f_sft": (UP, 0), "sft": (UP, 0),
}


@pytest.mark.parametrize("name", sorted(SIGNS))
def test_gradient_signs(name):
    # log-ratios near zero so that every objective is in its active region (hinge margin < 1/beta, ...)
    s = stats(pc=[-6.0, -8.0], pr=[-6.0, -7.0], rc=[-6.0, -8.0], rr=[-6.0, -7.0], grad=True)
    if name in ("apo_down", "discopop"):
        # apo_down is balanced at zero log-ratios; discopop's exponential arm is non-monotone near 0:
        # test both where the chosen log-ratio is positive (apo_down) / the margin is negative (discopop)
        s = (stats(pc=[-4.0, -7.0], pr=[-7.0, -8.0], rc=[-6.0, -8.0], rr=[-6.0, -7.0], grad=True)
             if name == "apo_down" else
             stats(pc=[-16.0, -18.0], pr=[-6.0, -7.0], rc=[-6.0, -8.0], rr=[-6.0, -7.0], grad=True))
    hp = {"label_smoothing": 0.1} if name in ("rdpo", "cdpo") else {}
    loss = get(name, **hp)(s).loss.sum()
    gc, gr = torch.autograd.grad(loss, [s.policy_chosen_logps, s.policy_rejected_logps], allow_unused=True)
    want_c, want_r = SIGNS[name]
    assert torch.all(torch.sign(gc) == want_c), gc
    if want_r == 0:
        assert gr is None or torch.all(gr == 0)
    else:
        assert torch.all(torch.sign(gr) == want_r), gr
    if get(name, **hp).needs_reference:
        # The reference enters through the log-ratios: raising its log-prob of a response acts like lowering
        # the policy's. Every term that reads the rejected response reads it only through its log-ratio, so
        # that gradient is exactly the policy's with the sign flipped.
        grc, grr = torch.autograd.grad(get(name, **hp)(s).loss.sum(),
                                       [s.reference_chosen_logps, s.reference_rejected_logps], allow_unused=True)
        assert torch.all(torch.sign(grc) == -want_c), grc
        if want_r == 0:
            assert grr is None or torch.all(grr == 0)
        else:
            torch.testing.assert_close(grr, -gr)


def test_apo_down_gradients_at_zero():
    s = stats(pc=[-6.0], pr=[-6.0], rc=[-6.0], rr=[-6.0], lc=[1], lr=[1], grad=True)
    gc, gr = torch.autograd.grad(get("apo_down")(s).loss.sum(), [s.policy_chosen_logps, s.policy_rejected_logps])
    assert gc.item() == pytest.approx(0.0, abs=1e-12)  # beta/4 - beta/4: balanced exactly at zero log-ratios
    assert gr.item() == pytest.approx(0.1 * 0.25)  # rejected pushed down


# validation -------------------------------------------------------------------------------

def test_unknown_name_and_hparam_errors():
    with pytest.raises(ValueError, match="available: .*dpo"):
        get("nope")
    with pytest.raises(ValueError, match="valid: beta"):
        get("dpo", gamma=1.0)
    with pytest.raises(ConfigError, match=r"label_smoothing must be >= 0 and < 0.5"):
        get("rdpo", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="> 0"):
        get("exo_pair", label_smoothing=0.0)
    with pytest.raises(ConfigError, match="one of 'reverse_kl'"):
        get("dpo", f_divergence="tv")
    with pytest.raises(ConfigError, match="beta must be > 0"):
        get("simpo", beta=0.0)


# an equation, section, algorithm or appendix with its number ("sequence" does not count)
EQUATION = r"\b(eqs?\.?|equations?)\s*\(?\d+|\bsec(tion)?\.?\s*\d|\b(alg(orithm)?|app(endix)?)\.?\s*[a-z]?\.?\d"


def test_every_objective_names_paper_and_docstring():
    from preftune.objectives import available, objective_class
    for n in available():
        cls = objective_class(n)
        assert cls.paper, n
        text = cls.paper + " " + (cls.__doc__ or "")
        # sft, rejected_floor: preftune's own; egpo, spce: only the abstracts of P47 and P28 were readable here --
        # egpo's formula is the authors' code's (zhourunlong/EGPO), spce's a reconstruction (docs/objectives.md)
        assert re.search(EQUATION, text, re.I) or n in ("sft", "rejected_floor", "egpo", "spce"), n


def test_equation_check_is_not_fooled_by_words_containing_eq():
    for bad in ("summed over the sequence", "frequency-weighted", "see section", "Eq. n"):
        assert not re.search(EQUATION, bad, re.I), bad
    for good in ("eq. 7", "Eqs. 3-4", "sec. 3.2", "App. A.3", "Equation (12)", "Algorithm 1"):
        assert re.search(EQUATION, good, re.I), good


def test_weight_column_scales_loss():
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(get("ipo")(stats(weight=w)).loss, get("ipo")(stats()).loss * w)
