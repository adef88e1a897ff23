"""TPO (P23, arXiv 2410.12854) fidelity: the loss from its formula written out by hand, the ranked-steps data
field, and an end-to-end run with adaptive step rewards."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from preftune.data.collate import collate_ranked
from preftune.data.formats import load_examples
from preftune.data.tokenize import tokenize_examples
from preftune.errors import DataError
from preftune.objectives import get
from preftune.objectives.base import ListStats
from preftune.objectives.listwise import adaptive_step_weights
from preftune.train import TrainConfig, train


def _ls(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------- the loss

def _lipo_lambda_loss(r, sc):
    """TPO's ranking loss for one list, in plain floats. Source: P23 sec. 3.2, which takes LiPO-lambda
    (Liu et al. 2024, arXiv 2402.01878, sec. 4.3) as written there:
      L = sum_{i, j: psi_i > psi_j} Delta_ij * log(1 + exp(-(s_i - s_j)))
      Delta_ij = |G_i - G_j| * |1/D(tau(i)) - 1/D(tau(j))|,  G_i = 2^psi_i - 1,  D(tau) = log(1 + tau),
      tau(i) = rank position of y_i in the ranking permutation induced by s (the model's rewards).
    Ties in s are broken by psi, then by position (preftune's choice; the paper leaves ties open)."""
    K = len(r)
    order = sorted(range(K), key=lambda k: (-r[k], -sc[k], k))
    tau = {k: p + 1 for p, k in enumerate(order)}
    tot = 0.0
    for i in range(K):
        for j in range(K):
            if sc[i] > sc[j]:
                delta = abs((2 ** sc[i] - 1) - (2 ** sc[j] - 1)) * abs(1 / math.log(1 + tau[i]) -
                                                                       1 / math.log(1 + tau[j]))
                tot += delta * math.log1p(math.exp(-(r[i] - r[j])))
    return tot


def test_tpo_loss_with_step_weights_matches_the_formula_written_out():
    # r_k = beta * sum_t w_kt * (log pi - log pi_ref)_t (P23 sec. 3.3 as preftune states it), then the
    # LiPO-lambda ranking loss above with tau from the ranking by r.
    torch.manual_seed(0)
    B, K, T, beta = 2, 3, 4, 0.7
    pt = (-torch.rand(B, K, T, dtype=torch.float64) * 3)
    rt = (-torch.rand(B, K, T, dtype=torch.float64) * 3)
    w = torch.rand(B, K, T, dtype=torch.float64)
    scores = torch.tensor([[0.2, 1.0, 0.6], [3.0, 1.0, 2.0]], dtype=torch.float64)
    stats = ListStats(pt.sum(-1), scores, rt.sum(-1), policy_token_logps=pt, reference_token_logps=rt,
                      extras={"step_weights": w})
    got = get("tpo", beta=beta, step_rewards=True)(stats).loss
    want = []
    for b in range(B):
        r = [beta * sum(float(w[b, k, t]) * (float(pt[b, k, t]) - float(rt[b, k, t])) for t in range(T))
             for k in range(K)]
        want.append(_lipo_lambda_loss(r, [float(x) for x in scores[b]]))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)


def test_tpo_lambda_ranks_by_the_policy_rewards_with_natural_log():
    # A list where the policy's ranking (by r) and the label ranking differ, worked by hand:
    # psi = (2, 1, 0), r = (0, 1, -1): tau by r = (2, 1, 3); by labels it would be (1, 2, 3).
    psi, r = [2.0, 1.0, 0.0], [0.0, 1.0, -1.0]
    s = ListStats(torch.tensor([r], dtype=torch.float64), torch.tensor([psi], dtype=torch.float64),
                  torch.zeros(1, 3, dtype=torch.float64))
    L = math.log
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    want = (2 * abs(1 / L(3) - 1 / L(2)) * sp(0 - 1)       # (0 beats 1): |G| 3 - 1, tau 2 vs 1
            + 3 * abs(1 / L(3) - 1 / L(4)) * sp(0 + 1)     # (0 beats 2): |G| 3 - 0, tau 2 vs 3
            + 1 * abs(1 / L(2) - 1 / L(4)) * sp(1 + 1))    # (1 beats 2): |G| 1 - 0, tau 1 vs 3
    got = get("tpo", beta=1.0)(s).loss
    torch.testing.assert_close(got, torch.tensor([want], dtype=torch.float64), rtol=1e-9, atol=0)
    label_rank = (2 * abs(1 / L(2) - 1 / L(3)) * sp(-1) + 3 * abs(1 / L(2) - 1 / L(4)) * sp(1)
                  + abs(1 / L(3) - 1 / L(4)) * sp(2))
    assert abs(float(got) - label_rank) > 0.1  # the rank is the policy's, not the labels'
    # at equal rewards (the first step) the tie-break by label gives the ideal ranking's weights
    s0 = ListStats(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([psi], dtype=torch.float64),
                   torch.zeros(1, 3, dtype=torch.float64))
    want0 = (2 * abs(1 / L(2) - 1 / L(3)) + 3 * abs(1 / L(2) - 1 / L(4)) + abs(1 / L(3) - 1 / L(4))) * math.log(2)
    torch.testing.assert_close(get("tpo", beta=1.0)(s0).loss, torch.tensor([want0], dtype=torch.float64))


def test_tpo_padded_entries_rank_last_and_carry_no_pairs():
    # a padded third entry with a high reward must neither take a rank above the real ones nor form pairs
    psi, r = [1.0, 0.0, 5.0], [0.3, -0.2, 9.0]
    s = ListStats(torch.tensor([r], dtype=torch.float64), torch.tensor([psi], dtype=torch.float64),
                  torch.zeros(1, 3, dtype=torch.float64), valid=torch.tensor([[True, True, False]]))
    want = _lipo_lambda_loss(r[:2], psi[:2])
    torch.testing.assert_close(get("tpo", beta=1.0)(s).loss, torch.tensor([want], dtype=torch.float64))


def test_adaptive_step_weights_from_the_formula():
    # Source: P23 sec. 3.3 as preftune states it: w_ks = clamp(1 - max_{j != k, s'} cos(e_ks, e_js'), 0, 1)
    e = [[torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]]
    ids = torch.tensor([[0, 0, 1, -1], [0, 1, 1, 1]])
    got = adaptive_step_weights(ids, e)
    c = 1 / math.sqrt(2)
    w00, w01 = 1 - 1.0, 1 - c          # step 0 of response 0 is shared verbatim with response 1
    w10, w11 = 1 - 1.0, 1 - c
    want = torch.tensor([[w00, w00, w01, 0.0], [w10, w11, w11, w11]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_released_code_outer_sign_reverses_the_ranking():
    # MrBlankness/TPO loss.py @ ba87a23: loss = -logsigmoid(beta * lambda_rank_loss(r, labels)), with
    # lambda_rank_loss = mean over ordered pairs of -logsigmoid((r_i - r_j) * sign(l_i - l_j)) (re-written here).
    r = torch.zeros(1, 3, requires_grad=True)
    labels = torch.tensor([[3.0, 2.0, 1.0]])
    diff = r.unsqueeze(2) - r.unsqueeze(1)
    rank = (-F.logsigmoid(diff * (labels.unsqueeze(2) - labels.unsqueeze(1)).sign())).sum((1, 2)) / 6
    (-F.logsigmoid(0.1 * rank)).mean().backward()
    assert r.grad[0, 0] > 0 > r.grad[0, 2]  # descent lowers the best response's reward: inverted
    s = ListStats(r.detach().clone().requires_grad_(True), labels, torch.zeros(1, 3))
    get("tpo", beta=1.0)(s).loss.sum().backward()
    assert s.policy_logps.grad[0, 0] < 0 < s.policy_logps.grad[0, 2]  # preftune's TPO: the right way round


# ----------------------------------------------------------------------------------------- the data field

def _steps_rows(n=8):
    return [{"prompt": f"{i}+1=", "completions": [[f"{i}+1", f"={i + 1}"], [f"{i}+2", f"={i + 2}"], [f"{i}", "=?"]],
             "scores": [1.0, 0.5, 0.0]} for i in range(n)]


def test_ranked_steps_parse_to_joined_text_and_offsets(tmp_path):
    res = load_examples(str(_write(tmp_path / "s.jsonl", _steps_rows(2))))
    ex = res.examples[0]
    assert res.kind == "list" and ex.completions[0] == "0+1=1" and ex.steps[0] == (3, 5)
    plain = load_examples(str(_write(tmp_path / "p.jsonl", [{"prompt": "a", "completions": ["x", "y"],
                                                             "scores": [1, 0]}])))
    assert plain.examples[0].steps is None


@pytest.mark.parametrize("completions, field, msg", [
    ([["a", "b"], "c"], "completions[1]", "is a string but completions[0] is a list of steps"),
    (["c", ["a", "b"]], "completions[1]", "is a list of steps but completions[0] is a string"),
    ([["a", 3], ["b"]], "completions[0][1]", "must be a step string, got int"),
    ([["a", "  "], ["b"]], "completions[0][1]", "is a step of only whitespace"),
    ([[], ["b"]], "completions[0]", "is an empty list of steps"),
])
def test_ranked_steps_are_validated_with_one_line_errors(tmp_path, completions, field, msg):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "completions": completions, "scores": [1, 0]}])
    with pytest.raises(DataError) as e:
        load_examples(str(f))
    text = str(e.value)
    assert "\n" not in text and msg in text and field in text and "bad.jsonl" in text and "1" in text


def test_step_boundaries_map_to_tokens_and_the_batch(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    ex = load_examples(str(_write(tmp_path / "s.jsonl", _steps_rows(1)))).examples
    item = tokenize_examples(ex, tok, max_length=None, max_prompt_length=None).items[0]
    for text, ends, ids, sid in zip(ex[0].completions, ex[0].steps, item.completion_ids, item.step_ids):
        assert len(sid) == len(ids) and sid == sorted(sid) and sid[0] == 0 and sid[-1] == len(ends) - 1
        first = tok(text=ex[0].prompt + text[:ends[0]])["input_ids"]
        assert sid.count(0) <= len(first) - len(item.prompt_ids)  # step 0's tokens lie inside its text
    batch = collate_ranked([item], pad_id=0)
    sid = batch.extras["step_ids"]
    assert sid.shape == batch.input_ids.shape
    assert torch.equal(sid >= 0, batch.seq_mask)  # a step id exactly at each response token


# -------------------------------------------------------------------------------------------- end to end

def test_tpo_trains_with_step_rewards_from_preftune_train(tiny_dir, tmp_path):
    data = _write(tmp_path / "steps.jsonl", _steps_rows(16))
    cfg = TrainConfig(model=str(tiny_dir), data=str(data), output=str(tmp_path / "run"), loss="tpo",
                      loss_params={"beta": 0.5, "step_rewards": True}, batch_size=4, lr=1e-2, max_steps=6,
                      progress=False, group_by_length=False, seed=0, lr_schedule="constant")
    res = train(cfg)
    assert len(res.history) == 6 and all(math.isfinite(h["loss"]) for h in res.history)
    assert res.history[-1]["rewards/margins"] > res.history[0]["rewards/margins"]
    # the weights are the supplier's, not all ones: steps shared across a prompt's responses count less
    assert all(0.0 < h["tpo/step_weight_mean"] < 1.0 for h in res.history)
