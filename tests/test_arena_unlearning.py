"""The arena's unlearning comparison (``preftune.arena.unlearning``): the forget/retain split, and a tiny run
in which both GA and NPO raise the forget set's NLL from the same SFT model, evaluated at every checkpoint."""
import random

import pytest

from preftune.arena.models import SFTConfig
from preftune.arena.tasks import SortTask
from preftune.arena.unlearning import UnlearningConfig, run_unlearning, split_prompts, summary_rows


def test_split_prompts_separates_by_the_forget_digit_and_excludes():
    task, rng = SortTask(), random.Random(0)
    forget, retain = split_prompts(task, 20, 30, "7", rng)
    assert len(forget) == 20 and len(retain) == 30 and not set(forget) & set(retain)
    assert all("7" in SortTask._digits(p) for p in forget) and all("7" not in SortTask._digits(p) for p in retain)
    f2, r2 = split_prompts(task, 20, 30, "7", rng, exclude=set(forget) | set(retain))
    assert not (set(f2) | set(r2)) & (set(forget) | set(retain))


@pytest.mark.slow
def test_unlearning_run_forgets_and_reports_every_checkpoint(tmp_path):
    sft = SFTConfig(demos=300, steps=60, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    cfg = UnlearningConfig(seeds=(0,), forget_prompts=32, eval_prompts=16, steps=12, eval_at=(6, 12), batch_size=16,
                           lr=1e-2, cache_dir=str(tmp_path / "cache"), sft=sft)
    res = run_unlearning(cfg, str(tmp_path / "out"))
    base = res["sft"][0]["forget_nll"]
    ga, npo = res["runs"]["grad_ascent"][0], res["runs"]["npo"][0]
    assert set(ga) == set(npo) == {6, 12}
    assert ga[12]["forget_nll"] > ga[6]["forget_nll"] > base     # gradient ascent keeps pushing
    assert npo[12]["forget_nll"] > base                            # NPO forgets too
    for m in (ga[12], npo[12], res["sft"][0]):
        assert set(m) == {"forget_reward", "retain_reward", "retain_malformed", "forget_nll", "retain_nll"}
        assert 0.0 <= m["forget_reward"] <= 1.0 and 0.0 <= m["retain_malformed"] <= 1.0
    rows = summary_rows(res)
    assert rows[0][0] == "sft" and [r[:2] for r in rows[1:]] == [("grad_ascent", 6), ("grad_ascent", 12),
                                                                 ("npo", 6), ("npo", 12)]
