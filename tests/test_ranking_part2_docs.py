"""docs/ranking-part2.md: every Python example runs and trains something (a gradient reaches a parameter)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "ranking-part2.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_seven_examples_are_documented():
    assert len(BLOCKS) == 7


# the SAF and IBCL examples train for several epochs / fit six posteriors: seconds on a loaded CPU
SLOW = {5, 6}


@pytest.mark.parametrize("i", [pytest.param(i, marks=pytest.mark.slow) if i in SLOW else i
                               for i in range(len(BLOCKS))])
def test_doc_example_runs(i):
    torch.manual_seed(0)
    env: dict = {"__name__": "__doc_example__"}
    exec(compile(BLOCKS[i], f"{DOC}:example{i}", "exec"), env)
    if "params" in env:                    # IBCL: a zero-shot model with the model's own parameter names
        assert set(env["params"]) == {"weight", "bias"} and env["out"].shape == (5, 1)
        return
    # every other example ends with loss.backward(): some parameter or leaf input received a gradient
    leaves = [p for v in env.values() if isinstance(v, torch.nn.Module) for p in v.parameters()]
    leaves += [v for v in env.values() if isinstance(v, torch.Tensor) and v.is_leaf and v.requires_grad]
    assert any(t.grad is not None and float(t.grad.abs().sum()) > 0 for t in leaves)
