"""Settings: dataclasses are the command line; bad values stop before any work, naming the flag."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from qa_core.errors import QAError
from qa_core.settings import (
    PRESETS,
    SPEED_SETTINGS,
    parse_preprocess_settings,
    parse_train_settings,
)
from tiny_models import REPO, offline_env


@pytest.mark.parametrize("argv, message", [
    (["--eval_strategy", "stepz"], "argument --eval_strategy"),
    (["--optim", "adamw_tf"], "argument --optim"),
    (["--mixed_precision", "fp8"], "argument --mixed_precision"),
])
def test_bad_choices_exit_2_with_the_allowed_values(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_train_settings(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "invalid choice" in err and "choose from" in err


@pytest.mark.parametrize("parse", ["train", "preprocess", "qa-answer"])
@pytest.mark.parametrize("extra", [["--max_lenght", "64"], ["stray"]])
def test_unknown_flags_and_stray_words_exit_2_with_the_usage_line(parse, extra, capsys):
    """They were a ValueError traceback from HfArgumentParser (rc 1) in all three scripts."""
    from qa_core.inference import parse_args

    argv = {"train": [], "preprocess": ["--data", "d", "--model", "m"],
            "qa-answer": ["--model", "m", "--demo"]}[parse] + extra
    parser = {"train": parse_train_settings, "preprocess": parse_preprocess_settings,
              "qa-answer": parse_args}[parse]
    with pytest.raises(SystemExit) as stop:
        parser(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"error: unrecognized arguments: {' '.join(extra)}" in err


@pytest.mark.parametrize("flag, value", [
    ("per_device_train_batch_size", "0"), ("max_train_examples", "0"), ("learning_rate", "nan"),
    ("learning_rate", "inf"), ("num_proc", "-1"), ("negative_window_fraction", "1.5"),
    ("doc_stride", "400"), ("max_train_minutes", "0"), ("attention_dropout", "-0.1"),
    ("hidden_dropout", "1.5"), ("seed", "-1"), ("seed", "4294967296"),
])
def test_values_that_cannot_work_are_refused_naming_the_flag(flag, value):
    with pytest.raises(QAError, match=f"--{flag}"):
        parse_train_settings([f"--{flag}", value])


def test_folder_flags_that_are_files_are_refused(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for flag in ("output_dir", "cache_dir"):
        with pytest.raises(QAError, match=f"--{flag} {a_file}: is a file"):
            parse_train_settings([f"--{flag}", str(a_file)])


@pytest.mark.parametrize("name", ["checkpoints", "best_model"])
def test_a_file_where_the_run_writes_a_folder_is_refused_before_any_work(tmp_path, name):
    """It used to fail at the first checkpoint, after training (NotADirectoryError)."""
    (tmp_path / name).write_text("x")
    with pytest.raises(QAError, match=f"--output_dir {tmp_path}: {tmp_path / name} is a file, "
                                      f"but the run writes its {name}/ folder there"):
        parse_train_settings(["--output_dir", str(tmp_path)])


@pytest.mark.parametrize("flag", ["output_dir", "cache_dir"])
def test_an_empty_folder_flag_is_refused_not_the_current_folder(flag):
    """``--output_dir ''`` wrote the whole run into the current folder."""
    with pytest.raises(QAError, match=f"argument --{flag}: empty; give a folder"):
        parse_train_settings([f"--{flag}", ""])


def test_the_model_folder_as_output_dir_is_refused(tmp_path):
    """The run saved over the weights it started from (rc 0)."""
    (tmp_path / "m").mkdir()
    same = tmp_path / "x" / ".." / "m"
    with pytest.raises(QAError, match=re.escape(f"--output_dir {same}: is the --model folder")):
        parse_train_settings(["--model", str(tmp_path / "m"), "--output_dir", str(same)])


def test_tensorboard_reporting_without_tensorboard_is_refused(monkeypatch):
    """It ran with rc 0 and logged nothing (accelerate only warns)."""
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(QAError, match="--report_to tensorboard: tensorboard is not installed"):
        parse_train_settings(["--report_to", "tensorboard"])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_resume_flag_is_refused_not_a_fresh_start(value):
    """An unset ``$CKPT`` in ``--resume_from_checkpoint "$CKPT"`` used to start a new run."""
    with pytest.raises(QAError, match="--resume_from_checkpoint: empty; give a checkpoint "
                                      "folder or 'auto'"):
        parse_train_settings(["--resume_from_checkpoint", value])


@pytest.mark.parametrize("resume", ["auto", "runs/x/checkpoints/step_8"])
def test_an_evaluation_only_run_refuses_a_checkpoint_to_resume(resume):
    """--max_train_steps 0 evaluated the untrained --model, ignored the checkpoint and, into the
    run's own folder, replaced its trained model and metrics, with rc 0."""
    with pytest.raises(QAError, match="--max_train_steps 0: an evaluation-only run evaluates "
                                      "--model and resumes nothing; drop "
                                      "--resume_from_checkpoint"):
        parse_train_settings(["--max_train_steps", "0", "--resume_from_checkpoint", resume])


def test_demo_and_another_preset_is_a_usage_error(capsys):
    """--demo --preset cpu_fast trained with the demo's values while train_config.json said
    preset cpu_fast."""
    with pytest.raises(SystemExit) as exit_info:
        parse_train_settings(["--demo", "--preset", "cpu_fast"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --demo is --preset demo: give --demo or --preset cpu_fast, not both")


def test_preset_replaces_defaults_but_not_what_was_typed():
    settings = parse_train_settings(["--preset", "cpu_fast", "--learning_rate", "3e-5"])
    assert settings.optim.learning_rate == 3e-5               # typed: kept
    assert settings.optim.optim == SPEED_SETTINGS["optim"]    # preset
    assert settings.optim.group_by_length is True and settings.features.max_length == 256
    assert parse_train_settings([]).optim.optim == "adamw_torch"  # defaults untouched
    assert set(PRESETS) == {"demo", "cpu_fast"}


def test_script_refuses_a_bad_choice_within_seconds_before_any_work(tmp_path):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train_accelerate.py"),
         "--eval_strategy", "stepz",
         "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")],
        cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and time.perf_counter() - started < 30
    assert "--eval_strategy" in result.stderr and "'epoch', 'steps', 'end'" in result.stderr
    assert "Traceback" not in result.stderr
    # refused before torch or pyarrow is loaded: flag parsing needs neither
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "qa_core.settings" in imported
    assert "torch" not in imported and "pyarrow" not in imported
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_help_shows_each_flag_with_its_help():
    result = subprocess.run([sys.executable, str(REPO / "train_accelerate.py"), "--help"],
                            cwd=REPO, env=offline_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for needle in ("--max_train_minutes", "wall-clock budget", "--optim",
                   "transformers' names", "cpu_fast", "--cache_sharing"):
        assert needle in text


def test_a_home_folder_in_a_path_flag_is_expanded(tmp_path, monkeypatch):
    """"--cache_dir=~/probe" reaches Python with the "~" (the shell expands only a word that
    starts with it): the checks expanded it, the run did not (a traceback, and a folder named
    "~" in the current one)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    source, cache, _ = parse_preprocess_settings(
        ["--data=~/data.jsonl", "--model=~/model", "--cache_dir=~/cache"])
    assert (source.data, source.model, cache.cache_dir) == (
        str(tmp_path / "data.jsonl"), str(tmp_path / "model"), str(tmp_path / "cache"))
    settings = parse_train_settings(["--model=~/model", "--train_data=~/train.json",
                                     "--output_dir=~/out", "--resume_from_checkpoint=~/out/c"])
    assert settings.data.train_data == str(tmp_path / "train.json")
    assert settings.run.output_dir == str(tmp_path / "out")
    assert settings.run.resume_from_checkpoint == str(tmp_path / "out" / "c")
