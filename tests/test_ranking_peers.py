"""Parity tests of preftune.ranking against the peer libraries of issue 18 (the ``[ranking-bench]`` extra):
LibAUC (GCLoss / iSogCLR, PairwiseAUCLoss), pytorch-metric-learning (CosFaceLoss, ArcFaceLoss), diffsort
(odd-even sorting network, Cauchy relaxation) and torchsort (soft sort, hard limit only).

Each test is skipped when its package is not installed (``pytest.importorskip``); the rest of the suite needs
none of them. Inputs are small seeded tensors; values must agree to 1e-5.

Not covered here, and why: LibAUC (2.0.1, the newest on the index; its GitHub master too) ships no LDR loss --
P44's LDR-KL lives only in the authors' experiment repository Optimization-AI/ICML2023_LDR, which is not a
package; preftune.ranking.ldr documents a one-off run against that code instead.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from preftune.ranking import groco, mann_whitney, unpg
from preftune.ranking.isogclr import ISogCLRLoss


def close(got, want, tol=1e-5):
    torch.testing.assert_close(got.detach().double(), want.detach().double(), rtol=tol, atol=tol)


def _libauc_gcl(n, tau, **kw):
    contrastive = pytest.importorskip("libauc.losses.contrastive")
    return contrastive.GCLoss_v1(N=n, tau=tau, device=torch.device("cpu"), enable_isogclr=True,
                                 gamma_schedule="constant", **kw)


# ============================================================================ P36 iSogCLR vs LibAUC GCLoss_v1
# Known, documented difference (preftune/ranking/isogclr.py): preftune exponentiates the paper's
# h_i(z) = sim(anchor, z) - sim(anchor, positive); LibAUC exponentiates sim(anchor, z) alone. On a first visit
# this scales u_i by exp(-sim_pos_i / tau_i) (sim_pos is the same for both views), cancels in the weights
# exp(h/tau)/u, and cancels in d F/d tau because the weights average to 1. The second difference: preftune
# weights both views with the views' averaged u_i, LibAUC each view with its own; with identical views the two
# coincide. LibAUC returns the sum of the two views' losses, preftune their mean (a factor 2).

def test_isogclr_first_visit_identical_views_matches_libauc():
    g = torch.Generator().manual_seed(0)
    b, d, n, tau = 6, 5, 10, 0.2
    z = torch.randn(b, d, generator=g, dtype=torch.float64).float()
    index = torch.tensor([3, 0, 7, 1, 9, 4])
    kw = dict(tau_min=0.05, tau_max=0.7, rho=0.3, eta=0.05, beta=0.9)
    lib = _libauc_gcl(n, tau, gamma=0.9, **kw)
    ours = ISogCLRLoss(n, tau_init=tau, gamma=0.9, **kw)

    a1, a2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    b1, b2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss_lib = lib(a1, a2, index)
    loss_ours = ours(b1, b2, index)
    loss_lib.backward()
    loss_ours.backward()

    close(loss_lib, 2 * loss_ours)
    close(a1.grad, 2 * b1.grad)
    close(a2.grad, 2 * b2.grad)
    close(lib.learnable_tau[index].squeeze(1), ours.tau[index])      # the temperature step agrees exactly
    close(lib.grad_tau[index].squeeze(1), ours.tau_grad[index])
    # u: the difference undone (sim_pos = 1 for identical normalised views)
    close(lib.u[index].squeeze(1) * torch.exp(torch.tensor(-1.0) / tau), ours.u[index])


def test_isogclr_first_visit_distinct_views_u_matches_libauc_with_the_shift_undone():
    g = torch.Generator().manual_seed(1)
    b, d, n, tau = 5, 4, 8, 0.3
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    index = torch.tensor([0, 2, 4, 6, 7])
    lib = _libauc_gcl(n, tau, gamma=0.9, eta=0.0)
    ours = ISogCLRLoss(n, tau_init=tau, gamma=0.9, eta=0.0)
    lib(z1, z2, index)
    ours(z1, z2, index)
    sim_pos = (F.normalize(z1, dim=1) * F.normalize(z2, dim=1)).sum(1)
    close(lib.u[index].squeeze(1) * torch.exp(-sim_pos / tau), ours.u[index])
    # and the difference is real: without undoing it the stored estimates disagree
    assert not torch.allclose(lib.u[index].squeeze(1), ours.u[index], atol=1e-3)


def test_isogclr_three_steps_fixed_tau_gradients_match_libauc():
    # eta = 0 keeps tau fixed, so the exp(-1/tau) shift of u stays constant across visits (identical views)
    g = torch.Generator().manual_seed(2)
    b, d, n, tau = 4, 6, 4, 0.25
    lib = _libauc_gcl(n, tau, gamma=0.5, eta=0.0)
    ours = ISogCLRLoss(n, tau_init=tau, gamma=0.5, eta=0.0)
    index = torch.arange(n)
    for _ in range(3):
        z = torch.randn(b, d, generator=g)
        a1, a2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        b1, b2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        lib(a1, a2, index).backward()
        ours(b1, b2, index).backward()
        close(a1.grad + a2.grad, 2 * (b1.grad + b2.grad))
        close(lib.u[index].squeeze(1) * math.exp(-1.0 / tau), ours.u[index])


# ============================================================================ P43 MW loss vs LibAUC PairwiseAUCLoss
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mw_global_equals_libauc_pairwise_logistic_auc_loss(temperature):
    auc = pytest.importorskip("libauc.losses.auc")
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(4, 6, generator=g, dtype=torch.float64)
    labels = (torch.rand(4, 6, generator=g) < 0.4).long()
    labels[0, 0], labels[0, 1] = 1, 0
    s1, s2 = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    lib = auc.PairwiseAUCLoss(surr_loss="logistic", hparam=1.0 / temperature)(s1.flatten(), labels.flatten())
    ours = mann_whitney.mw_loss(s2, labels, temperature=temperature, scope="global")
    lib.backward()
    ours.backward()
    close(ours, lib)
    close(s2.grad, s1.grad)


# ============================================================================ P50 UNPG vs pytorch-metric-learning
def _pml_setup(seed, b=8, d=5, c=4):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g)
    labels = torch.randint(c, (b,), generator=g)
    return emb, labels, c, d


def test_unpg_head_without_generation_equals_pml_cosface():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels, c, d = _pml_setup(4)
    torch.manual_seed(0)
    pml = losses.CosFaceLoss(num_classes=c, embedding_size=d, margin=0.2, scale=16.0)
    head = unpg.UNPGHead(d, c, scale=16.0, margin=0.2, kind="cosface", unpg=False)
    with torch.no_grad():
        head.weight.copy_(pml.W.T)       # pml stores W as [embedding, classes]
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    lp, lo = pml(e1, labels), head(e2, labels)
    lp.backward()
    lo.backward()
    close(lo, lp)
    close(e2.grad, e1.grad)
    close(head.weight.grad, pml.W.grad.T)


def test_unpg_loss_with_no_batch_negatives_equals_pml_cosface():
    # one class in the batch: no negative pairs to generate, so UNPG is exactly the margin loss it wraps
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, _, c, d = _pml_setup(5)
    labels = torch.full((emb.shape[0],), 2)
    torch.manual_seed(1)
    pml = losses.CosFaceLoss(num_classes=c, embedding_size=d, margin=0.35, scale=30.0)
    cos = unpg.margin_cosine_logits(emb, pml.W.T.detach(), labels, 0.35, "cosface")
    close(unpg.unpg_loss(cos, emb, labels, scale=30.0), pml(emb, labels))


def test_unpg_with_batch_negatives_differs_from_pml_cosface():
    # the generated negatives must change the loss (guards against UNPG silently reducing to CosFace)
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels, c, d = _pml_setup(6)
    torch.manual_seed(2)
    pml = losses.CosFaceLoss(num_classes=c, embedding_size=d, margin=0.2, scale=16.0)
    cos = unpg.margin_cosine_logits(emb, pml.W.T.detach(), labels, 0.2, "cosface")
    assert unpg.unpg_loss(cos, emb, labels, scale=16.0) > pml(emb, labels) + 1e-3


def test_unpg_arcface_head_without_generation_equals_pml_arcface():
    # pml's ArcFace margin is in degrees and falls back to cos(theta) - m sin(m) past pi - m; these random
    # 5-d inputs stay well inside (theta + m < pi), where both are cos(theta + m)
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels, c, d = _pml_setup(7)
    m = 0.3
    torch.manual_seed(3)
    pml = losses.ArcFaceLoss(num_classes=c, embedding_size=d, margin=math.degrees(m), scale=10.0)
    head = unpg.UNPGHead(d, c, scale=10.0, margin=m, kind="arcface", unpg=False)
    with torch.no_grad():
        head.weight.copy_(pml.W.T)
        cos = F.normalize(emb, dim=1) @ F.normalize(pml.W, dim=0)
    assert float(torch.acos(cos.gather(1, labels[:, None])).max()) + m < math.pi - 0.1
    close(head(emb, labels), pml(emb, labels))


# ============================================================================ P68 GroCo's sorting network vs diffsort
@pytest.mark.parametrize("n,steepness", [(5, 1.0), (6, 3.0), (8, 0.5)])
def test_diff_sort_equals_diffsort_odd_even_cauchy(n, steepness):
    diffsort = pytest.importorskip("diffsort")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    net = diffsort.DiffSortNet("odd_even", n, steepness=steepness, distribution="cauchy", device="cpu")
    v_lib, q_lib = net(x1)
    v_ours, q_ours = groco.diff_sort(x2, steepness)
    close(v_ours, v_lib)
    close(q_ours, q_lib)                 # same convention: Q[b, input, sorted position]
    (v_lib * torch.arange(n)).sum().backward()
    (v_ours * torch.arange(n)).sum().backward()
    close(x2.grad, x1.grad)


def test_diff_sort_and_torchsort_share_the_hard_sort_limit():
    # torchsort's soft sort is a projection (Blondel et al. 2020), not a sorting network: only the limit
    # (steep network, tiny regularisation) is comparable -- both must return the exact ascending sort
    torchsort = pytest.importorskip("torchsort")
    g = torch.Generator().manual_seed(11)
    x = torch.randperm(7, generator=g).double().reshape(1, 7) * 0.5   # gaps >= 0.5
    want = torch.sort(x, dim=1).values
    close(torchsort.soft_sort(x, regularization_strength=1e-4), want)
    close(groco.diff_sort(x, steepness=1e7)[0], want)
