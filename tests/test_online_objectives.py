"""Online objectives against hand computations on small batches (GRPO and its normalisations, RLOO, REINFORCE).

The formulas are written out here independently of preftune:
* GRPO: Shao et al. 2024 (DeepSeekMath) eq. 3-4 and TRL 1.16 ``GRPOTrainer._compute_loss`` (trl/trainer/
  grpo_trainer.py): advantages (r - mean_g) / (std_g + 1e-4) with Bessel's std, token loss
  -min(rho A, clip(rho, 1-eps, 1+eps_high) A) + beta k3, normalisations grpo / bnpo / dr_grpo / dapo.
* RLOO: Ahmadian et al. 2024 eq. 5. REINFORCE: Williams 1992 eq. 11.
"""
import math

import pytest
import torch

from preftune.objectives import build
from preftune.objectives.base import ListStats
from preftune.online.objectives import (clipped_token_loss, group_advantages, k3_kl, leave_one_out_advantages,
                                        normalise)


def _stats(scores, pol, mask, ref=None, old=None):
    B, K, T = pol.shape
    extras = {} if old is None else {"old_token_logps": old.reshape(B * K, T)}
    return ListStats(policy_logps=(pol * mask).sum(-1), scores=scores, reference_logps=None if ref is None
                     else (ref * mask).sum(-1), lengths=mask.sum(-1), valid=torch.ones(B, K, dtype=torch.bool),
                     policy_token_logps=pol, reference_token_logps=ref, mask=mask, extras=extras)


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 5.0]])
    # group 0: mean 0.5, Bessel std sqrt((4 * 0.25) / 3) = 0.57735
    s0 = math.sqrt(1.0 / 3.0)
    # group 1: mean 2.75, deviations -.75,-.75,-.75,2.25: var = (3*.5625 + 5.0625)/3 = 2.25, std 1.5
    want = [[0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), 0.5 / (s0 + 1e-4)],
            [-0.75 / 1.5001, -0.75 / 1.5001, -0.75 / 1.5001, 2.25 / 1.5001]]
    assert torch.allclose(group_advantages(r), torch.tensor(want), atol=1e-6)
    assert torch.allclose(group_advantages(r, scale="none"), r - r.mean(1, keepdim=True))
    flat = r.flatten()
    bstd = math.sqrt(((flat - flat.mean()) ** 2).sum().item() / 7)
    assert torch.allclose(group_advantages(r, scale="batch"), (r - r.mean(1, keepdim=True)) / (bstd + 1e-4), atol=1e-6)


def test_unscored_completions_are_left_out_and_get_no_advantage():
    r = torch.tensor([[1.0, float("nan"), 0.0]])
    a = group_advantages(r, scale="none")
    assert a.tolist() == [[0.5, 0.0, -0.5]]
    assert leave_one_out_advantages(r).tolist() == [[1.0, 0.0, -1.0]]


def test_leave_one_out_by_hand():
    r = torch.tensor([[3.0, 1.0, 2.0]])
    # A_i = r_i - mean of the others
    assert leave_one_out_advantages(r).tolist() == [[3 - 1.5, 1 - 2.5, 2 - 2.0]]


def test_k3_is_zero_at_equality_and_positive_elsewhere():
    p = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.allclose(k3_kl(p, p), torch.zeros(3))
    q = torch.tensor([-1.5, -1.0, -0.5])
    d = q - p
    assert torch.allclose(k3_kl(p, q), torch.exp(d) - d - 1)
    assert (k3_kl(p, q)[:2] > 0).all()


def test_clipped_loss_by_hand_and_clip_masks():
    logps = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])
    loss, low, high = clipped_token_loss(logps, old, adv, epsilon_low=0.2, epsilon_high=0.2)
    # ratio 1.5, A>0: min(1.5, 1.2) = 1.2 -> -1.2; ratio .5, A<0: min(-.5, -.8) = -.8 -> .8;
    # ratio 1.1: -1.1; ratio .7, A>0: min(.7, .8) = .7 -> -.7
    assert torch.allclose(loss, torch.tensor([-1.2, 0.8, -1.1, -0.7]), atol=1e-6)
    assert high.tolist() == [True, False, False, False] and low.tolist() == [False, True, False, False]
    # the clipped branch carries no gradient
    lp = logps.clone().requires_grad_(True)
    clipped_token_loss(lp, old, adv, epsilon_low=0.2, epsilon_high=0.2)[0].sum().backward()
    assert lp.grad[0] == 0 and lp.grad[1] == 0 and lp.grad[2] < 0


@pytest.mark.parametrize("how", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_normalisations_by_hand(how):
    tok = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], [[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]], [[1, 1, 0], [1, 1, 1]]], dtype=torch.bool)
    per_b = normalise(tok, mask, how, max_completion_length=4)
    batch = per_b.mean()
    if how == "grpo":  # mean over responses of each response's token mean
        want = (2.0 + 4.0 + 1.0 + 2.0) / 4
    elif how in ("bnpo", "dapo"):  # all tokens / token count
        want = (6 + 4 + 2 + 6) / 9
    else:  # sum / (responses * max length)
        want = (6 + 4 + 2 + 6) / (4 * 4)
    assert batch.item() == pytest.approx(want)


def test_grpo_objective_by_hand_with_kl_and_old_logps():
    # one prompt, two samples, two tokens each; sample 1's second token is padding
    pol = torch.tensor([[[-1.0, -2.0], [-0.5, -9.0]]], requires_grad=True)
    mask = torch.tensor([[[1, 1], [1, 0]]], dtype=torch.bool)
    old = torch.tensor([[[-1.2, -2.0], [-0.4, 0.0]]])
    ref = torch.tensor([[[-1.1, -1.9], [-0.6, 0.0]]])
    scores = torch.tensor([[1.0, 0.0]])
    obj = build("grpo", beta=0.1, epsilon=0.2)
    out = obj(_stats(scores, pol, mask, ref=ref, old=old))
    # by hand
    std = math.sqrt(0.5)  # Bessel std of {1, 0}
    A = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)]
    tok = []
    for k, toks in enumerate([[0, 1], [0]]):
        row = []
        for t in toks:
            rho = math.exp(pol[0, k, t].item() - old[0, k, t].item())
            pg = -min(rho * A[k], min(max(rho, 0.8), 1.2) * A[k])
            d = ref[0, k, t].item() - pol[0, k, t].item()
            row.append(pg + 0.1 * (math.exp(d) - d - 1))
        tok.append(sum(row) / len(row))
    want = sum(tok) / 2
    assert out.loss.mean().item() == pytest.approx(want, rel=1e-5)
    assert out.metrics["reward"].item() == pytest.approx(0.5)
    out.loss.mean().backward()
    assert pol.grad[0, 1, 1] == 0  # padding gets no gradient


def test_grpo_on_policy_gradient_pushes_up_the_better_sample():
    pol = torch.tensor([[[-1.0], [-1.0]]], requires_grad=True)
    mask = torch.ones(1, 2, 1, dtype=torch.bool)
    out = build("grpo")(_stats(torch.tensor([[1.0, 0.0]]), pol, mask))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)  # ratio 1: the loss value is -mean(A) = 0
    out.loss.sum().backward()
    assert pol.grad[0, 0, 0] < 0 < pol.grad[0, 1, 0]  # descent raises the better sample's log-prob


def test_dr_grpo_does_not_scale_by_std_and_divides_by_the_budget():
    pol = torch.tensor([[[-1.0, -1.0], [-1.0, -1.0]]], requires_grad=True)
    mask = torch.tensor([[[1, 1], [1, 0]]], dtype=torch.bool)
    obj = build("dr_grpo", length_normaliser=8)
    out = obj(_stats(torch.tensor([[3.0, 1.0]]), pol, mask))
    out.loss.sum().backward()
    # A = (+1, -1); loss = -(sum_t rho_t A) / (2 * 8); d/dlogp = -A / 16 per token
    assert pol.grad[0, 0, 0].item() == pytest.approx(-1 / 16)
    assert pol.grad[0, 1, 0].item() == pytest.approx(1 / 16)


def test_rloo_by_hand_with_kl_in_the_reward():
    pol = torch.tensor([[-2.0, -1.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.5, -1.0, -2.0]])
    scores = torch.tensor([[1.0, 0.0, 0.5]])
    stats = ListStats(policy_logps=pol, scores=scores, reference_logps=ref, valid=torch.ones(1, 3, dtype=torch.bool))
    out = build("rloo", beta=0.2)(stats)
    R = [1.0 - 0.2 * 0.5, 0.0 - 0.2 * 0.0, 0.5 - 0.2 * (-1.0)]
    A = [R[i] - (sum(R) - R[i]) / 2 for i in range(3)]
    want = -sum(a * p for a, p in zip(A, [-2.0, -1.0, -3.0])) / 3
    assert out.loss.item() == pytest.approx(want, rel=1e-6)


def test_reinforce_baseline_is_the_moving_average_of_earlier_batches():
    obj = build("reinforce", beta=0.0, baseline_decay=0.5)
    pol = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    s1 = ListStats(policy_logps=pol, scores=torch.tensor([[1.0, 3.0]]))
    out1 = obj(s1)  # baseline 0 before any batch: loss = -(1 * -1 + 3 * -2) / 2
    assert out1.loss.item() == pytest.approx(3.5)
    assert float(obj.baseline.value) == pytest.approx(2.0)
    out2 = obj(ListStats(policy_logps=pol, scores=torch.tensor([[0.0, 4.0]])))
    assert out2.metrics["baseline"].item() == pytest.approx(2.0)
    assert out2.loss.item() == pytest.approx(-((0 - 2) * -1.0 + (4 - 2) * -2.0) / 2)
    assert float(obj.baseline.value) == pytest.approx(0.5 * 2.0 + 0.5 * 2.0)
    with torch.no_grad():  # evaluation does not move the baseline
        obj(ListStats(policy_logps=pol, scores=torch.tensor([[10.0, 10.0]])))
    assert float(obj.baseline.value) == pytest.approx(2.0)


def test_grpo_hyperparameters_are_validated():
    from preftune.errors import ConfigError

    with pytest.raises(ConfigError, match="epsilon"):
        build("grpo", epsilon=1.5)
    with pytest.raises(ConfigError, match="scale_rewards"):
        build("grpo", scale_rewards="prompt")
    assert build("grpo").needs_reference is False and build("grpo", beta=0.04).needs_reference is True


# ----------------------------------------------------------------------------- PPO (P04)


def test_gae_by_hand_skips_positions_outside_the_response():
    from preftune.online.ppo import gae

    r = torch.tensor([[9.0, 0.0, 0.0, 1.0, 9.0]])
    v = torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]])
    m = torch.tensor([[False, True, True, True, False]])  # a prompt position, three response tokens, padding
    a = gae(r, v, m, gamma=1.0, lam=0.95)
    a2 = 1 + 0 - 0.7
    a1 = (0 + 0.7 - 0.6) + 0.95 * a2
    a0 = (0 + 0.6 - 0.5) + 0.95 * a1
    assert torch.allclose(a, torch.tensor([[0.0, a0, a1, a2, 0.0]]), atol=1e-6)
    a = gae(r, v, m, gamma=0.9, lam=1.0)  # lambda 1: discounted return minus value
    assert a[0, 1].item() == pytest.approx(0.9 * 0.9 * 1.0 - 0.5)


def test_token_rewards_put_the_score_on_the_last_response_token():
    from preftune.online.ppo import token_rewards

    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    r = token_rewards(torch.tensor([2.0]), kl, mask, beta=0.5)
    assert torch.allclose(r, torch.tensor([[0.0, -0.1, -0.15 + 2.0, 0.0]]))


def test_ppo_loss_by_hand():
    from preftune.online.ppo import PPO

    obj = build("ppo", beta=0.0, vf_coef=0.5, whiten_advantages=False, lam=1.0, gamma=1.0, epsilon_value=0.2)
    assert isinstance(obj, PPO)
    obj.value_head = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(obj.value_head.weight)  # V = the state itself
    pol = torch.tensor([[[-1.0, -2.0]]], requires_grad=True)
    old = torch.tensor([[[-1.1, -2.0]]])
    states = torch.tensor([[[0.2], [0.5]]])                       # [S, T, H]: V = (0.2, 0.5)
    old_values = torch.tensor([[0.0, 0.4]])
    stats = ListStats(policy_logps=pol.sum(-1), scores=torch.tensor([[1.0]]), policy_token_logps=pol,
                      mask=torch.ones(1, 1, 2, dtype=torch.bool),
                      extras={"old_token_logps": old.view(1, 2), "token_states": states, "old_values": old_values})
    out = obj(stats)
    # rewards (0, 1); GAE with gamma = lambda = 1 from V_old: A_1 = 1 - 0.4 = 0.6, A_0 = 0 + 0.4 - 0 + A_1 - 0.4...
    A1 = 1.0 - 0.4
    A0 = (0.0 + 0.4 - 0.0) + A1
    ret = [A0 + 0.0, A1 + 0.4]
    rho = [math.exp(-1.0 + 1.1), 1.0]
    pg = [-min(rho[0] * A0, min(max(rho[0], 0.8), 1.2) * A0), -min(rho[1] * A1, rho[1] * A1)]
    V, Vo = [0.2, 0.5], [0.0, 0.4]
    vc = [Vo[i] + max(-0.2, min(0.2, V[i] - Vo[i])) for i in range(2)]
    vf = [0.5 * max((V[i] - ret[i]) ** 2, (vc[i] - ret[i]) ** 2) for i in range(2)]
    want = sum(pg) / 2 + 0.5 * sum(vf) / 2
    assert out.loss.mean().item() == pytest.approx(want, rel=1e-5)
    assert out.metrics["value_loss"].item() == pytest.approx(sum(vf) / 2, rel=1e-5)


# ----------------------------------------------------------------------------- HyPO (P70)


def test_reverse_kl_surrogate_value_is_the_kl_estimate_and_gradient_the_score_function():
    from preftune.online.hypo import reverse_kl_surrogate

    lp = torch.tensor([-2.0, -1.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.5])
    s = reverse_kl_surrogate(lp, ref)
    assert torch.allclose(s, torch.tensor([-0.5, 0.5]))          # value: log pi - log pi_ref
    s.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([-0.5, 0.5]))    # gradient: (log pi - log pi_ref) * d log pi


def test_hypo_is_dpo_plus_lambda_times_the_onpolicy_kl():
    from preftune.objectives.base import PairStats

    pc, pr = torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -1.0])
    rc, rr = torch.tensor([-3.5, -2.0]), torch.tensor([-3.0, -1.5])
    on, on_ref = torch.tensor([[-5.0], [-6.0]]), torch.tensor([[-4.0], [-7.0]])
    stats = PairStats(pc, pr, rc, rr, extras={"onpolicy_logps": on, "onpolicy_ref_logps": on_ref,
                                               "onpolicy_lengths": torch.tensor([[3], [4]])})
    out = build("hypo", beta=0.5, lam=0.2)(stats)
    dpo = [-math.log(1 / (1 + math.exp(-0.5 * ((a - c) - (b - d))))) for a, b, c, d in zip(pc, pr, rc, rr)]
    kl = [(-5.0 + 4.0), (-6.0 + 7.0)]
    assert out.loss.tolist() == pytest.approx([dpo[0] + 0.2 * kl[0], dpo[1] + 0.2 * kl[1]], rel=1e-6)
    assert out.metrics["onpolicy_kl"].item() == pytest.approx(0.0)


@pytest.mark.slow
def test_hypo_trains_with_seeded_onpolicy_samples(tiny_dir, tmp_path):
    from conftest import arithmetic_rows

    from preftune.train import TrainConfig, train

    def run(name):
        cfg = TrainConfig(model=str(tiny_dir), data=arithmetic_rows(16, seed=3), output=str(tmp_path / name),
                          loss="hypo", lam=0.5, max_new_tokens=4, max_steps=2, batch_size=4, lr=1e-3, progress=False,
                          save_final=False)
        return train(cfg).history

    a, b = run("a"), run("b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # the same samples: seeded by the step
    assert "onpolicy_kl" in a[0] and a[0]["onpolicy_length"] >= 1


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce"])
def test_padded_list_entries_change_nothing(name):
    """A list of 2 padded to 3 (offline lists of uneven length) trains exactly as the list of 2."""
    def run(K):
        pol = torch.tensor([[[-1.0], [-2.0], [-3.0]][:K]], requires_grad=True)
        valid = torch.tensor([[True, True, False][:K]])
        stats = ListStats(policy_logps=pol.sum(-1), scores=torch.tensor([[1.0, 0.0, 0.0][:K]]), valid=valid,
                          policy_token_logps=pol, mask=torch.ones(1, K, 1, dtype=torch.bool),
                          reference_logps=pol.sum(-1).detach(), reference_token_logps=pol.detach())
        build(name)(stats).loss.sum().backward()
        return pol.grad[0, :2, 0]

    assert torch.allclose(run(3), run(2))


# ----------------------------------------------------------------------------- RSO (P34)


def test_rso_rejection_sampling_by_hand():
    import random as _r

    from preftune.online.rso import rso_accept

    # two candidates, r0 < r1: a pass visits them in random order and accepts r1 surely, r0 with
    # p = exp((r0 - r1) / beta); so r0 is accepted first with probability p / 2
    beta, r = 0.5, [0.0, 0.5]
    p = math.exp((r[0] - r[1]) / beta)
    rng = _r.Random(0)
    firsts = [rso_accept(r, 1, beta, rng)[0] for _ in range(20000)]
    assert sum(f == 0 for f in firsts) / 20000 == pytest.approx(p / 2, abs=0.01)
    # a tiny beta is best-of-K, in order; unscored candidates are never accepted; m beyond the pool: all scored ones
    assert rso_accept([0.1, 0.9, 0.5], 2, 1e-6, _r.Random(1)) == [1, 2]
    assert sorted(rso_accept([None, 0.2, None, 0.1], 5, 1.0, _r.Random(2))) == [1, 3]
    with pytest.raises(ValueError, match="beta must be > 0"):
        rso_accept([0.0], 1, 0.0, _r.Random(0))
