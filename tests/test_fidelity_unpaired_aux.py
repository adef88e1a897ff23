"""Fidelity checks (issue 13): NPO / NPO+RT against the authors' TOFU code, SPO's degree classifier,
rejected_floor's provenance, f_sft's formula, Curry-DPO's stages. Expected values are written out from
the source formulas independently of preftune's code."""
import math

import pytest
import torch
import torch.nn.functional as F

from preftune.objectives import build, get
from preftune.objectives.auxiliary import degrade, degrade_levels
from preftune.objectives.base import PairStats, UnpairedStats, objective_state

RTOL = 1e-6


def T(x, g=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=g)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12)


# NPO / NPO+RT ---------------------------------------------------------------------------------
# Source: licong-lin/negative-preference-optimization @ 1207bbe9a1abf502bc2d7b43a0a467d9524b4036,
# TOFU/dataloader.py CustomTrainerForgetting.compute_loss, branch 'npo_grad_diff':
#   neg_log_ratios = forget_loss_current - forget_loss_oracle            (summed token NLLs, get_batch_loss)
#   forget_loss = -F.logsigmoid(beta * neg_log_ratios).mean() * 2 / beta (mean over the forget batch)
#   retain_loss = retain_outputs.loss                                    (HF: NLL averaged over retain tokens)
#   loss = npo_coeff * forget_loss + grad_diff_coeff * retain_loss

POL = [-5.0, -8.0, -6.0, -3.0, -7.5]
REF = [-6.0, -7.0, -6.5, -3.5, -7.0]
LAB = [True, False, False, True, False]     # True = retain, False = forget
LEN = [5, 4, 2, 3, 6]


def npo_stats(lab=LAB, g=False):
    return UnpairedStats(T(POL, g), torch.tensor(lab), T(REF), torch.tensor(LEN))


def authors_npo_rt(beta, lam, lab=LAB):
    forget = [i for i, l in enumerate(lab) if not l]
    retain = [i for i, l in enumerate(lab) if l]
    f = 0.0
    if forget:
        nlr = [(-POL[i]) - (-REF[i]) for i in forget]       # forget_loss_current - forget_loss_oracle
        f = sum(-math.log(1 / (1 + math.exp(-beta * x))) for x in nlr) / len(forget) * 2 / beta
    r = 0.0
    if retain:
        r = sum(-POL[i] for i in retain) / sum(LEN[i] for i in retain)   # token-mean NLL of the retain batch
    return f + lam * r


@pytest.mark.parametrize("beta,lam", [(0.1, 1.0), (0.5, 2.5), (1.0, 0.3)])
def test_npo_rt_batch_mean_is_forget_mean_plus_lambda_retain_token_mean(beta, lam):
    out = get("npo_rt", beta=beta, retain_weight=lam)(npo_stats())
    close(out.loss.mean(), T(authors_npo_rt(beta, lam)))


def test_npo_default_weight_one_and_plain_npo_is_forget_mean():
    close(get("npo_rt", beta=0.1)(npo_stats()).loss.mean(), T(authors_npo_rt(0.1, 1.0)))
    close(get("npo", beta=0.2)(npo_stats()).loss.mean(), T(authors_npo_rt(0.2, 0.0)))  # authors' 'npo' branch


def test_npo_rt_independent_of_the_mix_of_the_batch():
    # the retain weight no longer depends on n_retain / n_forget: move examples between kinds
    for lab in ([True, False, False, False, False], [True, True, True, True, False], [False, True, True, False, True]):
        close(get("npo_rt", beta=0.3, retain_weight=0.7)(npo_stats(lab)).loss.mean(), T(authors_npo_rt(0.3, 0.7, lab)))


def test_npo_rt_batch_without_forget_or_without_retain():
    only_retain = [True] * 5
    only_forget = [False] * 5
    close(get("npo_rt", beta=0.1, retain_weight=2.0)(npo_stats(only_retain)).loss.mean(),
          T(2.0 * sum(-x for x in POL) / sum(LEN)))
    close(get("npo_rt", beta=0.1, retain_weight=2.0)(npo_stats(only_forget)).loss.mean(),
          T(authors_npo_rt(0.1, 0.0, only_forget)))


def test_npo_rt_gradient_matches_the_authors_loss():
    s = npo_stats(g=True)
    g = torch.autograd.grad(get("npo_rt", beta=0.4, retain_weight=1.5)(s).loss.mean(), [s.policy_logps])[0]
    p = T(POL, True)
    lab = torch.tensor(LAB)
    f = (-(2 / 0.4) * F.logsigmoid(-0.4 * (p - T(REF)))[~lab]).mean()
    r = (-p[lab]).sum() / torch.tensor(LEN)[lab].sum()
    g2 = torch.autograd.grad(f + 1.5 * r, [p])[0]
    close(g, g2)


def test_npo_weight_column_multiplies_the_rescaled_loss():
    w = T([1.0, 2.0, 0.5, 1.0, 3.0])
    s = npo_stats()
    s.weight = w
    close(get("npo_rt")(s).loss, get("npo_rt")(npo_stats()).loss * w)


# SPO ------------------------------------------------------------------------------------------
# Source: P01 (Li et al. 2024) as described in its abstract and docstring: a self-supervised
# classifier of the preference degree (how much key content was removed), cross-entropy.

def test_spo_classifier_is_cross_entropy_over_degrees():
    torch.manual_seed(0)
    B, K, H = 3, 2, 5
    obj = get("spo", levels=K)
    obj.bind(type("M", (), {"config": type("C", (), {"hidden_size": H})()})())
    with torch.no_grad():
        obj.spo_classifier.proj.weight.copy_(torch.randn(K + 1, H))
        obj.spo_classifier.proj.bias.copy_(torch.randn(K + 1))
    h = torch.randn(B, K + 1, H, dtype=torch.float64)
    s = PairStats(T([-1.0] * B), T([-2.0] * B), extras={"degree_states": h})
    loss = obj(s).loss
    W = obj.spo_classifier.proj.weight.double()
    b = obj.spo_classifier.proj.bias.double()
    want = []
    for i in range(B):
        tot = 0.0
        for k in range(K + 1):
            z = (h[i, k] @ W.T + b).tolist()
            tot += -(z[k] - math.log(sum(math.exp(v) for v in z)))
        want.append(tot / (K + 1))
    torch.testing.assert_close(loss.double(), T(want), rtol=1e-5, atol=1e-6)  # the head computes in float32


def test_spo_classifier_is_objective_state_and_needs_bind():
    obj = build("dpo:1,spo:0.5")
    assert "degraded" in obj.needs
    with pytest.raises(ValueError, match="bind"):
        get("spo")(PairStats(T([-1.0]), T([-2.0]), extras={"degree_states": torch.zeros(1, 3, 4)}))
    obj.bind(type("M", (), {"config": type("C", (), {"hidden_size": 4})()})())
    assert any("spo_classifier" in k for k in objective_state(obj).state_dict())


def test_spo_key_content_removes_the_highest_scoring_tokens_nested():
    ids = [10, 11, 12, 13, 14, 15]
    sc = [0.1, 5.0, 0.2, 3.0, 0.3, 4.0]
    assert degrade(ids, 0.5, scores=sc) == [10, 12, 14]
    lv = degrade_levels(ids, [1 / 3, 2 / 3], scores=sc)
    assert lv == [[10, 12, 13, 14], [10, 14]] or lv == [[10, 12, 13, 14], [10, 12]]
    assert set(lv[1]) <= set(lv[0])
    g = torch.Generator().manual_seed(0)
    assert len(degrade(ids, 0.5, g, scores=[1.0])) == 3   # mismatched scores: random fallback


def test_spo_trains_its_classifier_and_the_policy_end_to_end():
    from preftune.data.collate import collate_pairs
    from preftune.data.types import TokenizedPair
    from preftune.models import build_model
    from preftune.reference import FrozenModel
    from preftune.train import compute_loss

    torch.manual_seed(0)
    model = build_model(32, hidden_size=16, num_layers=1, num_heads=2)
    items = [TokenizedPair([5, 6, 7][: 2 + i % 2], [9, 10, 11, 12, 13, 2][: 3 + i % 4], [14, 15, 2], row=i)
             for i in range(4)]
    obj = build("dpo:1.0,spo:0.5", levels=3)
    obj.bind(model)
    collate = lambda ex: collate_pairs(ex, 0)  # noqa: E731
    loss, metrics, stats = compute_loss(model, FrozenModel.copy_of(model), obj, collate(items), items=items,
                                        collate=collate)
    st = stats.extras["degree_states"]
    assert st.shape == (4, 4, 16) and st.requires_grad
    lengths = stats.extras["degraded_lengths"]
    for i, it in enumerate(items):
        n = len(it.chosen_ids)
        assert lengths[i].tolist() == [n - min(round(k / 4 * n), n - 1) for k in (1, 2, 3)]
    # zero-initialised head: uniform over the K + 1 = 4 degrees
    assert metrics["spo/loss"].item() == pytest.approx(math.log(4), rel=1e-5)
    loss.backward()
    head = next(m for m in obj.children() if m.name == "spo").spo_classifier
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0


# rejected_floor, f_sft, Curry-DPO --------------------------------------------------------------

def test_rejected_floor_claims_no_paper():
    from preftune.objectives import objective_class
    cls = objective_class("rejected_floor")
    assert "P13" not in cls.paper and "not from a paper" in cls.paper


def test_f_sft_is_minus_f_prime_of_the_average_ratio():
    # Source: f-DPO (Wang et al. 2023) Table 1 f'(u): reverse KL log u, forward KL 1 - 1/u,
    # JS log(2u / (1 + u)), alpha (u^(alpha-1) - 1)/(alpha - 1); u = exp(per-token average log-ratio).
    s = PairStats(T([-4.0, -9.0]), T([-5.0, -6.0]), T([-6.0, -8.0]), T([-5.0, -6.0]),
                  chosen_lengths=torch.tensor([4, 2]), rejected_lengths=torch.tensor([3, 3]))
    hbar = [(-4.0 + 6.0) / 4, (-9.0 + 8.0) / 2]
    u = [math.exp(x) for x in hbar]
    want = {"reverse_kl": [-math.log(x) for x in u], "forward_kl": [-(1 - 1 / x) for x in u],
            "js_divergence": [-math.log(2 * x / (1 + x)) for x in u],
            "alpha_divergence": [-(x ** (0.5 - 1) - 1) / (0.5 - 1) for x in u]}
    for f, w in want.items():
        close(get("f_sft", f_divergence=f)(s).loss, T(w))


def test_curry_dpo_stages_are_the_papers_iterations():
    # Source: P35 sec. 3 / Fig. 1: R1 > R2 > R3 > R4; iteration 1 (R1, R4), 2 (R1, R3), 3 (R1, R2).
    from preftune.data.types import RankedExample
    from preftune.objectives.curriculum import curriculum_pairs, curriculum_stages

    ex = [RankedExample("p", ["r1", "r2", "r3", "r4"], [5.0, 4.0, 3.0, 2.0]),
          RankedExample("q", ["a", "b", "c"], [1.0, 3.0, 2.0])]
    stages = curriculum_stages(curriculum_pairs(ex))
    got = [[(p.prompt, p.chosen, p.rejected) for p in st] for st in stages]
    assert got == [[("p", "r1", "r4"), ("q", "b", "a")], [("p", "r1", "r3"), ("q", "b", "c")], [("p", "r1", "r2")]]
