"""docs/objectives.md has a row, with its "verified against" evidence, for every registered objective."""
from pathlib import Path

from preftune.objectives import available, objective_class

DOC = (Path(__file__).resolve().parents[1] / "docs" / "objectives.md").read_text(encoding="utf-8")
TABLE = [line.split("|") for line in DOC.splitlines() if line.startswith("| `")]


def test_every_objective_has_a_row_with_its_evidence_in_docs_objectives_md():
    missing, unverified = [], []
    for name in available():
        if not objective_class(name).__module__.startswith("preftune."):
            continue  # registered by another test (plugins, doc examples)
        rows = [r for r in TABLE if f"`{name}`" in r[1]]
        if not rows:
            missing.append(name)
        elif not any(len(r) >= 9 and r[7].strip() for r in rows):  # the "verified against" column
            unverified.append(name)
    assert not missing, f"objectives without a row in docs/objectives.md: {missing}"
    assert not unverified, f"rows without a 'verified against' entry: {unverified}"
