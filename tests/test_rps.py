"""RPS (P09): neighbourhoods of a preference direction, the consensus selection by hand, the authors' conditioning
prompt, and a tiny direction-conditioned model end to end."""
import math

import pytest

from preftune.errors import ConfigError
from preftune.online.rps import (angle_between, direction_at, dpa_prompt, grid_neighbours, projected_scores,
                                 robust_preference_selection, sample_neighbours, select, to_simplex, unit)


def _deg(v):
    return math.degrees(math.atan2(v[1], v[0]))


def _angle(u, v):  # written out here, not the module's: arccos of the normalised dot product
    dot = sum(a * b for a, b in zip(u, v))
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / (nu * nv)))))


def test_unit_and_angles():
    assert unit([3, 4]) == pytest.approx((0.6, 0.8))
    assert angle_between([1, 0], [0, 2]) == pytest.approx(90.0)
    assert angle_between([1, 1], [1, 0]) == pytest.approx(45.0)
    assert direction_at(60) == pytest.approx((0.5, math.sqrt(3) / 2))
    assert to_simplex([0.6, 0.8]) == pytest.approx((3 / 7, 4 / 7))
    with pytest.raises(ConfigError, match="not all 0"):
        unit([0, 0])
    with pytest.raises(ConfigError, match="nonnegative"):
        to_simplex([1, -1])


@pytest.mark.parametrize("v,theta", [((1.0, 1.0), 30.0), ((0.9, 0.1), 10.0), ((1.0, 2.0, 0.5), 20.0)])
def test_sampled_directions_are_unit_within_the_angle_and_seeded(v, theta):
    dirs = sample_neighbours(v, 64, theta, seed=3)
    assert len(dirs) == 64
    for d in dirs:
        assert math.sqrt(sum(x * x for x in d)) == pytest.approx(1.0, abs=1e-12)
        assert _angle(d, v) <= theta + 1e-9
    assert sample_neighbours(v, 64, theta, seed=3) == dirs
    assert sample_neighbours(v, 64, theta, seed=4) != dirs
    # the angles fill the cap, not only its rim or centre
    angles = sorted(_angle(d, v) for d in dirs)
    assert angles[0] < theta / 4 and angles[-1] > 3 * theta / 4


def test_sampled_directions_tilt_both_ways_in_2d_and_stay_nonnegative():
    v = direction_at(10)
    dirs = sample_neighbours(v, 200, 30, seed=0)
    offsets = [_deg(d) - 10 for d in dirs]
    assert min(offsets) < -15 and max(offsets) > 15  # uniform in [-30, 30]: both sides
    assert any(d[1] < 0 for d in dirs)               # below 0 deg: a negative verbosity weight
    pos = sample_neighbours(v, 200, 30, seed=0, nonnegative=True)
    assert all(x >= 0 for d in pos for x in d)
    assert min(_deg(d) for d in pos) >= 0 and max(_deg(d) for d in pos) <= 40 + 1e-9
    with pytest.raises(ConfigError, match="negative weight"):
        sample_neighbours((1.0, -1.0), 3, 10, nonnegative=True)


def _at(*angles):
    return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in angles]


def _degs(dirs):
    return [round(_deg(d), 6) for d in dirs]


def test_grid_neighbourhood_is_the_authors_by_hand():
    # the authors' defaults: angles -40..40 step 5, within 30 deg of the target, the 5 closest
    assert _degs(grid_neighbours(direction_at(45), 5, 30)) == [40, 35, 30, 25, 20]
    # target on the grid: itself first; equal distances: the smaller angle first
    assert _degs(grid_neighbours(direction_at(10), 5, 30)) == [10, 5, 15, 0, 20]
    # theta_max cuts: within 5 deg of 80 inside [0, 90]
    assert _degs(grid_neighbours(direction_at(80), 5, 5, angle_range=(0, 90))) == [80, 75, 85]
    d = grid_neighbours((3.0, 4.0), 2, 30, step=1, angle_range=(0, 90))  # 53.13 deg: 53 then 54
    assert _degs(d) == [53, 54] and all(math.hypot(*x) == pytest.approx(1.0) for x in d)
    assert grid_neighbours(direction_at(90), 5, 30) == []  # 40 deg is 50 away
    with pytest.raises(ConfigError, match="2-D"):
        grid_neighbours((1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="k .* must be >= 1"):
        grid_neighbours((1.0, 0.0), 0)
    with pytest.raises(ConfigError, match="theta_max"):
        sample_neighbours((1.0, 0.0), 2, 200)


def test_selection_by_hand():
    r = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    # v = (0.6, 0.8): scores 0.6, 0.8, 0.7
    assert projected_scores(r, (0.6, 0.8)) == pytest.approx([0.6, 0.8, 0.7])
    assert select(r, (0.6, 0.8)) == 1
    assert select(r, (1.0, 0.0)) == 0
    assert projected_scores(r, (-1.0, -1.0)) == [-1.0, -1.0, -1.0]
    assert select(r, (-1.0, -1.0)) == 0           # all tied: the first
    assert select(r, (-1.0, 0.0)) == 1            # -1, 0, -0.5
    assert select([[2.0, 1.0], [1.0, 2.0]], (1.0, 1.0)) == 0  # a tie: the first


def test_dpa_prompt_is_the_authors_instruction():
    assert dpa_prompt("What is 2+2?", (0.7071, 0.7071)) == (
        "You are a helpful assistant. Your response should maximize weighted rating = helpfulness*71 + "
        "verbosity*71.\n\nWhat is 2+2?")
    assert "correctness*87 + brevity*50" in dpa_prompt("x", (0.866, 0.5), names=("correctness", "brevity"))


# ----------------------------------------------------------------------------- end to end


def _tag(prompt, v):
    return f"[c{int(round(100 * v[0]))} v{int(round(100 * v[1]))}] {prompt}"


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
    """A tiny model trained briefly to answer 'e' for directions below 45 deg and 'eee' above."""
    from preftune.arena.models import SFTConfig, load_sft, sft_model_dir
    from preftune.arena.tasks import Task

    class Tagged(Task):
        name = "rps_test_tagged"
        max_new_tokens = 5

        def sample_prompts(self, n, rng):
            return [f"n {rng.randint(0, 9)}:" for _ in range(n)]

        def reward(self, prompt, response):
            return 0.0

        def demonstrations(self, n, rng):
            out = []
            for p in self.sample_prompts(n, rng):
                t = rng.choice(range(0, 95, 5))
                out.append((_tag(p, direction_at(t)), "e" if t < 45 else "eee"))
            return out

    cfg = SFTConfig(demos=300, steps=90, batch_size=16, hidden_size=32, num_layers=1, num_heads=2)
    path, _ = sft_model_dir(Tagged(), 0, cfg, tmp_path_factory.mktemp("rps_sft"))
    return load_sft(path)


def short(prompts, completions, **_):
    return [-float(len(c)) for c in completions]


def long(prompts, completions, **_):
    return [float(len(c)) for c in completions]


@pytest.mark.slow
def test_rps_end_to_end_conditions_each_candidate_and_selects_for_the_user(conditioned):
    model, tok = conditioned
    seen, scored = [], []

    def fmt(prompt, v):
        seen.append(v)
        return _tag(prompt, v)

    def recording_long(prompts, completions, **_):
        scored.extend(prompts)
        return long(prompts, completions)

    prompts = ["n 1:", "n 2:", "n 3:", "n 4:"]
    v = direction_at(45)
    out = robust_preference_selection(model, tok, prompts, v, [short, recording_long], k=5, theta_max=45,
                                      neighbourhood="grid", step=10, angle_range=(0, 90), format_prompt=fmt,
                                      max_new_tokens=5, seed=1)
    # grid 0..90 step 10 within 45 of 45: 40 and 50 (5 away), 30 and 60, 20 and 70 -> the five closest
    want = [40, 50, 30, 60, 20]
    assert [round(_deg(d), 6) for d in seen] == want * len(prompts)
    assert set(scored) == set(prompts)  # the reward functions see the user's prompt, not the tagged one
    for s in out:
        assert _degs([c.direction for c in s.candidates]) == want
        for c in s.candidates:  # r = (-len, len); score v^T r written out
            assert c.rewards == [-len(c.response), len(c.response)]
            assert c.score == pytest.approx(v[0] * -len(c.response) + v[1] * len(c.response))
        assert s.score == max(c.score for c in s.candidates) and s.response == s.candidates[s.index].response
    # the model reads the direction: directions above 45 deg (trained 'eee') answer longer than those below
    lengths = {round(_deg(c.direction)): [] for c in out[0].candidates}
    for s in out:
        for c in s.candidates:
            lengths[round(_deg(c.direction))].append(len(c.response))
    above = [x for t, xs in lengths.items() if t > 45 for x in xs]
    below = [x for t, xs in lengths.items() if t < 45 for x in xs]
    assert sum(above) / len(above) > sum(below) / len(below) + 1
    # a user who wants length (t = 80): every selected answer is the longest candidate
    tall = robust_preference_selection(model, tok, prompts, direction_at(80), [short, long], k=3, theta_max=30,
                                       neighbourhood="sample", nonnegative=True, format_prompt=_tag,
                                       max_new_tokens=5, seed=2)
    for s in tall:
        assert len(s.response) == max(len(c.response) for c in s.candidates)
    # the baseline: all k candidates at the user's direction
    base = robust_preference_selection(model, tok, prompts, v, [short, long], k=3, neighbourhood="same",
                                       format_prompt=_tag, max_new_tokens=5, seed=1)
    assert all(_degs([c.direction]) == [45] for s in base for c in s.candidates)
    with pytest.raises(ConfigError, match="returned None"):
        robust_preference_selection(model, tok, ["n 1:"], v, [short, lambda prompts, completions: [None] * 5],
                                    format_prompt=_tag, max_new_tokens=2)


def test_api_errors_before_any_generation():
    # each is refused before the model is touched (none is given)
    with pytest.raises(ConfigError, match="one function per reward dimension"):
        robust_preference_selection(None, None, ["n 1:"], (1.0, 0.0), [short])
    with pytest.raises(ConfigError, match="no grid direction"):
        robust_preference_selection(None, None, ["n 1:"], direction_at(90), [short, long], theta_max=10)
    with pytest.raises(ConfigError, match="grid, sample or same"):
        robust_preference_selection(None, None, ["n 1:"], (1.0, 0.0), [short, long], neighbourhood="cone")
    with pytest.raises(ConfigError, match="no prompts"):
        robust_preference_selection(None, None, [], (1.0, 0.0), [short, long])
