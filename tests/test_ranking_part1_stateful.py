"""preftune.ranking part 1, methods with state or learned parts, followed step by step: ALDR-KL's adaptive
per-instance temperature (P44), iSogCLR's moving estimates and learned temperatures (P36), and AMCL's
multi-head loss with pair-adaptive temperatures (P41). Every value is recomputed here by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from preftune.errors import ConfigError
from preftune.ranking.amcl import AMCLLoss, omega
from preftune.ranking.isogclr import ISogCLRLoss
from preftune.ranking.ldr import ALDRKLLoss


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ============================================================================ P44 ALDR-KL

def _aldr_step_by_hand(f, y, lam_old, lam0, alpha, c):
    """One visit: p* = softmax(delta / lam_old); lam = lam0 (1 - KL(p*||u) / (alpha log K)); the loss at lam."""
    k = len(f)
    scale = sum(abs(x) for x in f) / k                       # "l1" normalisation
    g = [x / scale for x in f]
    delta = [g[j] - g[y] + (c if j != y else 0.0) for j in range(k)]
    z = lse([d / lam_old for d in delta])
    p = [math.exp(d / lam_old - z) for d in delta]
    kl = sum(pj * math.log(k * pj) for pj in p)
    lam = lam0 * (1 - kl / (alpha * math.log(k)))
    loss = lam * (lse([d / lam for d in delta]) - math.log(k)) - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2
    return lam, loss


def test_aldr_kl_follows_its_temperature_updates_step_by_step():
    lam0, alpha, c = 1.5, 2.0, 0.3
    crit = ALDRKLLoss(5, lam0=lam0, alpha=alpha, margin=c)
    f1 = [[2.0, -1.0, 0.5], [0.1, 0.2, -0.4]]
    y1, idx1 = [0, 2], [3, 1]
    got1 = crit(torch.tensor(f1, dtype=torch.float64), torch.tensor(y1), torch.tensor(idx1))
    want = [_aldr_step_by_hand(f1[b], y1[b], lam0, lam0, alpha, c) for b in range(2)]
    assert got1.item() == pytest.approx(sum(w[1] for w in want) / 2, rel=1e-6)
    assert crit.lam[3].item() == pytest.approx(want[0][0], rel=1e-6)
    assert crit.lam[1].item() == pytest.approx(want[1][0], rel=1e-6)
    assert crit.lam[[0, 2, 4]].tolist() == [lam0] * 3                 # unvisited rows keep lam0
    # second visit of instance 3 starts from its stored temperature
    f2, lam3 = [[0.3, 1.0, -2.0]], crit.lam[3].item()
    got2 = crit(torch.tensor(f2, dtype=torch.float64), torch.tensor([1]), torch.tensor([3]))
    lam, loss = _aldr_step_by_hand(f2[0], 1, lam3, lam0, alpha, c)
    assert crit.lam[3].item() == pytest.approx(lam, rel=1e-6)
    assert got2.item() == pytest.approx(loss, rel=1e-6)


def test_aldr_kl_gives_a_mislabelled_instance_a_lower_temperature_within_bounds():
    crit = ALDRKLLoss(2, lam0=1.0, alpha=2.0, margin=0.1)
    logits = torch.tensor([[4.0, -1.0, -1.0, -1.0], [4.0, -1.0, -1.0, -1.0]])
    crit(logits, torch.tensor([0, 1]), torch.tensor([0, 1]))        # row 1's label disagrees with the model
    clean, noisy = crit.lam.tolist()
    assert 0.5 <= noisy < clean <= 1.0                               # lam in [lam0 (1 - 1/alpha), lam0]
    with pytest.raises(ConfigError, match="alpha"):
        ALDRKLLoss(3, alpha=1.0)


def test_aldr_kl_gradient_raises_the_label_logit():
    crit = ALDRKLLoss(1, lam0=1.0, alpha=3.0, margin=0.5, normalize="none")
    s = torch.tensor([[0.2, 0.1, -0.3]], requires_grad=True)
    crit(s, torch.tensor([1]), torch.tensor([0])).backward()
    assert s.grad[0, 1] < 0 < s.grad[0, 0]
    assert s.grad.sum().item() == pytest.approx(0.0, abs=1e-6)


# ============================================================================ P36 iSogCLR

def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _gaps_by_hand(z1, z2):
    """h_i(z) for both views: anchors of view 1 against the other samples of both views, then view 2."""
    b = len(z1)
    out = []
    for a, p in ((z1, z2), (z2, z1)):
        rows = []
        for i in range(b):
            pos = _dot(a[i], p[i])
            negs = [_dot(a[i], p[j]) for j in range(b) if j != i] + [_dot(a[i], a[j]) for j in range(b) if j != i]
            rows.append([n - pos for n in negs])
        out.append(rows)
    return out


def test_isogclr_moving_estimates_and_temperatures_step_by_step():
    rho, eta, beta, gamma, tau0 = 0.3, 0.05, 0.9, 0.7, 0.2
    crit = ISogCLRLoss(6, tau_init=tau0, tau_min=0.05, tau_max=0.7, rho=rho, eta=eta, beta=beta, gamma=gamma)
    torch.manual_seed(0)
    index = [4, 0, 2]
    state = {i: dict(tau=tau0, u=None, m=0.0) for i in range(6)}
    for step in range(2):
        z1, z2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        got = crit(z1, z2, torch.tensor(index))
        h = _gaps_by_hand([_unit(v) for v in z1.tolist()], [_unit(v) for v in z2.tolist()])
        want = 0.0
        for r, i in enumerate(index):
            st, n = state[i], len(h[0][r])
            g = sum(math.exp(x / st["tau"]) for v in range(2) for x in h[v][r]) / (2 * n)
            u = g if st["u"] is None else (1 - gamma) * st["u"] + gamma * g
            w = [[math.exp(x / st["tau"]) / u for x in h[v][r]] for v in range(2)]
            want += sum(w[v][k] * h[v][r][k] for v in range(2) for k in range(n)) / (2 * n) / 3
            d = math.log(u) + rho - sum(w[v][k] * h[v][r][k] / st["tau"] for v in range(2) for k in range(n)) / (2 * n)
            m = (1 - beta) * st["m"] + beta * d
            st.update(u=u, m=m, tau=min(max(st["tau"] - eta * m, 0.05), 0.7))
        assert got.item() == pytest.approx(want, rel=1e-6)
        for i in index:
            assert crit.u[i].item() == pytest.approx(state[i]["u"], rel=1e-5)
            assert crit.tau_grad[i].item() == pytest.approx(state[i]["m"], rel=1e-5, abs=1e-7)
            assert crit.tau[i].item() == pytest.approx(state[i]["tau"], rel=1e-5)
    assert crit.tau[[1, 3, 5]].tolist() == pytest.approx([tau0] * 3)   # never visited


def test_isogclr_gradient_is_that_of_the_robust_objective_on_a_first_visit():
    # on a first visit u_i is the batch estimate, so the surrogate's gradient equals the gradient of
    # mean_i tau_i log mean_z exp(h_i(z) / tau_i), written here directly
    torch.manual_seed(1)
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64)
    crit = ISogCLRLoss(4, tau_init=0.3, tau_min=0.05, tau_max=0.7, learn_tau=False)
    crit(z1, z2, torch.arange(4)).backward()
    g_surrogate = z1.grad.clone()
    z1.grad = None
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    total = 0.0
    for i in range(4):
        hs = []
        for anc, pos in ((a, b), (b, a)):
            p = (anc[i] * pos[i]).sum()
            others = [j for j in range(4) if j != i]
            negs = [(anc[i] * pos[j]).sum() for j in others] + [(anc[i] * anc[j]).sum() for j in others]
            hs += [n - p for n in negs]
        total = total + 0.3 * torch.log(torch.stack([torch.exp(x / 0.3) for x in hs]).mean()) / 4
    total.backward()
    assert torch.allclose(g_surrogate, z1.grad, atol=1e-10)
    assert crit.tau.tolist() == pytest.approx([0.3] * 4)                # learn_tau=False


def test_isogclr_temperatures_stay_in_their_box_and_hyperparameters_are_checked():
    crit = ISogCLRLoss(8, tau_init=0.1, tau_min=0.05, tau_max=0.7, rho=50.0, eta=10.0)
    crit(torch.randn(8, 3), torch.randn(8, 3), torch.arange(8))
    assert crit.tau.min().item() >= 0.05 and crit.tau.max().item() <= 0.7
    assert (crit.tau == 0.05).all()          # a huge rho makes d tau positive: temperatures shrink to tau_min
    with pytest.raises(ConfigError, match="tau_min"):
        ISogCLRLoss(3, tau_init=0.01, tau_min=0.05)
    with pytest.raises(ConfigError, match="gamma"):
        ISogCLRLoss(3, gamma=0.0)


# ============================================================================ P41 AMCL

def test_amcl_matches_the_formula_written_out():
    torch.manual_seed(2)
    b, h, d, beta, tmin, tmax, topk = 3, 2, 4, 0.05, 0.1, 1.5, 2
    crit = AMCLLoss(d, h, beta=beta, tau_min=tmin, tau_max=tmax, topk=topk).double()
    z1, z2 = torch.randn(b, h, d, dtype=torch.float64), torch.randn(b, h, d, dtype=torch.float64)
    got = crit(z1, z2).item()
    want = 0.0
    with torch.no_grad():
        for c in range(h):
            z = F.normalize(torch.cat([z1[:, c], z2[:, c]]), dim=1)
            phi = crit.phi(z).tolist()
            zl = z.tolist()
            def tau(i, j):
                return tmin + (tmax - tmin) / (1 + math.exp(_dot(phi[i], phi[j])))
            head = 0.0
            for i in range(2 * b):
                j = (i + b) % (2 * b)
                negs = sorted([k for k in range(2 * b) if k not in (i, j)], key=lambda k: -_dot(zl[i], zl[k]))[:topk]
                tp = tau(i, j)
                head += (-_dot(zl[i], zl[j]) / tp + sum(_dot(zl[i], zl[k]) / tau(i, k) for k in negs) / topk
                         + beta * (d / 2 * math.log(tp) + 1 / tp)
                         - beta * sum(math.log(tau(i, k)) + 1 / tau(i, k) for k in negs))
            want += head / (2 * b)
    assert got == pytest.approx(want, rel=1e-9)


def test_amcl_trains_its_temperature_network_and_checks_shapes():
    crit = AMCLLoss(4, 2, tau_min=0.05, tau_max=1.0)
    z1 = torch.randn(6, 2, 4, requires_grad=True)
    crit(z1, torch.randn(6, 2, 4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crit.phi.parameters())
    assert z1.grad.abs().sum() > 0
    assert omega(torch.tensor(0.5), 4).item() == pytest.approx(2 * math.log(0.5) + 2)
    with pytest.raises(ConfigError, match="batch"):
        crit(torch.randn(6, 3, 4), torch.randn(6, 3, 4))
    with pytest.raises(ConfigError, match="tau_min"):
        AMCLLoss(4, tau_min=1.0, tau_max=0.5)
