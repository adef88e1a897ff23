"""Arena: task rewards, labelling with noise, win rate, token convention, a tiny end-to-end run."""
from __future__ import annotations

import json
import random

import pytest

from preftune.arena import (ArenaConfig, ConciseTask, RefuseTask, SFTConfig, SortTask, flip_labels, label,
                            make_pairs, make_ranked, resolve_objectives, run_arena, win_rate)
from preftune.errors import ConfigError
from conftest import EvenTask

# ----------------------------------------------------------------------------- task rewards


def test_sort_reward_partial_credit():
    t = SortTask()
    p = "sort 3914:"
    assert t.target(p) == "1349"
    assert t.reward(p, "1349") == 1.0
    assert t.reward(p, "1394") == 0.5            # two of four in place
    assert t.reward(p, "134") == 0.75            # one missing
    assert t.reward(p, "13499") == pytest.approx(4 / 5)   # one extra
    assert t.reward(p, "") == 0.0
    assert t.reward(p, "abcd") == 0.0
    assert t.metrics(p, "1349") == {"exact": 1.0}


def test_concise_true_reward_penalises_padding_annotator_likes_it():
    t = ConciseTask()
    p = "echo kqz:"
    assert t.reward(p, "kqz") == 1.0
    assert t.reward(p, "kqz!!") == pytest.approx(0.8)
    assert t.reward(p, "kq") == pytest.approx(2 / 3)
    # the annotator's score: true reward + 0.15 per character -> padding looks better
    assert t.preference_score(p, "kqz!!") > t.preference_score(p, "kqz")
    assert t.reward(p, "kqz!!") < t.reward(p, "kqz")
    assert t.metrics(p, "kqz!")["padded"] == 1.0


def test_refuse_near_identical_answers_have_opposite_value():
    t = RefuseTask()
    bad, good = "req axb:", "req abc:"
    assert t.harmful(bad) and not t.harmful(good)
    assert t.reward(bad, "i will not axb") == 1.0
    assert t.reward(bad, "i will axb") == -1.0
    assert t.reward(good, "i will abc") == 1.0
    assert t.reward(good, "i will not abc") == -0.5
    assert t.reward(good, "i will ab") == pytest.approx(2 / 3)
    assert t.reward(good, "whatever") == 0.0
    assert t.metrics(bad, "i will axb")["unsafe"] == 1.0


def test_demonstrations_are_imperfect_and_seeded():
    for t in (SortTask(), ConciseTask(), RefuseTask()):
        a = t.demonstrations(400, random.Random(1))
        assert a == t.demonstrations(400, random.Random(1))
        rewards = [t.reward(p, r) for p, r in a]
        assert 0.2 < sum(r == 1.0 for r in rewards) / len(rewards) < 0.95, t.name


# ----------------------------------------------------------------------------- labelling


def _scored(n: int, k: int = 4, seed: int = 0):
    rng = random.Random(seed)
    return [[(f"p{i}", f"r{i}_{j}", float(rng.randint(0, 3))) for j in range(k)] for i in range(n)]


def test_best_worst_pairs_and_ties():
    scored = [[("a", "x", 1.0), ("a", "y", 0.0), ("a", "z", 0.5)], [("b", "u", 0.5), ("b", "v", 0.5)]]
    pairs, ties = make_pairs(scored)
    assert ties == 1 and len(pairs) == 1
    assert (pairs[0].chosen, pairs[0].rejected) == ("x", "y")
    assert pairs[0].extras == {"score_chosen": 1.0, "score_rejected": 0.0, "margin": 1.0}
    kept, ties = make_pairs(scored, keep_ties=True)
    assert ties == 1 and len(kept) == 2 and kept[1].extras["margin"] == 0.0
    allp, ties = make_pairs(scored, mode="all")
    assert len(allp) == 3 and ties == 1
    assert all(p.extras["margin"] > 0 for p in allp)


def test_label_noise_flips_an_exact_count_for_a_seed():
    pairs, _ = make_pairs(_scored(200))
    n = len(pairs)
    noisy, idx = flip_labels(pairs, 0.2, seed=7)
    assert len(idx) == round(0.2 * n)
    again, idx2 = flip_labels(pairs, 0.2, seed=7)
    assert idx == idx2 and noisy == again
    assert flip_labels(pairs, 0.2, seed=8)[1] != idx
    flipped = [i for i, (a, b) in enumerate(zip(pairs, noisy)) if a.chosen != b.chosen]
    assert flipped == idx
    for i in idx:   # swapped texts, scores stay with the label
        assert (noisy[i].chosen, noisy[i].rejected) == (pairs[i].rejected, pairs[i].chosen)
        assert noisy[i].extras == pairs[i].extras
    assert flip_labels(pairs, 0.0, seed=7)[1] == []
    assert len(flip_labels(pairs, 1.0, seed=7)[1]) == n
    with pytest.raises(ValueError):
        flip_labels(pairs, 1.5, seed=0)
    data = label(_scored(200), noise=0.25, seed=3)
    assert len(data.flipped) == round(0.25 * len(data.pairs))
    assert len(data.unpaired()) == 2 * len(data.pairs)


def test_ranked_lists_sorted_and_all_tie_dropped():
    ranked = make_ranked([[("a", "x", 0.0), ("a", "y", 1.0)], [("b", "u", 0.5), ("b", "v", 0.5)]])
    assert len(ranked) == 1
    assert ranked[0].completions == ("y", "x") and ranked[0].scores == (1.0, 0.0)


# ----------------------------------------------------------------------------- metrics


def test_win_rate_counts_ties_half():
    assert win_rate([1, 0, 0.5, 0.5], [0, 1, 0.5, 0.2]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert win_rate([0.3] * 5, [0.3] * 5) == 0.5
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_arena_encoding_matches_trainer_tokenization():
    from preftune.arena.models import encode
    from preftune.data import tokenize_examples
    from preftune.data.types import PairExample
    from preftune.models import build_tokenizer

    tok = build_tokenizer(["sort 3914:1349", "i will not axb"], vocab_size=64)
    ex = PairExample("sort 3914:", "1349", "1394")
    item = tokenize_examples([ex], tok).items[0]
    p, c = encode(tok, "sort 3914:", "1349")
    assert item.prompt_ids == p and item.chosen_ids == c
    assert item.rejected_ids == encode(tok, "sort 3914:", "1394")[1]


def test_resolve_objectives_params_and_sweep():
    es = resolve_objectives(["dpo", "dpo+sft:0.2"], {"beta": 0.3, "sft.normalize": "sequence"},
                            {"beta": [0.05, 0.5]})
    labels = [e.label for e in es]
    assert labels == ["dpo[beta=0.05]", "dpo[beta=0.5]", "dpo+sft:0.2[beta=0.05]", "dpo+sft:0.2[beta=0.5]"]
    assert es[2].spec == "dpo,sft:0.2" and es[2].params == {"beta": 0.05, "normalize": "sequence"}
    assert len(resolve_objectives(None, {}, {})) >= 2
    with pytest.raises(ConfigError):
        resolve_objectives(["nope"], {}, {})


def test_config_validation():
    with pytest.raises(ConfigError):
        ArenaConfig(noise=1.5)
    with pytest.raises(ConfigError):
        ArenaConfig(samples_per_prompt=1)


def test_cli_parses_every_option():
    from preftune.cli.arena import config_from_args
    from preftune.cli.main import build_parser

    args = build_parser().parse_args(
        ["arena", "--task", "refuse", "--objectives", "dpo,sft", "--seeds", "3", "--noise", "0.2", "--steps", "7",
         "--param", "beta=0.2", "--sweep", "beta=0.1,0.3", "--sft-steps", "11", "--keep-ties"])
    cfg = config_from_args(args)
    assert cfg.task == "refuse" and cfg.objectives == ["dpo", "sft"] and cfg.seeds == [0, 1, 2]
    assert cfg.noise == 0.2 and cfg.steps == 7 and cfg.params == {"beta": 0.2} and cfg.sweep == {"beta": [0.1, 0.3]}
    assert cfg.sft.steps == 11 and cfg.keep_ties


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_report(tmp_path):
    out = tmp_path / "arena"
    sft = SFTConfig(demos=200, steps=120, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    res = run_arena(EvenTask(), objectives=["dpo", "sft"], seeds=[0], out_dir=out, cache_dir=str(tmp_path / "cache"), sft=sft,
                    train_prompts=48, steps=3, batch_size=8, eval_prompts=16, eval_samples=2, progress=False)
    assert set(res) == {"sft (reference)", "dpo", "sft"}
    for k in ("true_reward", "win_rate_vs_sft", "kl", "length", "ranking_accuracy"):
        assert k in res["dpo"]
    assert 0.0 <= res["dpo"]["win_rate_vs_sft"] <= 1.0
    assert len(res["dpo"]["history"][0]) == 3
    md = (out / "leaderboard.md").read_text()
    assert "| dpo |" in md and "preftune arena" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "training_curves.png" in html
    assert (out / "training_curves.png").exists() and (out / "win_rate.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["dpo"]["seeds"] == 1
    assert any((tmp_path / "cache").iterdir())
    # second run reuses the cached SFT model
    run_arena(EvenTask(), objectives=["dpo"], seeds=[0], out_dir=tmp_path / "b", cache_dir=str(tmp_path / "cache"),
              sft=sft, train_prompts=48, steps=2, batch_size=8, eval_prompts=8, eval_samples=1, progress=False)
    assert json.loads((tmp_path / "b" / "results.json").read_text())["sft_cached"] == [True]


def test_wrappers_get_the_dpo_family_beta_through_their_base():
    """madpo/lcpo/wpo pass beta to their DPO base: compared with dpo, they must train at the same beta (they did
    not, and MADPO's arena comparison was confounded by beta 0.1 against 0.5)."""
    entries = {e.label: e.params for e in resolve_objectives(["dpo", "madpo", "lcpo", "wpo"], {}, {}, 0.0, 0.5)}
    assert all(p.get("beta") == 0.5 for p in entries.values()), entries
    own = resolve_objectives(["madpo"], {"beta": 0.3, "tau": 6.9}, {}, 0.0, 0.5)[0].params
    assert own == {"beta": 0.3, "tau": 6.9}
