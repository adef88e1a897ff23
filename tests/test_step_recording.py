"""Step-by-step regression guard for the trainer (issue 11).

Issue 11 refactors the training loop; the refactor must not change the loss of any step. This
file trains the tiny conftest model for 4 steps in a set of cases (objectives on the default
layout, the other batch layouts, LoRA with the adapter as reference, a precomputed reference and
gradient accumulation) and compares every step's ``loss`` -- and a few per-step metrics
(``rewards/margins``, ``logps/chosen``, ``grad_norm``) -- with a recording made from the code
*before* the refactor, ``tests/data/step_recording.json``. Losses and reward/log-prob metrics
must match to a relative 1e-4, ``grad_norm`` to a relative 1e-3 (an absolute 1e-6 floor covers
values that are zero at step 1, where the policy equals its reference).

Regenerate the recording only from code whose numbers are known to be right -- i.e. run it
against the code *before* a deliberate numerical change, never after a change you are testing
(that would just record the new numbers). From the repository root, with ``/tmp/base`` a
checkout (e.g. a ``git worktree``) of that trusted commit::

    PYTHONPATH=/tmp/base/src PREFTUNE_RECORD=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_step_recording.py

(without ``PYTHONPATH`` it records the working tree's ``src``). Recording writes the JSON instead
of comparing; a run with ``-k`` updates only the selected cases. Compare (the normal run)::

    .venv/bin/python -m pytest -q tests/test_step_recording.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from preftune.train import TrainConfig, train

RECORDING = Path(__file__).parent / "data" / "step_recording.json"
RECORD = os.environ.get("PREFTUNE_RECORD") == "1"

BETA = {"beta": 0.5}
# case id -> (TrainConfig overrides, data kind)
CASES: dict[str, tuple[dict, str]] = {
    **{name: (dict(loss=name, loss_params=dict(BETA)), "pair")
       for name in ("dpo", "ipo", "hinge", "ln_dpo", "ld_dpo", "simpo", "cpo", "rdpo", "exo_pair", "nca_pair",
                    "apo_zero", "wpo")},  # wpo forwards beta to its base, dpo
    "dpo+sft": (dict(loss="dpo:1,sft:0.2", loss_params=dict(BETA)), "pair"),  # beta goes to the dpo term
    "kto": (dict(loss="kto", loss_params=dict(BETA)), "unpaired"),
    "dpo-padded": (dict(loss="dpo", loss_params=dict(BETA), layout="padded"), "pair"),
    "dpo-prefix_shared": (dict(loss="dpo", loss_params=dict(BETA), layout="prefix_shared"), "pair"),
    "dpo-packed": (dict(loss="dpo", loss_params=dict(BETA), layout="packed"), "pair"),
    "dpo-lora": (dict(loss="dpo", loss_params=dict(BETA), lora_r=4), "pair"),  # ref: the adapter disabled
    "dpo-precomputed": (dict(loss="dpo", loss_params=dict(BETA), ref="precomputed"), "pair"),
    "dpo-grad_accum": (dict(loss="dpo", loss_params=dict(BETA), grad_accum=2, batch_size=4), "pair"),
}
METRICS = ("rewards/margins", "logps/chosen", "grad_norm")  # recorded where every step has them
REL = {"grad_norm": 1e-3}
ABS = 1e-6


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _unpaired(pair_rows: list[dict]) -> list[dict]:
    """Half desirable (chosen answers), half undesirable (rejected answers), as test_train's KTO case."""
    half = len(pair_rows) // 2
    return [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in pair_rows[:half]] + \
           [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in pair_rows[half:]]


def _run(case: str, tiny_dir: Path, pair_rows: list[dict], tmp_path: Path) -> dict[str, list[float]]:
    overrides, kind = CASES[case]
    rows = pair_rows if kind == "pair" else _unpaired(pair_rows)
    data = _write_jsonl(tmp_path / f"{kind}.jsonl", rows)
    cfg = dict(model=str(tiny_dir), data=str(data), output=str(tmp_path / "run"), max_steps=4, progress=False,
               group_by_length=False, seed=0, lr=5e-3, batch_size=8, log_every=1, save_final=False)
    cfg.update(overrides)
    res = train(TrainConfig(**cfg))
    hist = res.history
    assert [r["step"] for r in hist] == [1, 2, 3, 4]
    out = {"loss": [float(r["loss"]) for r in hist]}
    for m in METRICS:
        if all(m in r for r in hist):
            out[m] = [float(r[m]) for r in hist]
    return out


def _record(case: str, got: dict[str, list[float]]) -> None:
    import preftune
    import torch

    data = json.loads(RECORDING.read_text()) if RECORDING.exists() else {}
    data.setdefault("_meta", {})
    data["_meta"].update({"recorded_from": str(Path(preftune.__file__).resolve().parent), "torch": torch.__version__,
                          "note": "per-step history of 4-step runs; see tests/test_step_recording.py"})
    cases = data.setdefault("cases", {})
    cases[case] = got
    data["cases"] = dict(sorted(cases.items()))
    RECORDING.parent.mkdir(parents=True, exist_ok=True)
    RECORDING.write_text(json.dumps(data, indent=1) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_step_losses_match_recording(case, tiny_dir, pair_rows, tmp_path):
    got = _run(case, tiny_dir, pair_rows, tmp_path)
    if RECORD:
        _record(case, got)
        return
    assert RECORDING.exists(), f"no recording at {RECORDING}; see this file's docstring to make one"
    want = json.loads(RECORDING.read_text())["cases"].get(case)
    assert want is not None, f"case '{case}' is not in {RECORDING.name}; record it (see the docstring)"
    for key, expected in want.items():
        assert key in got, f"{case}: step history no longer has '{key}' on every step"
        assert got[key] == pytest.approx(expected, rel=REL.get(key, 1e-4), abs=ABS), \
            f"{case}: per-step '{key}' changed"
