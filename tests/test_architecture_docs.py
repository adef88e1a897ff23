"""docs/architecture.md's worked examples run: one per kind of addition (objective and statistic, data kind,
batch source, forward, diagnostic, arena task), each after the doc's set-up block, each asserting its effect."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCKS = re.findall(r"^### (.+?)\n.*?```python example\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture(scope="module")
def setup_namespace():
    code = re.search(r"```python setup\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    ns = {"__name__": "__doc_example__"}
    exec(compile(code, f"{DOC}:setup", "exec", dont_inherit=True), ns)
    return ns


def test_every_kind_of_addition_has_an_example():
    titles = " ".join(t.lower() for t, _ in BLOCKS)
    for what in ("objective", "statistic", "data kind", "batch source", "forward", "diagnostic", "arena task"):
        assert what in titles, what


@pytest.mark.parametrize("title,code", BLOCKS, ids=[t for t, _ in BLOCKS])
def test_example_runs(setup_namespace, title, code):
    ns = dict(setup_namespace)
    exec(compile(code, f"{DOC}:{title}", "exec", dont_inherit=True), ns)
