"""P64 CDR: the density-ratio reward log pi_strong(y|x) - log pi_weak(y|x), checked against log-probabilities
computed by hand from full forward passes, its limit cases, the criteria prompt, and ``rm cdr-score``."""
import json

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward.density_ratio import DensityRatioReward, density_ratio

PROMPTS = ["1+2=", "3+4=", "9+9="]
RESPONSES = ["3", "71", "18"]


@pytest.fixture(scope="module")
def models(tiny_dir):
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.models.tiny import build_model

    tok = load_tokenizer(str(tiny_dir))
    weak = load_model(str(tiny_dir)).eval()
    strong = build_model(len(tok), hidden_size=32, num_layers=2, num_heads=4, seed=7, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).eval()
    return strong, weak, tok


def _logp_by_hand(model, tok, prompt, response):
    """sum_t log softmax(logits[t-1])[id_t] over the response tokens and EOS, one unpadded forward."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(p) + i - 1, t]) for i, t in enumerate(r)), len(r)


def test_density_ratio_function_by_hand():
    s, w = torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -4.0])
    assert density_ratio(s, w).tolist() == [2.0, -6.0]
    got = density_ratio(s, w, torch.tensor([3.0, 5.0]), torch.tensor([2.0, 4.0]), reduction="mean")
    assert got.tolist() == pytest.approx([-3 / 3 + 5 / 2, -10 / 5 + 4 / 4])
    with pytest.raises(ConfigError, match="reduction"):
        density_ratio(s, w, reduction="max")
    with pytest.raises(ConfigError, match="token counts"):
        density_ratio(s, w, reduction="mean")


def test_scores_equal_hand_computed_log_ratio(models):
    strong, weak, tok = models
    drr = DensityRatioReward(strong, weak, tok, batch_size=2)  # two batches, padding inside each
    got = drr.score(PROMPTS, RESPONSES)
    want = [_logp_by_hand(strong, tok, p, r)[0] - _logp_by_hand(weak, tok, p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    mean = DensityRatioReward(strong, weak, tok, reduction="mean").score(PROMPTS, RESPONSES)
    want_mean = []
    for p, r in zip(PROMPTS, RESPONSES):
        (ls, n), (lw, _) = _logp_by_hand(strong, tok, p, r), _logp_by_hand(weak, tok, p, r)
        want_mean.append(ls / n - lw / n)
    assert mean.tolist() == pytest.approx(want_mean, abs=1e-4)


def test_swapping_the_models_negates_and_the_criteria_reach_the_strong_model_only(models):
    strong, weak, tok = models
    fwd = DensityRatioReward(strong, weak, tok).score(PROMPTS, RESPONSES)
    back = DensityRatioReward(weak, strong, tok).score(PROMPTS, RESPONSES)
    assert back.tolist() == pytest.approx((-fwd).tolist(), abs=1e-5)
    crit = "hello "
    c = DensityRatioReward(strong, weak, tok, criteria=crit).components(PROMPTS, RESPONSES)
    want_strong = [_logp_by_hand(strong, tok, crit + p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    want_weak = [_logp_by_hand(weak, tok, p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert c["strong"].tolist() == pytest.approx(want_strong, abs=1e-4)
    assert c["weak"].tolist() == pytest.approx(want_weak, abs=1e-4)
    # one model with the criteria on its side only: the reward is what the criteria change, and 0 when shared
    same = DensityRatioReward(weak, weak, tok, criteria=crit)
    want = [_logp_by_hand(weak, tok, crit + p, r)[0] - w for (p, r), w in zip(zip(PROMPTS, RESPONSES), want_weak)]
    assert same.score(PROMPTS, RESPONSES).tolist() == pytest.approx(want, abs=1e-4)
    shared = DensityRatioReward(weak, weak, tok, criteria=crit, criteria_for_weak=True)
    assert shared.score(PROMPTS, RESPONSES).abs().max() == 0.0


def test_refuses_bad_settings(models):
    strong, weak, tok = models
    with pytest.raises(ConfigError, match="one model"):
        DensityRatioReward(weak, weak, tok)
    with pytest.raises(ConfigError, match="reduction"):
        DensityRatioReward(strong, weak, tok, reduction="median")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        DensityRatioReward(strong, weak, tok).score(PROMPTS[:2], RESPONSES[:1])
    assert DensityRatioReward(strong, weak, tok).score([], []).shape == (0,)


@pytest.mark.slow
def test_a_model_trained_toward_the_right_answers_ranks_them_first(models):
    """Strong = weak + a few SFT steps on the right sums of these prompts (a better-aligned model); the density
    ratio then ranks right over wrong sums -- what P64 uses it for -- though no pair was ever trained on."""
    import copy

    from conftest import arithmetic_rows
    from preftune.arena.labelling import pair_accuracy
    from preftune.data.types import PairExample

    _, weak, tok = models
    rows = arithmetic_rows(16, seed=9)
    enc = [(tok(r["prompt"], add_special_tokens=False)["input_ids"],
            tok(r["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for r in rows]
    T = max(len(p) + len(c) for p, c in enc)
    ids = torch.full((len(enc), T), tok.pad_token_id)
    labels = torch.full((len(enc), T), -100)
    attn = torch.zeros((len(enc), T), dtype=torch.long)
    for i, (p, c) in enumerate(enc):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
        attn[i, :len(p) + len(c)] = 1
    strong = copy.deepcopy(weak).train()
    opt = torch.optim.AdamW(strong.parameters(), lr=1e-2)
    for _ in range(25):
        loss = strong(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    strong.eval()
    pairs = [PairExample(r["prompt"], r["chosen"], r["rejected"], row=i) for i, r in enumerate(rows)]
    before = pair_accuracy(DensityRatioReward(weak, weak, tok, criteria=" "), pairs)  # no gap: a blank criterion
    after = pair_accuracy(DensityRatioReward(strong, weak, tok), pairs)
    assert after >= 0.9 and after > before


def test_cdr_score_cli(models, tiny_dir, tmp_path):
    from preftune.cli.main import main

    strong, _, tok = models
    sdir = tmp_path / "strong"
    strong.save_pretrained(sdir, safe_serialization=True)
    tok.save_pretrained(sdir)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "response": r, "id": i}) + "\n"
                            for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))))
    out = tmp_path / "scored.jsonl"
    assert main(["rm", "cdr-score", "--strong", str(sdir), "--weak", str(tiny_dir), "--data", str(rows),
                 "--output", str(out), "--components"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [0, 1, 2]
    for g, (p, r) in zip(got, zip(PROMPTS, RESPONSES)):
        want = _logp_by_hand(strong, tok, p, r)[0] - g["logp_weak"]
        assert g["score"] == pytest.approx(want, abs=1e-4)
        assert g["logp_strong"] - g["logp_weak"] == pytest.approx(g["score"], abs=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    assert main(["rm", "cdr-score", "--strong", str(sdir), "--weak", str(tiny_dir), "--data", str(bad)]) == 2
