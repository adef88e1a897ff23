"""UPO (P54): BALD and the majority vote against hand computations, MC dropout that really samples, the pair
construction, the agreement filter and the BALD sampler on hand examples, the options, and one round of
``preftune online --algo upo`` on a tiny model."""
import json
import math

import pytest

from helpers.e_vs_o import p_e
import torch

from preftune.errors import ConfigError
from preftune.online.upo import agreement_filter, bald_sample, candidate_pairs, upo_select
from preftune.reward.uncertainty import (bald, bt_probs, dropout_rates, majority_vote, mc_dropout, mc_rewards,
                                         set_dropout)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _h(p):  # entropy of a two-class distribution (p, 1 - p), written out
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


# ----------------------------------------------------------------------------- BALD and the vote


def test_bald_by_hand():
    # one pair, three passes: P(class 0) = 0.9, 0.6, 0.3 -> mean 0.6
    probs = torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]])
    expected = _h(0.6) - (_h(0.9) + _h(0.6) + _h(0.3)) / 3
    assert bald(probs).tolist() == pytest.approx([expected])


def test_bald_is_zero_when_all_passes_agree_and_log2_for_a_split_of_confident_passes():
    agree = torch.tensor([[[0.7, 0.3], [0.5, 0.5]]] * 5)   # two items, every pass the same distribution
    assert bald(agree).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    split = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]] * 3)  # confident passes, half for each class
    assert bald(split).tolist() == pytest.approx([math.log(2)])
    # the maximum: any other set of passes scores lower
    other = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]] * 3)
    assert bald(other).item() < math.log(2) and bald(other).item() == pytest.approx(math.log(2) - _h(0.9))


def test_bald_with_three_classes_by_hand():
    probs = torch.tensor([[[0.5, 0.5, 0.0]], [[0.0, 0.5, 0.5]]])
    mean = [0.25, 0.5, 0.25]
    expected = -sum(q * math.log(q) for q in mean) - math.log(2)  # each pass has entropy log 2
    assert bald(probs).item() == pytest.approx(expected)


def test_majority_vote_counts_passes_and_breaks_ties_towards_class_0():
    probs = torch.tensor([[[0.4, 0.6], [0.9, 0.1], [0.6, 0.4]],
                          [[0.45, 0.55], [0.2, 0.8], [0.3, 0.7]],
                          [[0.99, 0.01], [0.3, 0.7], [0.2, 0.8]],
                          [[0.51, 0.49], [0.1, 0.9], [0.4, 0.6]]])   # [T=4, N=3, 2]
    # item 0: votes 1, 1, 0, 0 -> tie -> 0; item 1: 0, 1, 1, 1 -> 1 (the mean of P(0) is 0.375: the vote is
    # not the mean's argmax); item 2: 0, 1, 1, 1 -> 1
    assert majority_vote(probs).tolist() == [0, 1, 1]


def test_bt_probs_are_the_sigmoid_of_the_reward_gap():
    p = bt_probs(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]))
    assert p[:, 0].tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(3))])
    assert p.sum(-1).tolist() == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------------- MC dropout


def _tiny_classifier(dropout: float):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=64, num_labels=1, pad_token_id=0,
                      attention_dropout=dropout, attn_implementation="eager")
    return LlamaForSequenceClassification(cfg).eval()


def test_mc_dropout_varies_with_dropout_and_not_without():
    x = torch.randint(1, 64, (6, 12))
    for p, varies in ((0.3, True), (0.0, False)):
        m = _tiny_classifier(p)
        out = mc_dropout(lambda: m(input_ids=x).logits[:, 0], m, 5, seed=0)
        assert out.shape == (5, 6)
        spread = (out - out[0]).abs().max().item()
        assert (spread > 1e-4) if varies else (spread == 0.0), (p, spread)
        assert not m.training                                     # the caller's mode is restored
        assert torch.equal(out, mc_dropout(lambda: m(input_ids=x).logits[:, 0], m, 5, seed=0))  # seeded


def test_mc_dropout_leaves_the_global_rng_alone():
    m = _tiny_classifier(0.3)
    torch.manual_seed(7)
    a = torch.rand(3)
    torch.manual_seed(7)
    mc_dropout(lambda: m(input_ids=torch.ones(1, 4, dtype=torch.long)).logits, m, 3, seed=1)
    assert torch.equal(torch.rand(3), a)


def test_set_dropout_gives_a_model_dropout_and_mc_rewards_sample_it(tiny_dir):
    from preftune.models.loading import load_tokenizer
    from preftune.reward.model import RewardModel, load_reward_model

    tok = load_tokenizer(str(tiny_dir))
    rm = RewardModel(load_reward_model(str(tiny_dir), tokenizer=tok), tok)
    assert not any(r > 0 for r in dropout_rates(rm.model))
    same = mc_rewards(rm, ["1+2=", "3+4="], ["3", "7"], 4)
    assert torch.equal(same, same[:1].expand(4, -1))            # no dropout: every pass identical
    assert same[0].tolist() == pytest.approx(rm.score(["1+2=", "3+4="], ["3", "7"]).tolist(), abs=1e-5)
    assert set_dropout(rm.model, 0.2) == 2 and set(dropout_rates(rm.model)) == {0.2}
    assert rm.model.config.attention_dropout == 0.2
    varied = mc_rewards(rm, ["1+2=", "3+4="], ["3", "7"], 4)
    assert (varied - varied[0]).abs().max() > 1e-5
    with pytest.raises(ConfigError, match="dropout must be in"):
        set_dropout(rm.model, 1.0)


# ----------------------------------------------------------------------------- pairs, filter, sampler


def test_candidate_pairs_by_hand():
    # ranks: 1 (0.9), then 2 and 4 tied (0.5), then 0 (0.1); 3 is unscored; the tie makes no pair
    assert sorted(candidate_pairs([0.1, 0.9, 0.5, None, 0.5])) == sorted([(1, 2), (1, 4), (1, 0), (2, 0), (4, 0)])
    # six responses: only the two best (5, 4) and the two worst (1, 0) take part, as the authors' code
    assert sorted(candidate_pairs([1, 2, 3, 4, 5, 6])) == sorted([(5, 4), (5, 1), (5, 0), (4, 1), (4, 0), (1, 0)])
    assert candidate_pairs([0.3, 0.3]) == []


def test_agreement_filter_keeps_the_pairs_voted_like_the_reward_model():
    votes = torch.tensor([0, 1, 0, 1])
    assert agreement_filter(votes).tolist() == [True, False, True, False]     # chosen-first: label 0
    assert agreement_filter(votes, torch.tensor([0, 1, 1, 0])).tolist() == [True, True, False, False]


def test_bald_sample_draws_in_proportion_to_the_papers_weights():
    b = torch.tensor([0.0, 0.2, 0.6])
    g = torch.Generator().manual_seed(0)
    n = 3000
    easy = torch.bincount(torch.cat([bald_sample(b, 1, "easy", generator=g) for _ in range(n)]), minlength=3) / n
    hard = torch.bincount(torch.cat([bald_sample(b, 1, "hard", generator=g) for _ in range(n)]), minlength=3) / n
    w_easy = [1.0, 0.8, 0.4]                               # 1 - B
    assert easy.tolist() == pytest.approx([w / sum(w_easy) for w in w_easy], abs=0.03)
    assert hard[0] == 0 and hard.tolist() == pytest.approx([0.0, 0.25, 0.75], abs=0.03)  # B / sum B; B = 0: never


def test_bald_sample_without_replacement_exclusion_and_zero_weights():
    b = torch.tensor([0.0, 0.3, 0.0, 0.1])
    g = torch.Generator().manual_seed(1)
    assert sorted(bald_sample(b, 4, "easy", generator=g).tolist()) == [0, 1, 2, 3]
    excl = torch.tensor([False, True, False, False])
    for _ in range(20):
        got = bald_sample(b, 2, "hard", generator=g, exclude=excl).tolist()
        assert 3 in got and 1 not in got and len(set(got)) == 2   # the one positive weight left, then a zero one
    assert sorted(bald_sample(torch.zeros(3), 3, "hard", generator=g).tolist()) == [0, 1, 2]   # all zero: uniform
    with pytest.raises(ValueError, match="cannot draw"):
        bald_sample(b, 4, "easy", exclude=excl)


def test_upo_select_on_a_hand_example():
    votes = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0, 0, 0])        # pairs 1 and 4: the estimator votes against
    b = torch.tensor([0.05, 0.6, 0.0, 0.3, 0.1, 0.02, 0.5, 0.0, 0.01, 0.4])
    sel = upo_select(votes, b, 0.5, 0.25, generator=torch.Generator().manual_seed(0))
    assert sel["agree"].tolist() == [0, 2, 3, 5, 6, 7, 8, 9]
    assert len(sel["easy"]) == 4 and len(sel["hard"]) == 2      # round(0.5 * 8), round(0.25 * 8)
    easy, hard = set(sel["easy"].tolist()), set(sel["hard"].tolist())
    assert not easy & hard and (easy | hard) <= set(sel["agree"].tolist())
    assert not hard & {2, 7}                                    # zero BALD: never hard while others remain
    # hard only: the two highest-BALD agreeing pairs are the likeliest; all of them with rate 1
    everything = upo_select(votes, b, 0.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert sorted(everything["hard"].tolist()) == [0, 2, 3, 5, 6, 7, 8, 9] and len(everything["easy"]) == 0
    with pytest.raises(ConfigError, match="sum <= 1"):
        upo_select(votes, b, 0.7, 0.4)


def test_options_are_checked_with_one_line_errors():
    from preftune.online import OnlineConfig
    from preftune.online.upo import check_options, load_estimator

    ok = OnlineConfig(algo="upo", task="sort")
    check_options(ok, reward=object())
    bad = [({"upo_easy_rate": 0.8, "upo_hard_rate": 0.3}, "upo_easy_rate \\+ upo_hard_rate"),
           ({"mc_dropout_passes": 0}, "mc_dropout_passes"), ({"mc_dropout_rate": 1.0}, "mc_dropout_rate"),
           ({"num_generations": 1}, "num_generations")]
    for kw, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            check_options(OnlineConfig(algo="upo", task="sort", **kw), reward=object())
    with pytest.raises(ConfigError, match="labels pairs with a reward"):
        check_options(ok, reward=None)
    with pytest.raises(ConfigError, match="--upo-estimator DIR"):
        load_estimator("", device="cpu", dtype="fp32", dropout=0.0, batch_size=8, max_length=64)


def test_an_estimator_without_dropout_is_refused(tiny_dir, tmp_path):
    from preftune.models.loading import load_tokenizer
    from preftune.online.upo import load_estimator
    from preftune.reward.model import load_reward_model

    tok = load_tokenizer(str(tiny_dir))
    load_reward_model(str(tiny_dir), tokenizer=tok).save_pretrained(tmp_path / "rm", safe_serialization=True)
    tok.save_pretrained(tmp_path / "rm")
    with pytest.raises(ConfigError, match="has no dropout"):
        load_estimator(str(tmp_path / "rm"), device="cpu", dtype="fp32", dropout=0.0, batch_size=8, max_length=64)
    est = load_estimator(str(tmp_path / "rm"), device="cpu", dtype="fp32", dropout=0.1, batch_size=8, max_length=64)
    assert set(dropout_rates(est.model)) == {0.1}


def test_the_cli_offers_the_options():
    import argparse

    from preftune.cli.online import add_parser

    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    text = ap._subparsers._group_actions[0].choices["online"].format_help()
    for flag in ("--upo-estimator", "--mc-dropout-passes", "--mc-dropout-rate", "--upo-easy-rate", "--upo-hard-rate"):
        assert flag in text
    assert "upo (UPO (P54" in text


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from conftest import EvenTask
    from preftune.arena.models import SFTConfig, sft_model_dir

    cfg = SFTConfig(demos=200, steps=60, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    path, _ = sft_model_dir(EvenTask(), 0, cfg, tmp_path_factory.mktemp("sft_cache"))
    return path


def _reward_e(prompts, completions, **kw):
    return [1.0 if c == "e" else (0.5 if c == "o" else 0.0) for c in completions]


@pytest.mark.slow
def test_upo_round_filters_samples_and_moves_the_policy_towards_the_reward(sft, tmp_path):
    from preftune.data.types import PairExample
    from preftune.online import OnlineConfig, train_online
    from preftune.reward import train_reward_model
    from preftune.reward.model import load_reward_model
    from preftune.train import TrainConfig
    from preftune.train.setup import load_tokenizer_for

    # the estimator: the SFT model with a score head and attention dropout 0.1, trained a few steps on 'e' > 'o'
    tok = load_tokenizer_for(TrainConfig(model=str(sft)), None)
    est = load_reward_model(str(sft), tokenizer=tok)
    set_dropout(est, 0.1)
    seed_pairs = [PairExample(f"n {i}:", "e", "o", row=i) for i in range(16)]
    rcfg = TrainConfig(model=str(sft), output=str(tmp_path / "est"), max_steps=10, batch_size=8, lr=5e-3,
                       progress=False, save_every=0, seed=0, disable_dropout=False, max_length=16)
    train_reward_model(rcfg, model=est, tokenizer=tok, train_examples=seed_pairs)

    out = tmp_path / "upo"
    cfg = TrainConfig(model=str(sft), output=str(out), max_steps=6, batch_size=8, lr=5e-3, progress=False,
                      save_every=0, seed=0)
    online = OnlineConfig(algo="upo", prompts=[{"prompt": f"n {i}:"} for i in range(24)], num_generations=4,
                          max_new_tokens=3, rounds=1, upo_estimator=str(tmp_path / "est" / "final"),
                          mc_dropout_passes=4, upo_easy_rate=0.5, upo_hard_rate=0.25)
    before = p_e(sft)
    res = train_online(cfg, online, tokenizer=tok, reward_functions=[_reward_e])
    info = json.loads((out / "round-1" / "round.json").read_text())
    rows = [json.loads(x) for x in (out / "round-1" / "pairs.jsonl").read_text().splitlines()]
    assert info["agree"] + info["dropped_disagree"] == info["candidates"] > 0
    assert info["easy"] == round(0.5 * info["agree"]) and info["hard"] == round(0.25 * info["agree"])
    assert len(rows) == info["pairs"] == info["easy"] + info["hard"]
    assert [r["upo"] for r in rows].count("hard") == info["hard"]
    for r in rows:
        assert r["score_chosen"] > r["score_rejected"]
        assert 0.0 <= r["bald"] <= math.log(2) + 1e-6
    assert res.history and (out / "final").is_dir()
    assert p_e(out / "final") > before + 0.05, (before, p_e(out / "final"))
