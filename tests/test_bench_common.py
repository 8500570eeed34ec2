"""What bench records store: paths relative to the repository, never one machine's folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from bench.common import (
    PACKAGED_MODEL_LABEL,
    REPO_ROOT,
    check_at_least,
    check_rules,
    command_label,
    csv_flag,
    packaged_model,
    record_path,
)


def test_record_paths_are_relative_to_the_repository():
    assert record_path(REPO_ROOT / "qa_core" / "data" / "x.json.gz") == "qa_core/data/x.json.gz"
    shared = REPO_ROOT.parent / "shared" / "data" / "squadshifts" / "reddit_v1.0.json.gz"
    assert record_path(shared) == "../shared/data/squadshifts/reddit_v1.0.json.gz"
    assert record_path("relative/as/given.json") == "relative/as/given.json"
    if not Path("/tmp").resolve().is_relative_to(REPO_ROOT.parent):
        assert record_path("/tmp/elsewhere/run") == "/tmp/elsewhere/run"


def test_command_labels_name_python_and_the_packaged_model_not_their_folders():
    model = packaged_model() or "/opt/some/model"
    label = command_label([sys.executable, "train_accelerate.py", "--model", model,
                           "--train_data", str(REPO_ROOT / "qa_core" / "data" / "t.json.gz")])
    expected_model = PACKAGED_MODEL_LABEL if packaged_model() else "/opt/some/model"
    assert label == (f"python train_accelerate.py --model {expected_model} "
                     "--train_data qa_core/data/t.json.gz")
    assert str(REPO_ROOT) not in label


def test_flag_helpers_refuse_in_one_line(capsys):
    parser = argparse.ArgumentParser(prog="bench")
    assert csv_flag(parser, "sizes", " 4, 8,", int, minimum=1) == [4, 8]
    assert csv_flag(parser, "modes", "a", choices=("a", "b")) == ["a"]
    check_at_least(parser, 1, steps=None, threads=2)
    check_rules(parser, max_eval_examples=None, negative_window_fraction=0.5, unknown_flag=-1)
    for call, message in [
        (lambda: csv_flag(parser, "sizes", ",", int), "--sizes ',': give one or more "
                                                      "comma-separated values"),
        (lambda: csv_flag(parser, "sizes", "4,x", int), "--sizes: 'x' is not an integer"),
        (lambda: csv_flag(parser, "sizes", "0", int, minimum=1), "--sizes: 0 must be at least 1"),
        (lambda: csv_flag(parser, "modes", "c", choices=("a", "b")), "--modes: unknown 'c' (a, b)"),
        (lambda: check_at_least(parser, 1, steps=0), "argument --steps: must be at least 1, got 0"),
        (lambda: check_rules(parser, max_eval_examples=0),
         "argument --max_eval_examples: must be at least 1 (leave it out for all examples), got 0"),
    ]:
        with pytest.raises(SystemExit) as stop:
            call()
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench: error: {message}"
