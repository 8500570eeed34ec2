"""The smoke tier: every entry point end to end on tiny data and a tiny model, in about two
minutes on a 2-core CPU. For a user's CI (and the first thing ``.ci/run`` runs):

    python -m pytest -m smoke

What runs in-process does (each subprocess pays the torch import again); the one 2-process
launch is the only subprocess. The full suite checks each behaviour in depth.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_models import (
    EVAL_DATA,
    REPO,
    TRAIN_DATA,
    accelerate_launcher,
    last_json_line,
    load_weights,
    run_main_in_process,
    run_script,
    train_args,
    train_records,
)

pytestmark = pytest.mark.smoke

STEPS = dict(max_train_steps=4, checkpointing_steps=2, eval_strategy="end", keep_last=0)


@pytest.fixture(scope="module")
def trained(tiny_model, cache_dir, tmp_path_factory) -> Path:
    """A 4-step fp32 run with checkpoints at steps 2 and 4, and its final evaluation."""
    out = tmp_path_factory.mktemp("smoke") / "fp32"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, **STEPS))
    assert code == 0 and summary["global_step"] == 4
    return out


def test_preprocess_gives_the_same_cache_with_one_and_two_workers(tiny_model, tmp_path, capsys):
    import preprocess

    summaries = {}
    for workers in (1, 2):
        assert preprocess.main(["--data", EVAL_DATA, "--model", tiny_model, "--cache_dir",
                                str(tmp_path / f"np{workers}"), "--max_length", "128",
                                "--doc_stride", "32", "--num_proc", str(workers)]) == 0
        summaries[workers] = last_json_line(capsys.readouterr().out)
    one, two = summaries[1], summaries[2]
    assert not one["cache_hit"] and one["features"] > one["examples"] > 0
    for key in ("examples", "answerable", "features", "answers_covered", "skipped"):
        assert one[key] == two[key], key


def test_training_checkpoints_and_evaluates(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and 0 <= metrics["f1"] <= 100
    assert [r["step"] for r in train_records(trained)] == [1, 2, 3, 4]
    assert {p.name for p in (trained / "checkpoints").iterdir()} == {"step_2", "step_4"}
    assert (trained / "model.safetensors").is_file() and (trained / "predictions.json").is_file()


def test_resume_from_a_checkpoint_is_exact(trained, tiny_model, cache_dir, tmp_path):
    out = tmp_path / "resumed"
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, out, resume_from_checkpoint=str(trained / "checkpoints" / "step_2"),
        **STEPS))
    assert code == 0 and summary["global_step"] == 4
    resumed, reference = load_weights(out), load_weights(trained)
    assert resumed.keys() == reference.keys()
    assert all(resumed[name].equal(reference[name]) for name in reference)
    assert [(r["loss"], r["lr"]) for r in train_records(out)] == [
        (r["loss"], r["lr"]) for r in train_records(trained) if r["step"] > 2]


def test_bf16_training_runs(tiny_model, cache_dir, tmp_path):
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "bf16", max_train_steps=2, eval_strategy="end",
        mixed_precision="bf16"))
    assert code == 0 and summary["global_step"] == 2
    assert summary["mixed_precision"] == "bf16"


def test_evaluation_only_of_the_trained_model(trained, cache_dir, tmp_path):
    code, summary, _ = run_main_in_process(train_args(
        str(trained), cache_dir, tmp_path / "eval", max_train_steps=0))
    reference = json.loads((trained / "metrics.json").read_text())
    assert code == 0 and summary["global_step"] == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["exact_match"], metrics["f1"]) == (reference["exact_match"], reference["f1"])


def test_two_process_launch_trains(tiny_model, cache_dir, tmp_path):
    result = run_script(train_args(tiny_model, cache_dir, tmp_path / "ddp", max_train_steps=2,
                                   eval_strategy="end", train_data=TRAIN_DATA),
                        launcher=accelerate_launcher(REPO / "accelerate_configs" /
                                                     "cpu_2proc.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = last_json_line(result.stdout)
    assert summary["world_size"] == 2 and summary["global_step"] == 2


def test_qa_answer_answers_from_the_trained_model(trained, tmp_path, capsys):
    from qa_core.inference import main

    context = "The Higgs boson was found at CERN in 2012."
    assert main(["--model", str(trained), "--context", context, "--question", "When?"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert answer["question"] == "When?" and answer["answer"] in context


def test_tydi_evaluation_and_qa_tydi_eval_agree(trained, cache_dir, tmp_path, capsys):
    """Evaluation on TyDi data (the official 11-language sample) writes tydi_predictions.jsonl,
    and ``qa-tydi-eval`` scores it as metrics.json does."""
    from qa_core.tydi_eval import main as tydi_eval_main

    gold = str(REPO / "qa_core" / "data" / "tydiqa_tiny_dev.jsonl.gz")
    out = tmp_path / "tydi"
    code, _, _ = run_main_in_process(train_args(
        str(trained), cache_dir, out, max_train_steps=0, eval_data=gold, language="all",
        max_eval_examples=None))
    assert code == 0
    lines = (out / "tydi_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 11
    capsys.readouterr()
    assert tydi_eval_main(["--gold", gold, "--predictions",
                           str(out / "tydi_predictions.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored == json.loads((out / "metrics.json").read_text())["tydi"]
