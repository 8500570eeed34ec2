"""What bench records store: paths relative to the repository, never one machine's folders."""
from __future__ import annotations

import sys
from pathlib import Path

from bench.common import PACKAGED_MODEL_LABEL, REPO_ROOT, command_label, packaged_model, record_path


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
