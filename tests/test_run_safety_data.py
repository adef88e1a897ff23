"""Run safety of the data layer and of `preftune data` / `preftune diagnose` (issue 12).

Bad input gives a one-line error naming file, row and field and a non-zero exit, or, with
on_bad_row="skip", a count of what was skipped; nothing is dropped silently.
"""
from __future__ import annotations

import json

import pytest
import torch

from preftune.cli.main import main
from preftune.data import EVAL_SPLITS, heldout_split, load_examples, pick_split, tokenize_examples
from preftune.errors import CheckpointError, ConfigError, DataError

PAIR = {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}


def _jsonl(path, rows):
    # json.dumps writes a lone surrogate as the escape \ud800, as a broken file would hold it.
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------- 1. lone surrogates

def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


SURROGATE_CASES = {
    "prompt": (dict(PAIR, prompt="2 + \ud800 ="), "prompt"),
    "chosen": (dict(PAIR, chosen=" \udfff"), "chosen"),
    "rejected": (dict(PAIR, rejected=" 5\ud83d"), "rejected"),  # half an emoji
    "message_content": ({"prompt": _msgs(("system", "be brief"), ("user", "hi \ud800")),
                         "chosen": _msgs(("assistant", "a")), "rejected": _msgs(("assistant", "b"))},
                        "prompt[1].content"),
    "response_message": ({"prompt": _msgs(("user", "hi")), "chosen": _msgs(("assistant", "a")),
                          "rejected": _msgs(("assistant", "b\udc80"))}, "rejected[0].content"),
    "implicit": ({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: n\ud800o"}, "rejected"),
    "unpaired": ({"prompt": "q", "completion": "\ud800", "label": True}, "completion"),
    "ranked": ({"prompt": "q", "completions": ["a", "b\ud800"], "scores": [1, 0]}, "completions[1]"),
    "ranked_messages": ({"prompt": _msgs(("user", "q")), "completions": [_msgs(("assistant", "a")),
                                                                         _msgs(("assistant", "\udbff"))],
                         "scores": [1, 0]}, "completions[1][0].content"),
    "message_other_field": ({"prompt": _msgs(("user", "q")),
                             "chosen": [{"role": "assistant", "content": "a", "name": "bot\ud800"}],
                             "rejected": _msgs(("assistant", "b"))}, "chosen[0].name"),
}


@pytest.mark.parametrize("case", sorted(SURROGATE_CASES))
def test_lone_surrogate_is_a_bad_row_naming_file_row_and_field(tmp_path, case):
    row, field = SURROGATE_CASES[case]
    path = _jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError) as info:
        load_examples(path)
    e = info.value
    assert (e.file, e.row, e.field, e.reason) == (str(path), 1, field, "encoding")
    assert str(e).startswith(f"{path}, row 1, field '{field}': is not valid Unicode text: a lone surrogate U+")
    assert "\n" not in str(e)
    str(e).encode("utf-8")  # the message itself prints: it holds no surrogate


def test_lone_surrogate_rows_are_skipped_and_counted(tmp_path):
    rows = [PAIR, dict(PAIR, chosen=" \ud800"), PAIR, {"prompt": "q", "chosen": "a", "rejected": "b\udc00"}]
    res = load_examples(_jsonl(tmp_path / "d.jsonl", rows), on_bad_row="skip")
    assert [e.row for e in res.examples] == [1, 3] and res.skipped == {"encoding": 2}


def test_lone_surrogate_in_csv_json_column(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text('prompt,completions,scores\nq,"[""a"", ""\\ud800""]","[1, 0]"\n')
    with pytest.raises(DataError, match=r"r.csv, row 2, field 'completions\[1\]': is not valid Unicode"):
        load_examples(p)


def test_valid_surrogate_pairs_still_load(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "smile \\ud83d\\ude00", "chosen": "a", "rejected": "b"}\n')  # an escaped emoji
    assert load_examples(p).examples[0].prompt == "smile \U0001F600"


def test_data_validate_cli_reports_lone_surrogate_in_one_line(tmp_path, capsys):
    p = _jsonl(tmp_path / "d.jsonl", [PAIR, dict(PAIR, prompt="\ud800")])
    assert main(["data", "validate", str(p)]) == 2
    line = _one_line_error(capsys)
    assert "d.jsonl, row 2, field 'prompt'" in line and "lone surrogate" in line


def test_tokenizing_validated_data_never_meets_a_surrogate(tiny_dir, tmp_path):
    from preftune.models.loading import load_tokenizer

    p = _jsonl(tmp_path / "d.jsonl", [PAIR, dict(PAIR, rejected="\ud800 5")])
    res = load_examples(p, on_bad_row="skip")
    tres = tokenize_examples(res.examples, load_tokenizer(str(tiny_dir)))
    assert len(tres.items) == 1 and res.skipped == {"encoding": 1}


# ------------------------------------------------------------------- 2. demanding a data kind

def test_demanding_a_kind_the_data_cannot_become_is_a_one_line_config_error(tmp_path):
    unpaired = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    with pytest.raises(ConfigError) as info:
        load_examples(unpaired, kind="pair")
    msg = str(info.value)
    assert msg == (f"{unpaired}: holds unpaired examples (unpaired format) but pair examples were asked for; "
                   "only pair data converts (to unpaired or list)")
    assert isinstance(info.value, DataError) and info.value.reason == "wrong_kind"
    ranked = _jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "completions": ["a", "b"], "scores": [1, 0]}])
    for kind in ("pair", "unpaired"):
        with pytest.raises(ConfigError, match=r"r.jsonl: holds list examples \(ranked format\) but"):
            load_examples(ranked, kind=kind)
    # Skipped rows are still counted before the kind is checked; the result says what the data held.
    res = load_examples([PAIR, dict(PAIR, chosen=1)], kind="list", on_bad_row="skip")
    assert (res.kind, res.data_kind, res.skipped) == ("list", "pair", {"wrong_type": 1})


# ------------------------------------------------------------- 3. pairs for unpaired objectives

class _CharTokenizer:
    """One token per character; '~' and the EOS marker make no tokens (a response that vanishes)."""

    eos_token = "</s>"
    chat_template = None

    def _ids(self, text):
        return [ord(c) for c in text.replace("</s>", "").replace("~", "")]

    def __call__(self, text):
        return {"input_ids": [self._ids(t) for t in text] if isinstance(text, list) else self._ids(text)}


def test_pairs_split_into_desirable_and_undesirable_examples_keep_rows_weights_and_fields(tmp_path, caplog):
    import logging

    rows = [dict(PAIR, weight=2.0, margin=1.0), {"prompt": "3 + 3 =", "chosen": " 6", "rejected": "~", "weight": 0.5,
                                                 "margin": 0.0}]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="preftune.data"):
        res = load_examples(path, kind="unpaired")
    assert (res.kind, res.data_kind, res.format) == ("unpaired", "pair", "explicit")
    got = [(e.prompt, e.completion, e.label, e.row, e.source, e.extras, e.origin) for e in res.examples]
    assert got == [("2 + 2 =", " 4", True, 1, str(path), {"weight": 2.0}, "chosen"),
                   ("2 + 2 =", " 5", False, 1, str(path), {"weight": 2.0}, "rejected"),
                   ("3 + 3 =", " 6", True, 2, str(path), {"weight": 0.5}, "chosen"),
                   ("3 + 3 =", "~", False, 2, str(path), {"weight": 0.5}, "rejected")]
    assert "margin do not apply to unpaired examples" in caplog.text  # dropped, but said so
    # An error in a half names the row and the field of the file it came from, not 'completion'.
    with pytest.raises(DataError) as info:
        tokenize_examples(res.examples, _CharTokenizer())
    assert (info.value.row, info.value.field) == (2, "rejected")
    tres = tokenize_examples(res.examples, _CharTokenizer(), on_bad_row="skip")
    assert len(tres.items) == 3 and tres.skipped == {"empty": 1}
    assert [i.label for i in tres.items] == [True, False, True]


# ------------------------------------------------------------------------ 4. eval data splits

def _dataset_dict(path, **splits):
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


def test_eval_data_reads_the_held_out_split_of_a_saved_dataset_dict(tmp_path):
    train_rows, test_rows = [PAIR] * 3, [dict(PAIR, prompt="1 + 1 =")]
    dd = _dataset_dict(tmp_path / "dd", train=train_rows, test=test_rows)
    res = load_examples(dd, split=EVAL_SPLITS)
    assert res.split == "test" and [e.prompt for e in res.examples] == ["1 + 1 ="]
    assert pick_split(dd) == "test" and heldout_split(dd, fallback="train") == "test"
    assert load_examples(dd, split=heldout_split(dd)).examples == res.examples
    assert load_examples(dd).split == "train" and len(load_examples(dd).examples) == 3  # training: unchanged
    vd = _dataset_dict(tmp_path / "vd", train=train_rows, validation=test_rows)
    assert load_examples(vd, split=EVAL_SPLITS).split == "validation"
    both = _dataset_dict(tmp_path / "both", train=train_rows, validation=train_rows, test=test_rows)
    assert load_examples(both, split=EVAL_SPLITS).split == "test"


def test_eval_data_without_a_held_out_split_is_refused_listing_the_splits(tmp_path):
    dd = _dataset_dict(tmp_path / "dd", train=[PAIR], extra=[PAIR])
    with pytest.raises(DataError) as info:
        load_examples(dd, split=EVAL_SPLITS)
    assert str(info.value) == (f"{dd}: has none of the splits test, validation, valid, eval, dev (splits: extra, "
                               "train); name the split to read")
    with pytest.raises(DataError, match=r"\(splits: extra, train\)"):
        pick_split(dd)
    with pytest.raises(DataError, match=r"\(splits: extra, train\)"):
        heldout_split(dd, fallback="train")  # never the train split in place of a test split
    assert len(load_examples(dd, split="extra").examples) == 1  # a named split is read as asked


def test_eval_splits_of_directories_json_files_and_plain_files(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    _jsonl(d / "train.jsonl", [PAIR] * 2)
    _jsonl(d / "test.jsonl", [PAIR])
    res = load_examples(d, split=EVAL_SPLITS)
    assert res.split == "test" and len(res.examples) == 1
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    _jsonl(only_train / "train.jsonl", [PAIR])
    with pytest.raises(DataError, match=r"has no data files for any of the splits test, .* \(found: train.jsonl\)"):
        load_examples(only_train, split=EVAL_SPLITS)
    sub = tmp_path / "sub"
    (sub / "train").mkdir(parents=True)
    (sub / "validation").mkdir()
    _jsonl(sub / "train" / "a.jsonl", [PAIR] * 2)
    _jsonl(sub / "validation" / "a.jsonl", [PAIR])
    assert load_examples(sub, split=EVAL_SPLITS).split == "validation"
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"train": [PAIR] * 2, "validation": [PAIR]}))
    assert load_examples(j, split=EVAL_SPLITS).split == "validation"
    j.write_text(json.dumps({"train": [PAIR] * 2}))
    with pytest.raises(DataError, match=r"s.json: has none of the splits .* \(splits: train\)"):
        load_examples(j, split=EVAL_SPLITS)
    with pytest.raises(DataError, match=r"s.json: has no split 'test' \(splits: train\)$"):
        load_examples(j, split="test")  # not the train list in its place
    plain = _jsonl(tmp_path / "eval.jsonl", [PAIR] * 2)
    res = load_examples(plain, split=EVAL_SPLITS)
    assert res.split is None and len(res.examples) == 2  # no splits: the whole file
    assert pick_split(plain) is None and heldout_split(plain, fallback="train") == "train"
    assert pick_split(d) == "test" and pick_split(sub) == "validation" and pick_split(j.parent / "nope") is None


def test_eval_split_of_an_in_memory_and_a_hub_dataset(monkeypatch):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([PAIR] * 2),
                               "test": datasets.Dataset.from_list([PAIR])})
    assert load_examples(dd, split=EVAL_SPLITS).split == "test"
    calls = []

    def fake_load(name, split=None):
        calls.append(split)
        return dd if split is None else dd[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    res = load_examples("me/prefs", split=EVAL_SPLITS)
    assert (res.split, len(res.examples), calls) == ("test", 1, [None])


# ---------------------------------------------------------------- 5. tokenization progress bar

def test_tokenize_progress_bar_only_when_asked_and_large(tiny_dir, capsys, monkeypatch):
    import preftune.data.tokenize as T
    from preftune.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    examples = load_examples([PAIR] * 12).examples
    capsys.readouterr()
    tokenize_examples(examples, tok)  # default: quiet
    tokenize_examples(examples, tok, progress=True)  # too few rows for a bar
    assert "tokenizing" not in capsys.readouterr().err
    monkeypatch.setattr(T, "PROGRESS_MIN", 10)
    res = tokenize_examples(examples, tok, progress=True)
    assert "tokenizing" in capsys.readouterr().err and len(res.items) == 12
    tokenize_examples(examples, tok, progress=False)
    assert "tokenizing" not in capsys.readouterr().err
    assert T.PROGRESS_MIN == 10 and T.tokenize_examples.__kwdefaults__["progress"] is False


# ------------------------------------------------------------------------------ 6. data filter

@pytest.mark.parametrize("drop", ["1.0", "1.5", "-0.1", "nan"])
def test_data_filter_refuses_a_drop_fraction_out_of_range_in_one_line(tmp_path, capsys, drop):
    data = _jsonl(tmp_path / "d.jsonl", [PAIR])
    out = tmp_path / "kept.jsonl"
    rc = main(["data", "filter", str(data), "--model", str(tmp_path / "no-model"), "--output", str(out),
               "--drop", drop])
    assert rc == 2
    assert "--drop must be a fraction at least 0 and below 1" in _one_line_error(capsys)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_data_filter_writes_atomically_and_keeps_old_output_on_failure(tiny_dir, tmp_path, capsys):
    rows = [{"prompt": f"{a}+{a}=", "chosen": f"{2 * a}", "rejected": f"{2 * a + 1}"} for a in range(8)]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out" / "kept.jsonl"
    assert main(["data", "filter", str(data), "--model", str(tiny_dir), "--output", str(out), "--drop", "0.25",
                 "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["kept.jsonl"]  # no temporary file left
    bad = _jsonl(tmp_path / "bad.jsonl", rows + [dict(PAIR, rejected=" 4", chosen=" 4")])
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["data", "filter", str(bad), "--model", str(tiny_dir), "--output", str(out), "--no-progress"]) == 2
    assert "bad.jsonl, row 9, field 'rejected'" in _one_line_error(capsys)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["kept.jsonl"]
    assert main(["data", "filter", str(bad), "--model", str(tiny_dir), "--output", str(out), "--on-bad-row",
                 "skip", "--drop", "0"]) == 0
    assert len(out.read_text().splitlines()) == 8


# --------------------------------------------------------------- 7. diagnose a run's checkpoint

def _train_run(tiny_dir, tmp_path, name, **kw):
    from preftune.train import TrainConfig, train

    rows = [{"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"} for a in range(4)
            for b in range(4)]
    data = _jsonl(tmp_path / f"{name}.jsonl", rows)
    cfg = TrainConfig(model=str(tiny_dir), data=str(data), output=str(tmp_path / name), loss="dpo",
                      loss_params={"beta": 0.5}, batch_size=8, lr=5e-3, max_steps=2, save_every=2, progress=False,
                      group_by_length=False, seed=0, device="cpu", **kw)
    res = train(cfg)
    return tmp_path / name, data, res


def _same_weights(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def test_diagnose_reads_a_trainer_checkpoint_as_base_model_plus_its_weights(tiny_dir, tmp_path, capsys):
    from preftune.cli.diagnose import is_run_checkpoint, load_any_model, load_checkpoint_model
    from preftune.models.loading import load_model

    run, data, res = _train_run(tiny_dir, tmp_path, "full")
    ckpt = run / "checkpoints" / "step-2"
    assert is_run_checkpoint(ckpt) and not is_run_checkpoint(run / "final") and not is_run_checkpoint(tiny_dir)
    model, base = load_checkpoint_model(ckpt)
    assert base == str(tiny_dir) and not model.training
    _same_weights(model, load_model(str(run / "final")))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), load_model(str(tiny_dir)).parameters()))
    assert load_any_model(str(tiny_dir))[1] == str(tiny_dir)

    out = tmp_path / "diag"
    assert main(["diagnose", "--model", str(ckpt), "--data", str(data), "--output", str(out), "--only",
                 "ranking_accuracy,ches", "--max-pairs", "4", "--no-progress", "--checkpoints",
                 f"{ckpt},{run / 'final'}"]) == 0
    meta = json.loads((out / "diagnostics.json").read_text())["meta"]
    assert meta["base_model"] == str(tiny_dir)

    # A corrupted checkpoint is refused before any model is built, in one line.
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    capsys.readouterr()
    assert main(["diagnose", "--model", str(ckpt), "--data", str(data), "--output", str(out)]) == 2
    assert "model.safetensors is corrupted (checksum mismatch)" in _one_line_error(capsys)
    with pytest.raises(CheckpointError):
        load_checkpoint_model(ckpt)


def test_diagnose_reads_a_lora_checkpoint_merged_like_final(tiny_dir, tmp_path):
    from preftune.cli.diagnose import load_checkpoint_model
    from preftune.models.loading import is_peft, load_model

    run, _, _ = _train_run(tiny_dir, tmp_path, "lora", lora_r=4)
    model, base = load_checkpoint_model(run / "checkpoints" / "step-2")
    assert base == str(tiny_dir) and not is_peft(model)
    _same_weights(model, load_model(str(run / "final")), exact=False)


def test_checkpoint_outside_a_run_directory_is_refused_in_one_line(tiny_dir, tmp_path, capsys):
    import shutil

    run, data, _ = _train_run(tiny_dir, tmp_path, "r")
    lone = tmp_path / "copied" / "step-2"
    shutil.copytree(run / "checkpoints" / "step-2", lone)
    capsys.readouterr()
    assert main(["diagnose", "--model", str(lone), "--data", str(data), "--output", str(tmp_path / "o")]) == 2
    assert "has no config.yaml" in _one_line_error(capsys)


# ---------------------------------------------------------------------------- 8. --no-progress

def test_no_progress_is_accepted_and_restores_the_progress_bars(tmp_path):
    import datasets
    import transformers.utils.logging as tf

    from preftune.cli.diagnose import progress_bars
    from preftune.cli.main import build_parser

    p = _jsonl(tmp_path / "d.jsonl", [PAIR])
    before = (tf.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    assert main(["data", "validate", str(p), "--no-progress"]) == 0
    assert (tf.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()) == before
    with progress_bars(False):
        assert not tf.is_progress_bar_enabled() and not datasets.is_progress_bar_enabled()
    assert (tf.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()) == before
    args = build_parser().parse_args(["diagnose", "--model", "m", "--data", "d", "--output", "o", "--no-progress"])
    assert args.no_progress is True
    assert build_parser().parse_args(["data", "filter", "d", "--model", "m", "--output", "o"]).no_progress is False
    assert build_parser().parse_args(["data", "validate", "d", "--no-progress"]).no_progress is True
