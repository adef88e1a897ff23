"""P30 preference dissection (issue 14): comparison features in closed form, the synthetic judge's label rate,
argument checks, the missing-extra message, and the posterior recovering a known judge's weights (Pyro; skipped
when the [dissect] extra is not installed)."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward.dissect import comparison_features, dissect, synthetic_judge


def test_comparison_features_sign_and_diff():
    a = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    b = torch.tensor([[1.0, 1.0, 4.0], [2.0, 4.5, 5.0]])
    assert comparison_features(a, b).tolist() == [[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]
    assert comparison_features(a, b, mode="diff").tolist() == [[2.0, 0.0, -2.0], [-2.0, 0.5, 0.0]]
    # swapping A and B flips every feature: the reason the model has no intercept
    assert torch.equal(comparison_features(b, a), -comparison_features(a, b))


def test_synthetic_judge_labels_follow_the_logistic_model():
    x, y = synthetic_judge([1.0, -0.5], 20000, seed=0, p_equal=0.0)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    both_up = (x[:, 0] == 1) & (x[:, 1] == 1)          # logit 1 - 0.5 = 0.5
    first_down = (x[:, 0] == -1) & (x[:, 1] == 1)      # logit -1.5
    assert y[both_up].mean().item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=0.02)
    assert y[first_down].mean().item() == pytest.approx(1 / (1 + math.exp(1.5)), abs=0.02)
    x0, _ = synthetic_judge([1.0], 20000, seed=1, p_equal=0.3)
    assert (x0 == 0).double().mean().item() == pytest.approx(0.3, abs=0.02)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="mode"):
        comparison_features(torch.zeros(2, 2), torch.zeros(2, 2), mode="ratio")
    with pytest.raises(ConfigError, match=r"\[N, P\]"):
        comparison_features(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="only 0 and 1"):
        dissect(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ConfigError, match="names"):
        dissect(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]), names=["a"])
    with pytest.raises(ConfigError, match="method"):
        dissect(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]), method="vi")


def test_missing_pyro_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyro", None)       # import pyro now raises ImportError
    with pytest.raises(ImportError, match=r"preftune\[dissect\]"):
        dissect(torch.ones(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]))


TRUE_W = [1.5, 0.5, -0.5, -1.5]


@pytest.mark.slow
def test_nuts_posterior_recovers_ranking_and_signs():
    pytest.importorskip("pyro")
    torch.set_num_threads(1)
    x, y = synthetic_judge(TRUE_W, 500, seed=0)
    d = dissect(x, y, names=["a", "b", "c", "d"], method="nuts", num_samples=150, warmup=100, seed=0)
    assert d.ranking() == ["a", "b", "c", "d"]
    assert [math.copysign(1, m) for m in d.mean.tolist()] == [1, 1, -1, -1]
    # the strong weights' 95% intervals exclude 0; the Laplace(0, 0.1) prior shrinks toward 0, never past it
    assert d.lower[0] > 0 and d.upper[3] < 0
    assert 0 < d.mean[0].item() < 1.5 and -1.5 < d.mean[3].item() < 0
    assert d.samples.shape == (150, 4)


@pytest.mark.slow
def test_svi_posterior_recovers_signs_of_strong_weights():
    pytest.importorskip("pyro")
    torch.set_num_threads(1)
    x, y = synthetic_judge(TRUE_W, 500, seed=1)
    d = dissect(x, y, method="svi", svi_steps=300, num_samples=200, seed=0)
    assert d.mean[0] > d.mean[1] > d.mean[2] > d.mean[3]
    assert d.mean[0] > 0 > d.mean[3]
