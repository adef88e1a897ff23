"""Issue 13, the remaining checks: ASFT against the one full statement of its loss that was readable, the
gradient-ascent baseline of NPO (P06) against the authors' TOFU code, and ORPO's prompt-token NLL as TRL's
ORPOTrainer computes it, supplied by ``prompt_logps`` inside ``preftune train``.

Expected values are written out with plain ``math`` / a plain Hugging Face forward, not with preftune helpers.
"""
import json
import math

import pytest
import torch

from preftune.objectives import get
from preftune.objectives.base import PairStats, UnpairedStats


def T(x):
    return torch.tensor(x, dtype=torch.float64)


def ls(x):  # log sigmoid
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ----------------------------------------------------------------------------------------------- ASFT (P26)
# Source: Gorbatovski et al. 2025, "The Differences Between Direct Alignment Algorithms are a Blur"
# (arXiv 2502.01237), sec. 2.4: L_ASFT = -log pi(y_w|x) - lambda [log sigmoid(r_odds(y_w)) + log sigmoid(-r_odds(y_l))],
# r_odds(y) = log(pi(y|x) / (1 - pi(y|x))), with pi length-normalised (their App. A.1, Table 4: ASFT ✓) -- a
# third-party restatement, since P26's own body was not readable here (abstract only).

def test_asft_matches_the_restated_loss_with_log_odds_written_out():
    lam = 0.7
    pc, pr, lc, lr = [-6.0, -20.0], [-9.0, -2.5], [4, 10], [6, 2]
    s = PairStats(T(pc), T(pr), None, None, torch.tensor(lc), torch.tensor(lr))
    want = []
    for i in range(2):
        p_w, p_l = math.exp(pc[i] / lc[i]), math.exp(pr[i] / lr[i])   # geometric-mean token probabilities
        odds_w, odds_l = math.log(p_w / (1 - p_w)), math.log(p_l / (1 - p_l))
        want.append(-math.log(p_w) - lam * (ls(odds_w) + ls(-odds_l)))
    torch.testing.assert_close(get("asft", lam=lam)(s).loss, T(want), rtol=1e-6, atol=0)
    # their App. C: the alignment term is binary cross-entropy, -log p_w - log(1 - p_l)
    p_w, p_l = math.exp(pc[0] / lc[0]), math.exp(pr[0] / lr[0])
    assert math.isclose(-(ls(math.log(p_w / (1 - p_w))) + ls(-math.log(p_l / (1 - p_l)))),
                        -math.log(p_w) - math.log(1 - p_l), rel_tol=1e-12)


# --------------------------------------------------------------------------------------- grad_ascent (P06)
# Source: licong-lin/negative-preference-optimization, TOFU/dataloader.py, CustomTrainerForgetting.compute_loss
# @ 1207bbe9a1abf502bc2d7b43a0a467d9524b4036:
#   'grad_ascent': loss = -outputs.loss                          (HF causal-LM loss: mean NLL over forget tokens)
#   'grad_diff':   loss = -forget outputs.loss + retain outputs.loss

def _unpaired(logps, lengths, labels):
    return UnpairedStats(T(logps), torch.tensor(labels), lengths=torch.tensor(lengths))


def test_grad_ascent_batch_mean_is_minus_the_forget_token_mean_nll():
    logps, lengths, labels = [-3.0, -8.0, -5.0, -1.0], [3, 4, 5, 2], [False, False, True, True]
    forget_nll = (3.0 + 8.0) / (3 + 4)          # sum of forget NLLs / forget tokens
    retain_nll = (5.0 + 1.0) / (5 + 2)
    ga = get("grad_ascent")(_unpaired(logps, lengths, labels)).loss
    assert math.isclose(float(ga.mean()), -forget_nll, rel_tol=1e-12)
    gd = get("grad_ascent", retain_weight=1.0)(_unpaired(logps, lengths, labels)).loss
    assert math.isclose(float(gd.mean()), -forget_nll + retain_nll, rel_tol=1e-12)
    # the mix of the batch does not change the weights: forget only gives the same forget term
    only = get("grad_ascent", retain_weight=1.0)(_unpaired(logps[:2], lengths[:2], labels[:2])).loss
    assert math.isclose(float(only.mean()), -forget_nll, rel_tol=1e-12)


def test_grad_ascent_pushes_forget_down_without_bound_and_npo_saturates():
    # GA's gradient on a forget example's log-prob does not fade; NPO's does as the example becomes unlikely
    def grad(name, logp, **hp):
        lp = T([logp]).requires_grad_(True)
        s = UnpairedStats(lp, torch.tensor([False]), T([0.0]), lengths=torch.tensor([4]))
        get(name, **hp)(s).loss.sum().backward()
        return float(lp.grad)
    assert grad("grad_ascent", -1.0) == grad("grad_ascent", -500.0) == 1 / 4 > 0
    # NPO (P06 eq. 3): d/dh -(2/b) log sigmoid(-b h) = 2 sigmoid(b h): 1 at h = 0, ~0 far below the reference
    assert math.isclose(grad("npo", 0.0, beta=0.1), 1.0, rel_tol=1e-9)
    assert grad("npo", -200.0, beta=0.1) < 1e-8


# ------------------------------------------------------------------------ ORPO: prompt tokens, as TRL (1.16)
# Source: trl/experimental/orpo/orpo_trainer.py, ORPOTrainer.concatenated_forward (TRL 1.16.0): labels = the
# chosen input ids where attention_mask == 1 (prompt included), shifted by one, nn.CrossEntropyLoss() -- the
# mean NLL over every such token of the batch.

def _tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(tiny_dir)))


def test_prompt_logps_are_the_prompt_tokens_log_probs_after_the_first(tiny_dir):
    from preftune.data.types import TokenizedPair
    from preftune.suppliers.prompt_logps import prompt_logps

    model, tok = _tiny(tiny_dir)
    items = [TokenizedPair(tok(p)["input_ids"], tok(c)["input_ids"], tok(r)["input_ids"])
             for p, c, r in [("12+7=", "19", "20"), ("a longer prompt 3+4=", "7", "8"), ("x", "1", "2")]]
    with torch.no_grad():
        got, n = prompt_logps(model, items, tok.pad_token_id)
        for i, it in enumerate(items):  # one unpadded forward per prompt, written out
            ids = torch.tensor([it.prompt_ids])
            lp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            want = float(lp.gather(-1, ids[0, 1:, None]).sum()) if len(it.prompt_ids) > 1 else 0.0
            assert math.isclose(float(got[i]), want, rel_tol=1e-5, abs_tol=1e-6)
            assert int(n[i]) == max(len(it.prompt_ids) - 1, 0)


@pytest.mark.slow
def test_orpo_prompt_and_completion_trains_from_preftune_train(tiny_dir, tmp_path):
    from preftune.data.formats import load_examples
    from preftune.data.tokenize import tokenize_examples
    from preftune.train import TrainConfig, train

    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in
            [(1, 2), (12, 7), (3, 40), (5, 5)]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = _tiny(tiny_dir)
    # TRL's NLL at step 1, written out: every chosen sequence (prompt + completion, with the ids preftune's
    # tokenization gives) through a plain forward; NLL of every token after the first, mean over the batch's
    # tokens. One batch of all four rows, so the trainer's order does not matter.
    items = tokenize_examples(load_examples(str(data)).examples, tok, max_length=None, max_prompt_length=None).items
    tot, n = 0.0, 0
    with torch.no_grad():
        for it in items:
            ids = torch.tensor([it.prompt_ids + it.chosen_ids])
            lp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])
            tot, n = tot - float(lp.sum()), n + ids.shape[1] - 1
    cfg = TrainConfig(model=str(tiny_dir), data=str(data), output=str(tmp_path / "run"), loss="orpo",
                      loss_params={"nll_tokens": "prompt_and_completion"}, batch_size=4, lr=1e-3, max_steps=3,
                      progress=False, group_by_length=False, seed=0, lr_schedule="constant", save_final=False,
                      save_every=0)
    res = train(cfg)
    assert len(res.history) == 3
    assert math.isclose(res.history[0]["nll/chosen"], tot / n, rel_tol=1e-4)
    assert res.history[-1]["nll/chosen"] < res.history[0]["nll/chosen"]  # the NLL, prompt included, is trained
