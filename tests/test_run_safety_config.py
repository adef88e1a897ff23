"""Issue 12, configuration: values checked by the option's type, loss specs, TRL names, the new options,
flags that would do nothing, --no-progress, dataset objects as data, hyperparameters as keywords.

No training here: every check is on the config, the parser or the registry."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from preftune.cli.main import build_parser, main
from preftune.errors import ConfigError
from preftune.objectives import build, get, objective_class, parse_spec
from preftune.train import TrainConfig
from preftune.train.config import TRL_NAMES, TRL_VALUE_NAMES


def _recipe(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _cli_config(argv):
    from preftune.cli.main import _apply_global_options
    from preftune.cli.train import config_from_args

    args = build_parser().parse_args(argv)
    _apply_global_options(args)
    return config_from_args(args)


# ----------------------------------------------------------------------------- 1. values by type

@pytest.mark.parametrize("text,expected", [
    ("false", False), ("False", False), ("no", False), ("0", False), ("off", False),
    ("true", True), ("TRUE", True), ("yes", True), ("1", True), ("on", True),
])
def test_bool_strings_are_coerced_not_taken_as_truthy(text, expected):
    cfg = TrainConfig(progress=text, gradient_checkpointing=text)
    assert cfg.progress is expected and cfg.gradient_checkpointing is expected


def test_yaml_recipe_values_take_their_fields_types(tmp_path):
    # PyYAML reads 1e-3 as the *string* "1e-3" and "false" (quoted) as a string.
    p = _recipe(tmp_path, 'lr: 1e-3\nprogress: "false"\nbatch_size: "8"\nmax_steps: null\neval_split: "null"\n'
                          'report_to: tensorboard,wandb\nmonitor: ches\nepochs: 2\nmax_grad_norm: none\n'
                          'group_by_length: "no"\nwarmup_ratio: "0.1"\n')
    assert yaml.safe_load(p.read_text())["lr"] == "1e-3"
    cfg = TrainConfig.from_yaml(p)
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.progress is False and cfg.group_by_length is False
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.max_steps is None and cfg.eval_split is None and cfg.max_grad_norm is None
    assert cfg.report_to == ["tensorboard", "wandb"] and cfg.monitor == ["ches"]
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float) and cfg.warmup_ratio == 0.1


def test_python_callers_get_the_same_coercion():
    cfg = TrainConfig(lr="5e-4", batch_size="4", max_steps="1e3", save_every="null", report_to="wandb",
                      monitor=["ches", "length_bias"], epochs=3)
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.save_every) == (5e-4, 4, 1000, None)
    assert cfg.report_to == ["wandb"] and cfg.monitor == ["ches", "length_bias"] and cfg.epochs == 3.0
    assert TrainConfig(batch_size=8.0).batch_size == 8


@pytest.mark.parametrize("key,value,message", [
    ("lr", "abc", "lr: expected a number, got 'abc'"),
    ("lr", "nan", "lr: expected a number, got 'nan'"),
    ("epochs", True, "epochs: expected a number, got True"),
    ("progress", "maybe", "progress: expected true or false, got 'maybe'"),
    ("progress", 2, "progress: expected true or false, got 2"),
    ("batch_size", 1.5, "batch_size: expected an integer, got 1.5"),
    ("batch_size", "eight", "batch_size: expected an integer, got 'eight'"),
    ("batch_size", True, "batch_size: expected an integer, got True"),
    ("max_steps", "ten", "max_steps: expected an integer or null, got 'ten'"),
    ("model", ["a", "b"], "model: expected a string, got ['a', 'b']"),
    ("report_to", 3, "report_to: expected a list of strings or a comma-separated string, got 3"),
    ("loss_params", "beta=1", "loss_params: expected a mapping of hyperparameter: value, got 'beta=1'"),
    ("resume", "", "resume: expected true, false or a path, got ''"),
    ("data", 5, "data: expected a path, a dataset name, a datasets.Dataset or a list of dicts, got 5"),
])
def test_ambiguous_values_are_errors_naming_key_value_and_type(key, value, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{key: value})
    assert str(e.value) == message


def test_recipe_errors_name_the_file_and_the_key(tmp_path):
    p = _recipe(tmp_path, "lr: abc\n")
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_yaml(p)
    assert str(e.value) == f"{p}: lr: expected a number, got 'abc'"
    # the command line overrides the recipe, and its own errors name the flag
    assert TrainConfig.from_yaml(p, {"lr": "2e-5"}).lr == 2e-5
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_yaml(_recipe(tmp_path, "lr: 1e-3\n", "ok.yaml"), {"batch_size": "x"})
    assert str(e.value) == "--batch-size: expected an integer, got 'x'"
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_yaml(_recipe(tmp_path, "batch_size: 0\n", "zero.yaml"))
    assert str(e.value) == f"{tmp_path / 'zero.yaml'}: batch_size must be > 0, got 0"


def test_command_line_errors_are_one_line_naming_the_flag(capsys):
    assert main(["train", "--lr", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["preftune train: error: --lr: expected a number, got 'abc'"]
    assert main(["train", "--progress", "maybe"]) == 2
    assert capsys.readouterr().err.strip() == "preftune train: error: --progress: expected true or false, got 'maybe'"
    cfg = _cli_config(["train", "--lr", "1e-3", "--progress", "false", "--max-steps", "none", "--report-to", "wandb"])
    assert (cfg.lr, cfg.progress, cfg.max_steps, cfg.report_to) == (1e-3, False, None, ["wandb"])


@pytest.mark.parametrize("field,value,msg", [
    ("ref", "frozen", "ref='frozen' is not allowed; use one of auto, model, adapter, precomputed, none"),
    ("layout", "zigzag", "layout='zigzag' is not allowed"),
    ("batch_size", 0, "batch_size must be > 0, got 0"),
    ("warmup_ratio", 1.5, r"warmup_ratio must be in \[0, 1\), got 1.5"),
    ("max_steps", 0, "max_steps must be > 0, got 0"),
    ("dtype", "int8", "dtype='int8'; use fp32, bf16 or fp16"),
    ("report_to", "mlflow", "report_to 'mlflow' is not supported; use tensorboard or wandb"),
    ("lr", -1, "lr must be >= 0, got -1.0"),
])
def test_existing_validation_messages_still_hold(field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**{field: value})


# ----------------------------------------------------------------------------- 2. loss specs

@pytest.mark.parametrize("spec,term", [
    ("dpo:nan", "dpo:nan"), ("dpo:inf", "dpo:inf"), ("dpo:1.0,sft:-0.2", "sft:-0.2"), ("dpo:0", "dpo:0"),
    ("dpo:1,sft:abc", "sft:abc"), ("dpo:", "dpo:"),
])
def test_bad_weights_in_a_loss_spec_are_errors_naming_the_term(spec, term):
    for call in (lambda: parse_spec(spec), lambda: build(spec), lambda: TrainConfig(loss=spec)):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert f"'{term}'" in msg and "\n" not in msg


def test_good_loss_specs_still_parse():
    assert parse_spec("dpo:1.0, sft:0.2") == [("dpo", 1.0), ("sft", 0.2)]
    assert parse_spec("dpo") == [("dpo", 1.0)]
    assert TrainConfig(loss="dpo:1.0,sft:0.5", beta=0.3).loss_params == {"beta": 0.3}
    with pytest.raises(ConfigError, match="unknown objective 'dpoo'"):
        TrainConfig(loss="dpoo")


# ----------------------------------------------------------------------------- 3. TRL names

def test_learning_rate_is_lr_everywhere(tmp_path):
    assert TrainConfig(learning_rate=1e-3).lr == 1e-3
    assert TrainConfig.from_dict({"learning_rate": "2e-4"}).lr == 2e-4
    assert TrainConfig.from_yaml(_recipe(tmp_path, "learning_rate: 3e-5\n")).lr == 3e-5
    assert _cli_config(["train", "--learning-rate", "4e-5"]).lr == 4e-5
    # the same value twice is fine; different values are an error naming both keys
    assert TrainConfig(learning_rate=1e-3, lr="1e-3").lr == 1e-3
    with pytest.raises(ConfigError, match=r"learning_rate and lr both set lr, to different values "
                                          r"\(0.001 and 0.0001\); give one"):
        TrainConfig(learning_rate=1e-3, lr=1e-4)
    p = _recipe(tmp_path, "learning_rate: 1e-3\nlr: 2e-3\n")
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_yaml(p, {"lr": "1e-3"})   # the recipe itself disagrees: no override hides that
    assert str(e.value) == f"{p}: learning_rate and lr both set lr, to different values (0.001 and 0.002); give one"
    with pytest.raises(ConfigError, match="--learning-rate and --lr both set lr"):
        _cli_config(["train", "--lr", "1e-3", "--learning-rate", "1e-4"])
    # the command line overrides a recipe whichever name each uses
    cfg = TrainConfig.from_yaml(_recipe(tmp_path, "learning_rate: 1e-3\n", "r2.yaml"), {"lr": "5e-6"})
    assert cfg.lr == 5e-6
    with pytest.raises(ConfigError, match="^learning_rate: expected a number, got 'fast'$"):
        TrainConfig(learning_rate="fast")


def test_trl_training_arguments_map_to_preftune_options(tmp_path):
    recipe = {
        "model_name_or_path": "m", "dataset_name": "d.jsonl", "dataset_train_split": "train",
        "output_dir": "runs/x", "per_device_train_batch_size": 4, "per_device_eval_batch_size": 16,
        "gradient_accumulation_steps": 2, "num_train_epochs": 3, "learning_rate": 5e-7, "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1, "max_grad_norm": 10.0, "adam_epsilon": 1e-6, "logging_steps": 5, "save_steps": 100,
        "save_total_limit": 3, "seed": 42, "gradient_checkpointing": True, "bf16": True, "report_to": "none",
        "overwrite_output_dir": True, "truncation_mode": "keep_start", "lora_target_modules": ["q_proj", "v_proj"],
        "loss_type": "sigmoid", "beta": 0.05, "max_length": 512, "max_prompt_length": 128,
    }
    cfg = TrainConfig.from_yaml(_recipe(tmp_path, yaml.safe_dump(recipe)))
    assert (cfg.model, cfg.data, cfg.split, cfg.output) == ("m", "d.jsonl", "train", "runs/x")
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.grad_accum, cfg.epochs) == (4, 16, 2, 3.0)
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup_ratio, cfg.max_grad_norm, cfg.adam_eps) == (5e-7, "cosine", 0.1,
                                                                                           10.0, 1e-6)
    assert (cfg.log_every, cfg.save_every, cfg.keep_checkpoints, cfg.seed) == (5, 100, 3, 42)
    assert cfg.gradient_checkpointing is True and cfg.dtype == "bf16" and cfg.report_to == []
    assert cfg.overwrite is True and cfg.truncation == "keep_start" and cfg.lora_target == "q_proj,v_proj"
    assert cfg.loss == "sigmoid" and cfg.loss_params == {"beta": 0.05} and build(cfg.loss, **cfg.loss_params).name == "dpo"
    assert set(TRL_NAMES.values()) | {t for t, _ in TRL_VALUE_NAMES.values()} <= TrainConfig.field_names()


def test_trl_value_names():
    assert TrainConfig(fp16=True).dtype == "fp16" and TrainConfig(bf16=False).dtype == "fp32"
    assert TrainConfig(disable_tqdm=True).progress is False
    assert TrainConfig(precompute_ref_log_probs=True).ref == "precomputed"
    assert TrainConfig(save_strategy="no").save_every == 0 and TrainConfig(save_strategy="steps").save_every == 500
    assert TrainConfig(lr_scheduler_type="constant_with_warmup").lr_schedule == "constant"
    assert TrainConfig(resume_from_checkpoint="runs/x/checkpoints/step-10").resume == "runs/x/checkpoints/step-10"
    with pytest.raises(ConfigError, match="bf16 and fp16 both set dtype"):
        TrainConfig(bf16=True, fp16=True)
    with pytest.raises(ConfigError, match="dtype and bf16 both set dtype"):
        TrainConfig(dtype="fp32", bf16=True)
    with pytest.raises(ConfigError, match="save_strategy: 'epoch' is not supported"):
        TrainConfig(save_strategy="epoch")


def test_trl_loss_names_are_registry_aliases(capsys):
    assert objective_class("sigmoid") is objective_class("dpo")
    assert objective_class("robust") is objective_class("rdpo")
    assert type(get("sigmoid", beta=0.2)).name == "dpo" and get("sigmoid", beta=0.2).beta == 0.2
    assert get("robust", label_smoothing=0.2).name == "rdpo"
    assert build("sigmoid:1.0,sft:0.5").name == "dpo+sft"
    assert _cli_config(["train", "--loss", "robust", "--label-smoothing", "0.2"]).loss_params == {"label_smoothing": 0.2}
    with pytest.raises(ConfigError, match="sigmoid \\(= dpo\\)"):
        objective_class("sigmoidd")
    # `preftune objectives` shows them
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    assert "TRL loss_type names accepted as aliases: " in out and "sigmoid = dpo" in out and "robust = rdpo" in out
    assert main(["objectives", "sigmoid", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "dpo" and "sigmoid" in rows[0]["aliases"]


# ----------------------------------------------------------------------------- 4. new options

def test_new_options_and_their_defaults(tmp_path):
    cfg = TrainConfig()
    assert cfg.disable_dropout is True and cfg.save_every == 500 and cfg.restart is False and cfg.resume is False
    assert TrainConfig(save_every=None).save_every is None and TrainConfig(save_every=0).save_every == 0
    with pytest.raises(ConfigError, match="save_every must be >= 0 or null"):
        TrainConfig(save_every=-5)
    assert TrainConfig(disable_dropout="false").disable_dropout is False
    assert TrainConfig(restart="yes").restart is True
    assert TrainConfig(resume="true").resume is True and TrainConfig(resume="runs/x/checkpoints/step-4").resume == \
        "runs/x/checkpoints/step-4"
    assert TrainConfig(resume=tmp_path).resume == str(tmp_path)
    assert TrainConfig.from_yaml(_recipe(tmp_path, "resume: true\n")).resume is True
    assert TrainConfig.from_yaml(_recipe(tmp_path, "resume: ck/step-2\n", "p.yaml")).resume == "ck/step-2"


def test_resume_flag_alone_or_with_a_path():
    assert _cli_config(["train", "--resume"]).resume is True
    assert _cli_config(["train", "--resume", "--max-steps", "3"]).resume is True
    assert _cli_config(["train", "--resume", "runs/a/checkpoints/step-3"]).resume == "runs/a/checkpoints/step-3"
    assert _cli_config(["train", "--resume", "false"]).resume is False
    cfg = _cli_config(["train", "--restart", "--disable-dropout", "false"])
    assert cfg.restart is True and cfg.disable_dropout is False


def test_help_documents_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--disable-dropout", "as TRL's disable_dropout=True", "--resume PATH from that checkpoint",
                   "--restart", "--no-progress", "--learning-rate", "(default: 500)", "at the end only"):
        assert needle in text, needle


# ----------------------------------------------------------------------------- 5. flags that do nothing

def test_eval_every_without_eval_data_is_an_error(tiny_dir, tmp_path):
    import json

    from preftune.train import train

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n")
    cfg = TrainConfig(model=str(tiny_dir), data=str(data), output=str(tmp_path / "r"), eval_every=10, progress=False)
    with pytest.raises(ConfigError, match=r"^eval_every=10 does nothing without eval_data"):
        train(cfg)  # refused before any work (in-memory eval_examples=... would be evaluated)
    assert not (tmp_path / "r").exists()
    from preftune.cli.main import main

    rc = main(["train", "--model", str(tiny_dir), "--data", str(data), "--output", str(tmp_path / "c"),
               "--eval-steps", "10", "--no-progress"])
    assert rc == 2
    cfg = TrainConfig(eval_data="held_out.jsonl")   # evaluated at the end only
    assert cfg.eval_every is None
    assert TrainConfig(eval_data="held_out.jsonl", eval_every=5).eval_every == 5
    assert TrainConfig(eval_every=0).eval_every == 0 and TrainConfig(eval_every="none").eval_every is None
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        TrainConfig(eval_data="e.jsonl", eval_every=-1)


# ----------------------------------------------------------------------------- 6. --no-progress

def test_no_progress_on_train_and_globally():
    assert _cli_config(["train", "--no-progress"]).progress is False
    assert _cli_config(["train", "--progress", "false"]).progress is False
    assert _cli_config(["train"]).progress is True
    assert _cli_config(["--no-progress", "train"]).progress is False
    assert _cli_config(["train", "--disable-tqdm"]).progress is False

    from preftune.cli.arena import config_from_args
    from preftune.cli.main import _apply_global_options

    args = build_parser().parse_args(["--no-progress", "arena"])
    _apply_global_options(args)
    assert config_from_args(args).progress is False
    args = build_parser().parse_args(["arena", "--no-progress"])
    _apply_global_options(args)
    assert config_from_args(args).progress is False and not hasattr(args, "global_no_progress")


# ----------------------------------------------------------------------------- 7. dataset objects as data

def test_dataset_objects_and_lists_as_data():
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(7)]
    ds = datasets.Dataset.from_list(rows)
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(2))})
    cfg = TrainConfig(data=ds, eval_data=dd, eval_every=2)
    assert cfg.data is ds and cfg.eval_data is dd
    d = cfg.to_dict()
    assert d["data"] == "<datasets.Dataset: 7 rows>"
    assert d["eval_data"] == "<datasets.DatasetDict: train: 7 rows, test: 2 rows>"
    assert yaml.safe_load(yaml.safe_dump(d))["data"] == "<datasets.Dataset: 7 rows>"
    listed = TrainConfig(data=rows, eval_data=tuple(rows))
    assert listed.to_dict()["data"] == "<list: 7 rows>" and listed.to_dict()["eval_data"] == "<list: 7 rows>"
    assert listed.data == rows
    # what the trainer's loader does with cfg.data
    from preftune.data import load_examples

    assert len(load_examples(cfg.data).examples) == 7
    assert len(load_examples(listed.data).examples) == 7


def test_paths_are_kept_as_strings(tmp_path):
    cfg = TrainConfig(data=tmp_path / "d.jsonl", output=tmp_path / "run", model=tmp_path)
    assert cfg.data == str(tmp_path / "d.jsonl") and cfg.output == str(tmp_path / "run") and cfg.model == str(tmp_path)
    yaml.safe_dump(cfg.to_dict())


# ----------------------------------------------------------------------------- 8. hyperparameters as keywords

def test_objective_hyperparameters_as_keyword_arguments():
    cfg = TrainConfig(model="m", data="d.jsonl", loss="dpo", beta=0.1)
    assert cfg.loss_params == {"beta": 0.1}
    assert TrainConfig.create(loss="simpo", beta=2.0, gamma=0.5).loss_params == {"beta": 2.0, "gamma": 0.5}
    assert TrainConfig(loss="ipo", loss_params={"beta": 0.2}).loss_params == {"beta": 0.2}
    with pytest.raises(ConfigError, match=r"^beta is given twice, with different values \(0.2 and 0.3\); give one$"):
        TrainConfig(loss="dpo", loss_params={"beta": 0.2}, beta=0.3)
    with pytest.raises(ConfigError, match=r"^beta is given twice, with different values \(0.3 and 0.2\); give one$"):
        TrainConfig(loss="dpo", beta=0.3, loss_params={"beta": 0.2})
    # a hyperparameter of another objective: the valid ones of this one are listed
    with pytest.raises(ConfigError, match=r"^loss 'dpo' has no hyperparameter gamma; valid: beta, f_alpha, "
                                          r"f_divergence$"):
        TrainConfig(loss="dpo", gamma=1.0)
    # a name nobody knows: the same, and a suggestion
    with pytest.raises(ConfigError, match=r"has no hyperparameter bach_size; valid: beta, f_alpha, f_divergence; "
                                          r"'bach_size' is not a training option either \(did you mean batch_size\?\)"):
        TrainConfig(bach_size=8)


def test_replace_and_hyperparameter_strings():
    cfg = TrainConfig(loss="dpo", beta=0.1, lr=1e-5)
    assert cfg.replace(beta=0.3).loss_params == {"beta": 0.3}
    assert cfg.replace(learning_rate=2e-5).lr == 2e-5 and cfg.replace(learning_rate=2e-5).loss_params == {"beta": 0.1}
    assert cfg.replace(loss_params={}).loss_params == {}
    # YAML "1e-1" for a float hyperparameter is a number, "yes" for a bool one is true
    assert TrainConfig(loss="dpo", beta="1e-1").loss_params["beta"] == pytest.approx(0.1)
    p = TrainConfig(loss="simpo", beta="2", gamma="0.5").loss_params
    assert p == {"beta": 2.0, "gamma": 0.5} and all(isinstance(v, float) for v in p.values())
    assert not math.isnan(p["beta"])
