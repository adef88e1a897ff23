"""The inverse-CDF sampler inside transformers' generate: exactly the distribution do_sample=True draws from."""
from __future__ import annotations

import math

import pytest
import torch

from preftune.models import build_model
from preftune.models.generate import generate
from preftune.models.sampling import InverseCDFSampler, draw_inverse_cdf, inverse_cdf_supported

V = 16


def test_draws_follow_the_probabilities_and_never_a_zero():
    p = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    n = 40_000
    draws = draw_inverse_cdf(p.expand(n, -1), generator=g)
    freq = torch.bincount(draws, minlength=5).double() / n
    assert freq[1] == 0 and freq[4] == 0
    # 4 standard errors of a binomial frequency
    for k in (0, 2, 3):
        assert abs(freq[k] - p[k]) < 4 * math.sqrt(p[k] * (1 - p[k]) / n)


def test_unnormalised_rows_and_the_rounding_edge(monkeypatch):
    p = torch.tensor([[0.0, 2.0, 0.0, 6.0, 0.0]])  # total 8, not 1
    # u just below 1: u * total may round to total; the last positive entry (3) is drawn, never the trailing zero
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full((1, 1), 1.0 - 2 ** -53, dtype=torch.float64))
    assert draw_inverse_cdf(p).tolist() == [3]
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros((1, 1), dtype=torch.float64))
    assert draw_inverse_cdf(p).tolist() == [1]  # u = 0: the first entry with positive probability


def test_bad_probabilities_raise():
    with pytest.raises(ValueError, match="nan"):
        draw_inverse_cdf(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="sums to 0"):
        draw_inverse_cdf(torch.zeros(1, 3))


def test_processor_applies_temperature_top_k_top_p_then_one_hot():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]]).expand(6000, -1).clone()
    proc = InverseCDFSampler(temperature=0.5, top_k=3, top_p=0.95)
    out = proc(torch.zeros(6000, 1, dtype=torch.long), scores)
    assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == 6000 * 4
    tok = out.argmax(-1)
    # by hand: temperature 0.5 -> logits 4, 2, 0 (top-3), softmax; top-p 0.95 keeps the first two (0.867 + 0.117)
    z = torch.tensor([4.0, 2.0, 0.0])
    q = torch.softmax(z, 0)
    assert q[0] < 0.95 <= q[0] + q[1]
    keep = q[:2] / q[:2].sum()
    freq = torch.bincount(tok, minlength=5).double() / 6000
    assert freq[2:].sum() == 0
    assert abs(freq[0] - keep[0]) < 4 * math.sqrt(keep[0] * (1 - keep[0]) / 6000)


def _model():
    m = build_model(V, hidden_size=16, num_layers=1, num_heads=2, seed=3, pad_token_id=0, eos_token_id=1)
    return m.eval()


def test_generate_samples_the_distribution_do_sample_does(monkeypatch):
    """First tokens of 3000 samples of one prompt: frequencies within sampling error of the model's softmax (at
    temperature 0.7), the same check transformers' own multinomial path passes."""
    import preftune.models.generate as G

    m = _model()
    prompt = [3, 4, 5]
    with torch.no_grad():
        probs = torch.softmax(m(torch.tensor([prompt])).logits[0, -1] / 0.7, -1).double()
    n = 3000

    def first_tokens() -> torch.Tensor:
        gens = generate(m, None, [prompt], n=n, max_new_tokens=1, temperature=0.7, seed=11, batch_size=1000,
                        eos_id=1, pad_id=0)
        return torch.tensor([g.response_ids[0] for g in gens])

    ours = first_tokens()
    monkeypatch.setattr(G, "inverse_cdf_supported", lambda model: False)
    theirs = first_tokens()
    for toks in (ours, theirs):
        freq = torch.bincount(toks, minlength=V).double() / n
        se = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 4.5 * se + 1e-3).all()
    assert not torch.equal(ours, theirs)  # the draws themselves differ: another use of the random stream


def test_generation_configs_with_other_warpers_keep_transformers_sampling():
    m = _model()
    assert inverse_cdf_supported(m)
    m.generation_config.min_p = 0.1
    assert not inverse_cdf_supported(m)
    m.generation_config.min_p = None
    m.generation_config.typical_p = 0.9
    assert not inverse_cdf_supported(m)
