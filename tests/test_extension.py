"""Issue 11's acceptance: a new objective needing a new statistic from a new supplier, defined outside the
package (a module of the user's), trains through ``preftune.train`` without touching preftune's source."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap

import pytest

from preftune.errors import ConfigError
from preftune.train import TrainConfig, train

PLUGIN = textwrap.dedent('''
    """A user's module: a statistic (the chosen response's share of the pair's tokens) and an objective
    that weights DPO by it."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    from preftune.objectives import Objective, ObjectiveOutput, hp, register
    from preftune.objectives.base import logratios, reward_metrics
    from preftune.suppliers import Supplier, register_supplier

    CALLS = []


    @register_supplier
    class ChosenShare(Supplier):
        provides = ("chosen_share",)

        def supply(self, stats, step):
            CALLS.append(step.batch.num_examples)
            n_c, n_r = stats.chosen_lengths.float(), stats.rejected_lengths.float()
            stats.extras["chosen_share"] = n_c / (n_c + n_r)


    @register
    @dataclass
    class ShareWeightedDPO(Objective):
        """DPO (eq. 7) with each pair weighted by 2 * chosen_share (1 for equal lengths)."""

        name = "share_weighted_dpo_plugin"
        paper = "plugin example, eq. 7"
        needs = ("chosen_lengths", "chosen_share")
        beta: float = hp(0.1, "inverse temperature", low=0.0, low_open=True)

        def __call__(self, stats):
            self.check_stats(stats)
            hc, hr = logratios(stats)
            w = 2 * stats.extras["chosen_share"]
            m = reward_metrics(self.beta * hc, self.beta * hr, stats)
            m["share_weight"] = w.mean()
            return ObjectiveOutput(w * -F.logsigmoid(self.beta * (hc - hr)), m)
''')


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _cfg(tiny_dir, data, out, **kw):
    return TrainConfig(model=str(tiny_dir), data=str(data), output=str(out), batch_size=8, lr=5e-3, max_steps=3,
                       progress=False, layout="padded", **kw)


def test_outside_objective_needing_outside_statistic_trains(tiny_dir, pair_rows, tmp_path):
    rows = [{**r, "rejected": r["rejected"] + "00" * (i % 2)} for i, r in enumerate(pair_rows)]  # lengths differ
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    plugin = _import(tmp_path / "my_plugin.py", "my_plugin_for_preftune_test")
    res = train(_cfg(tiny_dir, data, tmp_path / "run", loss="share_weighted_dpo_plugin", loss_params={"beta": 0.5}))
    assert plugin.CALLS == [8, 8, 8]  # the supplier served every micro-batch
    first = res.history[0]
    # step 1: policy = reference, each pair's DPO loss is log 2, weighted by 2 * its chosen share
    assert first["loss"] == pytest.approx(math.log(2) * first["share_weight"], rel=1e-6)
    assert first["share_weight"] < 0.95  # half the rejected answers are longer: the statistic reached the loss
    assert res.history[-1]["loss"] < first["loss"]


def test_a_need_nobody_supplies_is_refused_before_any_work(tiny_dir, pair_rows, tmp_path):
    (tmp_path / "lonely.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from preftune.objectives import Objective, register

        @register
        @dataclass
        class Lonely(Objective):
            """Needs a statistic no supplier provides (eq. 1)."""
            name = "lonely_plugin"
            paper = "plugin, eq. 1"
            needs = ("nobody_supplies_this",)
    '''))
    _import(tmp_path / "lonely.py", "lonely_plugin_for_preftune_test")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    with pytest.raises(ConfigError, match="needs nobody_supplies_this, which `preftune train` does not compute yet"):
        train(_cfg(tiny_dir, data, tmp_path / "run", loss="lonely_plugin"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
