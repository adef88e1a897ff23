"""Reward-model ensembles (issue 14): mean, spread and the conservative score in closed form on fake members,
refusals, and a tiny end-to-end ensemble of two trained members."""
from __future__ import annotations

import json
import math

import pytest
import torch

from preftune.errors import ConfigError
from preftune.reward import RewardModel
from preftune.reward.ensemble import EnsembleScores, RewardEnsemble, train_reward_ensemble
from preftune.train import TrainConfig


class Fake:
    """A member that scores response i with a fixed number, recording the calls."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def score(self, prompts, responses):
        self.calls += 1
        return torch.tensor([self.values[int(r)] for r in responses])


def test_mean_std_and_conservative_in_closed_form():
    a, b, c = [1.0, 0.0, -2.0], [3.0, 0.0, 2.0], [2.0, 0.0, 3.0]
    ens = RewardEnsemble([Fake(a), Fake(b), Fake(c)])
    s = ens.score(["p"] * 3, ["0", "1", "2"])
    assert isinstance(s, EnsembleScores) and s.members.shape == (3, 3) and s.k == 1.0
    for j in range(3):
        xs = [a[j], b[j], c[j]]
        m = sum(xs) / 3
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / 3)   # population std over members
        assert s.mean[j].item() == pytest.approx(m)
        assert s.std[j].item() == pytest.approx(sd)
        assert s.conservative[j].item() == pytest.approx(m - sd)
        assert s.mean.dtype == torch.float32
    assert s.std[1].item() == 0.0 and s.conservative[1].item() == 0.0       # members agree: no penalty
    s2 = RewardEnsemble([Fake(a), Fake(b)], k=2.5).score(["p"] * 3, ["0", "1", "2"])
    torch.testing.assert_close(s2.conservative, torch.tensor([2.0 - 2.5, 0.0, 0.0 - 2.5 * 2.0]))
    torch.testing.assert_close(ens.score(["p"], ["2"], k=0).conservative, ens.score(["p"], ["2"]).mean)
    # one member: spread 0, conservative == mean
    one = RewardEnsemble([Fake(a)]).score(["p"] * 3, ["0", "1", "2"])
    torch.testing.assert_close(one.std, torch.zeros(3))
    torch.testing.assert_close(one.conservative, one.mean)


def test_as_reward_model_is_a_plain_scorer_and_nests():
    ens = RewardEnsemble([Fake([0.0, 4.0]), Fake([2.0, 4.0])], k=1.0)
    rm = ens.as_reward_model()
    torch.testing.assert_close(rm.score(["p", "p"], ["0", "1"]), torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(ens.as_reward_model("mean").score(["p"], ["0"]), torch.tensor([1.0]))
    torch.testing.assert_close(ens.as_reward_model("std").score(["p"], ["0"]), torch.tensor([1.0]))
    outer = RewardEnsemble([rm, Fake([2.0, 2.0])])   # duck typing: an ensemble's scorer is a member too
    torch.testing.assert_close(outer.score(["p"], ["1"]).mean, torch.tensor([3.0]))


def test_refusals():
    with pytest.raises(ConfigError, match="at least one member"):
        RewardEnsemble([])
    with pytest.raises(ConfigError, match="no score"):
        RewardEnsemble([Fake([0.0]), object()])
    with pytest.raises(ConfigError, match="k must be"):
        RewardEnsemble([Fake([0.0])], k=-1)
    with pytest.raises(ConfigError, match="which="):
        RewardEnsemble([Fake([0.0])]).as_reward_model("max")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        RewardEnsemble([Fake([0.0])]).score(["a", "b"], ["0"])
    with pytest.raises(ConfigError, match="n >= 1"):
        train_reward_ensemble(TrainConfig(model="x", data="", output="y"), 0)


def test_train_reward_ensemble_two_members_differ_and_mean_lies_between(tiny_dir, tmp_path):
    from conftest import arithmetic_rows

    rows = arithmetic_rows(24, seed=2)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(tiny_dir), data=str(data), output=str(tmp_path / "ens"), batch_size=8, lr=2e-3,
                      max_steps=4, progress=False, seed=5, lr_schedule="constant")
    ens = train_reward_ensemble(cfg, 2, k=0.5)
    assert len(ens) == 2 and all(isinstance(m, RewardModel) for m in ens.models) and ens.k == 0.5
    for i in range(2):
        info = json.loads((tmp_path / "ens" / f"member-{i}" / "run_info.json").read_text())
        assert info["objective"] == "bradley_terry"
        assert (tmp_path / "ens" / f"member-{i}" / "final" / "config.json").exists()
        assert len(ens.results[i].history) == 4
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    s = ens.score(prompts, responses)
    a, b = s.members
    assert float((a - b).abs().max()) > 1e-4                       # other seeds: other heads, other data order
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    assert bool(((s.mean >= lo - 1e-6) & (s.mean <= hi + 1e-6)).all())
    torch.testing.assert_close(s.std, (a - b).abs() / 2)
    torch.testing.assert_close(s.conservative, s.mean - 0.5 * s.std)
    # the saved members load back and score as the in-memory ones do
    again = RewardEnsemble.from_pretrained([r.final_dir for r in ens.results], k=0.5)
    torch.testing.assert_close(again.score(prompts, responses).mean, s.mean, rtol=1e-4, atol=1e-5)
    # seeds config.seed + i: member 0 reproduces a single run with seed 5
    single = train_reward_ensemble(cfg.replace(output=str(tmp_path / "one")), 1)
    torch.testing.assert_close(single.score(prompts, responses).mean, a, rtol=1e-5, atol=1e-6)
