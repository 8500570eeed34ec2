"""Two "nodes" on one machine: two ``accelerate launch --num_machines 2 --machine_rank {0,1}``
processes of one worker each, meeting at 127.0.0.1 (the README's multi-node recipe, scaled down).

* cache folders that the nodes do not share: ``--cache_sharing auto`` finds that out and each
  node's local main process builds the cache (2 builds); evaluation-only predictions equal the
  1-process ones;
* one cache folder for both: found shared, built once in total; a few training steps run and
  checkpoint (each rank's RNG state in the checkpoint).

Run alone: ``python -m pytest -q tests/test_multinode.py`` (marked ``slow``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import (
    REPO,
    free_port,
    last_json_line,
    offline_env,
    run_main_in_process,
    train_args,
    train_records,
)

pytestmark = pytest.mark.slow

CONFIG = REPO / "accelerate_configs" / "cpu_2proc.yaml"


def launch_two_nodes(node_args: list[list[str]], timeout: float = 300) -> list[str]:
    """One ``accelerate launch`` per node (machine rank = index in ``node_args``); their stdouts."""
    port = str(free_port())
    children = []
    for rank, args in enumerate(node_args):
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIG),
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--num_processes",
            "2",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            str(REPO / "train_accelerate.py"),
            *args,
        ]
        children.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=offline_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=timeout)
            assert child.returncode == 0, (
                f"node failed ({child.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
            )
            outputs.append(stdout)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    return outputs


def cache_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


EVAL_FLAGS = dict(max_train_steps=0, max_eval_examples=21, per_device_eval_batch_size=8)


def test_separate_caches_build_once_per_node_and_evaluate_like_one_process(
    tiny_model, cache_dir, tmp_path
):
    one_code, one, _ = run_main_in_process(
        train_args(tiny_model, cache_dir, tmp_path / "one", **EVAL_FLAGS)
    )
    assert one_code == 0
    caches = [tmp_path / "node0_cache", tmp_path / "node1_cache"]
    stdouts = launch_two_nodes(
        [train_args(tiny_model, folder, tmp_path / "two", **EVAL_FLAGS) for folder in caches]
    )
    two = last_json_line(stdouts[0])
    assert (
        two["distribution"]["num_machines"] == 2
        and two["distribution"]["processes_per_machine"] == 1
    )
    assert two["world_size"] == 2 and two["distribution"]["distributed_type"] == "MULTI_CPU"
    assert two["cache"] == {
        "requested": "auto",
        "mode": "local",
        "num_machines": 2,
        "detected": True,
        "builds": {"eval": 2},
    }
    # each node built the entry in its own folder; the probe file is gone
    assert (
        cache_entries(caches[0]) == cache_entries(caches[1]) and len(cache_entries(caches[0])) == 1
    )
    predictions_one = json.loads((tmp_path / "one" / "predictions.json").read_text())
    predictions_two = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert len(predictions_one) == 21 and predictions_two == predictions_one
    assert two["metrics"] == one["metrics"]


def test_shared_cache_builds_once_and_training_checkpoints(tiny_model, tmp_path):
    cache = tmp_path / "shared_cache"
    flags = dict(
        max_train_steps=3,
        checkpointing_steps=2,
        keep_last=0,
        per_device_train_batch_size=4,
        eval_strategy="end",
        max_eval_examples=5,
    )
    stdouts = launch_two_nodes([train_args(tiny_model, cache, tmp_path / "out", **flags)] * 2)
    summary = last_json_line(stdouts[0])
    assert summary["cache"] == {
        "requested": "auto",
        "mode": "shared",
        "num_machines": 2,
        "detected": True,
        "builds": {"train": 1, "eval": 1},
    }
    assert len(cache_entries(cache)) == 2  # the train and the eval entry, no probe left
    assert summary["global_step"] == 3 and [r["step"] for r in train_records(tmp_path / "out")] == [
        1,
        2,
        3,
    ]
    checkpoint = tmp_path / "out" / "checkpoints" / "step_2"
    assert (checkpoint / "run_state.json").is_file()
    assert (checkpoint / "rng_state_0.json").is_file() and (
        checkpoint / "rng_state_1.json"
    ).is_file()  # one RNG state per process, written by each rank
    assert json.loads((checkpoint / "run_state.json").read_text())["world_size"] == 2
