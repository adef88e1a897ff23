"""DRIFT (P14): the round's pairs (policy sample chosen, logged DSAT response rejected), the DSAT log's checks
(one-line errors naming file, row and field), the round's loss (DPO on those pairs, with the round's starting
policy as reference -- by hand), and an end-to-end run that moves a tiny model away from the DSAT answer."""
import json
import math
import random

import pytest
import torch

from conftest import EvenTask
from preftune.errors import ConfigError, DataError
from preftune.online import OnlineConfig, train_online
from preftune.online.drift import DsatRow, drift_pairs, dsat_ids, dsat_rows, dsat_text
from preftune.online.prompts import Prompt
from preftune.train import TrainConfig


# ----------------------------------------------------------------------------- the DSAT log


def test_dsat_text_reads_strings_messages_and_conversations():
    at = dict(file="log.jsonl", row=3, field="rejected")
    assert dsat_text("no.", **at) == "no."
    assert dsat_text({"role": "assistant", "content": "no."}, **at) == "no."
    # the authors' format (cacayaya/DRIFT data/dsat_data.jsonl): a list holding the assistant message
    assert dsat_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "no."}], **at) == "no."


@pytest.mark.parametrize("value,says", [(None, "is missing"), ("  ", "is empty"), (7, "is a int"),
                                        ({"role": "user", "content": "q"}, "role 'user'"),
                                        ([], "not a conversation")])
def test_a_bad_dsat_value_is_one_line_naming_file_row_and_field(value, says):
    with pytest.raises(DataError) as e:
        dsat_text(value, file="log.jsonl", row=3, field="rejected")
    msg = str(e.value)
    assert msg.startswith("log.jsonl, row 3, field 'rejected': ") and says in msg and "\n" not in msg


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_bad_row_of_a_dsat_file_stops_the_run_naming_it_or_is_skipped(tiny_dir, tmp_path):
    log = _write(tmp_path / "dsat.jsonl", [{"prompt": "1+2=", "rejected": "4"}, {"prompt": "2+2=", "rejected": ""},
                                           {"prompt": "3+3=", "answer": "5"}])
    cfg = TrainConfig(model=str(tiny_dir), output=str(tmp_path / "out"), max_steps=1, progress=False)
    with pytest.raises(DataError, match=r"dsat\.jsonl, row 2, field 'rejected': is empty"):
        train_online(cfg, OnlineConfig(algo="drift", prompts=str(log), rounds=1))
    with pytest.raises(DataError, match=r"d2\.jsonl, row 3, field 'answer': is missing"):
        train_online(cfg, OnlineConfig(algo="drift", prompts=str(_write(tmp_path / "d2.jsonl", [
            {"prompt": "1+2=", "answer": "4"}, {"prompt": "2+2=", "answer": "5"}, {"prompt": "3+3="}])),
            dsat_column="answer", rounds=1))
    # the prompt column's own errors come from the prompt loader, named the same way
    with pytest.raises(DataError, match=r"d3\.jsonl, row 1, field 'prompt'"):
        train_online(cfg, OnlineConfig(algo="drift", prompts=str(_write(tmp_path / "d3.jsonl", [
            {"prompt": "", "rejected": "4"}])), rounds=1))
    with pytest.raises(ConfigError, match="log of dissatisfied responses"):
        train_online(cfg, OnlineConfig(algo="drift", task="sort", rounds=1))


def test_dsat_rows_skip_bad_rows_when_asked(tiny_dir):
    from preftune.train.setup import load_tokenizer_for

    tok = load_tokenizer_for(TrainConfig(model=str(tiny_dir)), None)
    ps = [Prompt("1+2=", tok("1+2=")["input_ids"], i, {"rejected": r}, "1+2=") for i, r in enumerate(["4", None, 5])]
    rows, skipped = dsat_rows(ps, tok, column="rejected", source="x", max_length=None, on_bad_row="skip")
    assert [r.prompt.row for r in rows] == [0] and skipped == {"missing_field": 1, "bad_type": 1}
    with pytest.raises(ConfigError, match="no DSAT rows left"):
        dsat_rows(ps[1:], tok, column="rejected", source="x", max_length=None, on_bad_row="skip")


def test_dsat_response_ids_follow_the_prompt_and_end_with_eos(tiny_dir):
    from preftune.train.setup import load_tokenizer_for

    tok = load_tokenizer_for(TrainConfig(model=str(tiny_dir)), None)
    p = Prompt("3+4=", tok("3+4=")["input_ids"], 0, {}, "3+4=")
    ids = dsat_ids(tok, p, "8")
    full = tok("3+4=8" + tok.eos_token)["input_ids"]   # what the offline data path tokenizes
    assert p.ids + ids == full and ids[-1] == tok.eos_token_id
    # a prompt cut to max_prompt_length no longer prefixes the joint tokens: the response is tokenized alone
    cut = Prompt("3+4=", p.ids[1:], 0, {}, "3+4=")
    assert dsat_ids(tok, cut, "8") == tok("8", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


# ----------------------------------------------------------------------------- the round's pairs, by hand


def _row(i, text, ids):
    return DsatRow(Prompt(f"q{i}", [100 + i], i, {}, f"q{i}"), text, ids)


def test_the_policy_sample_is_chosen_and_the_dsat_response_rejected():
    dsat = [_row(0, "bad0", [5, 2]), _row(1, "bad1", [6, 2])]
    positives = [("good0", [7, 2]), ("bad1", [6, 2])]  # row 1's sample repeats its DSAT answer
    rows, same = drift_pairs(dsat, positives, k=1)
    assert same == 1 and len(rows) == 1
    r = rows[0]
    assert (r["chosen"], r["rejected"], r["dsat_row"]) == ("good0", "bad0", 0)
    assert (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) == ([100], [7, 2], [5, 2])


def test_k_positives_each_pair_with_their_rows_dsat_response_and_scores_line_up():
    dsat = [_row(0, "bad0", [5, 2]), _row(1, "bad1", [6, 2])]
    positives = [("a", [1, 2]), ("b", [3, 2]), ("c", [4, 2]), ("d", [8, 2])]
    scores = [0.9, 0.1, 0.5, 0.7, 0.0, 0.2]  # the four positives', then the two DSAT responses'
    rows, same = drift_pairs(dsat, positives, k=2, scores=scores)
    assert same == 0
    assert [(r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"]) for r in rows] == [
        ("a", "bad0", 0.9, 0.0), ("b", "bad0", 0.1, 0.0), ("c", "bad1", 0.5, 0.2), ("d", "bad1", 0.7, 0.2)]
    with pytest.raises(ValueError, match="3 positives for 2 DSAT rows x 2"):
        drift_pairs(dsat, positives[:3], k=2)


def test_drift_is_registered_as_a_custom_runner_that_needs_no_judge():
    cfg = OnlineConfig(algo="drift", prompts=[{"prompt": "a", "rejected": "b"}])
    assert cfg.k == 1 and cfg.algorithm.needs_judge is False
    assert cfg.algorithm.runner == "preftune.online.drift:train_drift" and cfg.algorithm.loss == "dpo"


# ----------------------------------------------------------------------------- end to end


class _LetterE(EvenTask):
    """Answer 'e' whatever the number (the SFT model says e or o at random); the DSAT log holds its 'o's."""

    def reward(self, prompt, response):
        return float(response == "e")


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from preftune.arena.models import SFTConfig, sft_model_dir

    cfg = SFTConfig(demos=400, steps=150, batch_size=32, hidden_size=32, num_layers=1, num_heads=2)
    path, _ = sft_model_dir(_LetterE(), 0, cfg, tmp_path_factory.mktemp("sft_cache"))
    return path


def _share(model_dir, answer, n=64):
    """The share of ``answer`` among 4 samples on each of n held-out prompts."""
    from preftune.arena.models import load_sft, sample

    model, tok = load_sft(model_dir)
    prompts = _LetterE().sample_prompts(n, random.Random("eval"))
    out = sample(model, tok, prompts, 4, seed=7, max_new_tokens=3)
    return sum(s.response == answer for ss in out for s in ss) / (4 * n)


@pytest.fixture(scope="module")
def run(sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift") / "run"
    log = [{"prompt": f"n {i}:", "rejected": "o"} for i in range(80)]
    cfg = TrainConfig(model=str(sft), output=str(out), max_steps=8, batch_size=8, lr=5e-3, progress=False,
                      save_every=0, seed=0, beta=0.1)
    res = train_online(cfg, OnlineConfig(algo="drift", prompts=log, max_new_tokens=3, rounds=2))
    return out, res


@pytest.mark.slow
def test_drift_moves_the_policy_away_from_the_dsat_answer(sft, run):
    out, res = run
    # round 1's pairs are mostly (e, o): its policy says e more often than the SFT model ...
    assert _share(out / "round-1" / "final", "e") > _share(sft, "e") + 0.1  # measured: 0.46 -> 0.60
    # ... and the DSAT answer keeps falling. (Round 2 samples fewer e's and more junk, which DPO against the
    # fixed negative raises too: P14's positives are only as good as the policy's samples.)
    assert _share(out / "final", "o") < _share(sft, "o") - 0.3
    for t in (1, 2):
        rows = [json.loads(x) for x in (out / f"round-{t}" / "pairs.jsonl").read_text().splitlines()]
        info = json.loads((out / f"round-{t}" / "round.json").read_text())
        assert rows and all(r["rejected"] == "o" and r["chosen"] != "o" for r in rows)
        assert info["pairs"] + info["identical_dropped"] == 80 == info["dsat_rows"]
    assert [r["round"] for r in json.loads((out / "rounds.json").read_text())] == [1, 2]
    assert res.history[-1]["round"] == 2


@pytest.mark.slow
def test_each_rounds_reference_is_its_starting_policy(sft, run):
    import yaml

    out, res = run
    assert yaml.safe_load((out / "round-1" / "config.yaml").read_text())["model"] == str(sft)
    assert yaml.safe_load((out / "round-2" / "config.yaml").read_text())["model"].endswith("round-1/final")
    # at a round's first step the policy is the reference pi_t, so DPO's loss is -log sigmoid(0) = log 2 exactly;
    # a fixed reference (the SFT model) would give round 2 a different first loss
    for t in (1, 2):
        first = next(r for r in res.history if r["round"] == t and "loss" in r)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


def _hand_logp(model, prompt_ids, response_ids):
    """Summed log-prob of the response after the prompt, by one plain forward pass."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + i, tok]) for i, tok in enumerate(response_ids))


@pytest.mark.slow
def test_the_round_loss_is_dpo_on_its_pairs_by_hand(sft, run):
    """P14's round-1 objective on round-1's pairs, for the trained policy against pi_1 (= SFT), equals
    -mean log sigmoid(beta [(log pi(y+) - log pi_1(y+)) - (log pi(y-) - log pi_1(y-))]) written out here."""
    from preftune.arena.models import load_sft
    from preftune.data.collate import collate_pairs
    from preftune.data.types import TokenizedPair
    from preftune.models.logprobs import sequence_logps
    from preftune.objectives import get
    from preftune.objectives.base import PairStats

    out, _ = run
    rows = [json.loads(x) for x in (out / "round-1" / "pairs.jsonl").read_text().splitlines()][:6]
    policy, tok = load_sft(out / "round-1" / "final")
    ref, _ = load_sft(sft)
    beta = 0.1
    want = 0.0
    for r in rows:
        h = (_hand_logp(policy, r["prompt_ids"], r["chosen_ids"]) - _hand_logp(ref, r["prompt_ids"], r["chosen_ids"])
             - _hand_logp(policy, r["prompt_ids"], r["rejected_ids"])
             + _hand_logp(ref, r["prompt_ids"], r["rejected_ids"]))
        want += math.log1p(math.exp(-beta * h)) / len(rows)
    batch = collate_pairs([TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], row=i)
                           for i, r in enumerate(rows)], tok.pad_token_id)
    with torch.no_grad():
        lp, lr = sequence_logps(policy, batch).sums.double(), sequence_logps(ref, batch).sums.double()
    n = len(rows)
    got = get("dpo", beta=beta)(PairStats(lp[:n], lp[n:], lr[:n], lr[n:])).loss.mean()
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert want < math.log(2)  # the trained policy prefers the sample to the DSAT answer more than pi_1 did
