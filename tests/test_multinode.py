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
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import (
    EVAL_DATA,
    REPO,
    TRAIN_DATA,
    free_port,
    last_json_line,
    offline_env,
    run_main_in_process,
    train_args,
    train_records,
)

pytestmark = pytest.mark.slow

CONFIG = REPO / "accelerate_configs" / "cpu_2proc.yaml"


def run_two_nodes(node_args: list[list[str]],
                  timeout: float = 300) -> list[tuple[int, str, str]]:
    """One ``accelerate launch`` per node (machine rank = index in ``node_args``); each node's
    (exit code, stdout, stderr). A node still running after ``timeout`` fails the test (a hang)."""
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
                start_new_session=True,
            )
        )
    results = []
    try:
        for child in children:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a node still runs after {timeout} s: the ranks hang")
            results.append((child.returncode, stdout, stderr))
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)  # the launcher and its ranks
                child.communicate()
    return results


def launch_two_nodes(node_args: list[list[str]], timeout: float = 300) -> list[str]:
    """:func:`run_two_nodes`, each node succeeding; their stdouts."""
    outputs = []
    for code, stdout, stderr in run_two_nodes(node_args, timeout):
        assert code == 0, f"node failed ({code}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
        outputs.append(stdout)
    return outputs


def stopped_with(results: list[tuple[int, str, str]]) -> tuple[list[str], str]:
    """Every node failed and no rank printed a traceback: the error lines of all nodes' outputs,
    and those outputs (for a failure message)."""
    output = "".join(stdout + stderr for _, stdout, stderr in results)
    assert all(code != 0 for code, _, _ in results), output[-5000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-5000:]
    return [line for line in output.splitlines() if "train_accelerate.py: error: " in line], output


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


SHARED_FLAGS = dict(
    max_train_steps=3,
    checkpointing_steps=2,
    keep_last=0,
    per_device_train_batch_size=4,
    eval_strategy="end",
    max_eval_examples=5,
)


@pytest.fixture(scope="module")
def two_node_training(tiny_model, tmp_path_factory) -> tuple[Path, list[str]]:
    """Two nodes sharing the cache and output folders, training 3 steps (checkpoint at step 2)."""
    tmp_path = tmp_path_factory.mktemp("shared")
    cache = tmp_path / "shared_cache"
    stdouts = launch_two_nodes([train_args(tiny_model, cache, tmp_path / "out",
                                           **SHARED_FLAGS)] * 2)
    return tmp_path, stdouts


def test_shared_cache_builds_once_and_training_checkpoints(two_node_training):
    tmp_path, stdouts = two_node_training
    cache = tmp_path / "shared_cache"
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
    assert json.loads((checkpoint / "run_state.json").read_text())["settings"]["world_size"] == 2


def test_data_only_one_node_refuses_stops_every_node_with_its_line(tiny_model, tmp_path):
    """Each node reads its own copy of the data and builds its own cache (node-local disks);
    node 0's copy is truncated. Node 0 refused it; node 1 built its entry and went on alone into
    the next collective: a ``Connection closed by peer`` traceback (gloo; on NCCL it waited).
    Now the builders' refusals are gathered and every rank stops with node 0's line."""
    good = tmp_path / "node1" / "eval.json.gz"
    good.parent.mkdir()
    good.write_bytes(Path(EVAL_DATA).read_bytes())
    damaged = tmp_path / "node0" / "eval.json.gz"
    damaged.parent.mkdir()
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nodes = [
        train_args(tiny_model, tmp_path / f"node{rank}" / "cache", tmp_path / "out",
                   eval_data=str(data), cache_sharing="local", **EVAL_FLAGS)
        for rank, data in enumerate([damaged, good])
    ]
    errors, output = stopped_with(run_two_nodes(nodes, timeout=240))
    assert errors == [
        f"train_accelerate.py: error: {damaged}: truncated gzip file: the compressed data ends "
        "within line 1 (an interrupted download or copy?); fetch or compress it again"
    ], output[-5000:]


def test_machines_that_find_other_checkpoints_stop_alike(two_node_training, tiny_model):
    """``--resume_from_checkpoint auto`` with an output folder on each machine's own disk, as a
    run without a shared file system leaves it: node 1 holds only its RNG files, no manifest.
    Node 0 resumed step 2 and node 1 started afresh: node 0 waited in the resume's gather and
    node 1 in training, both for ever. Now both stop with one line saying what each found."""
    tmp_path, _ = two_node_training
    node0, node1 = tmp_path / "node0_out", tmp_path / "node1_out"
    shutil.copytree(tmp_path / "out", node0)
    (node1 / "checkpoints" / "step_2").mkdir(parents=True)
    shutil.copy(node0 / "checkpoints" / "step_2" / "rng_state_1.json",
                node1 / "checkpoints" / "step_2")
    flags = dict(SHARED_FLAGS, max_train_steps=4, resume_from_checkpoint="auto")
    errors, output = stopped_with(run_two_nodes(
        [train_args(tiny_model, tmp_path / "shared_cache", out, **flags)
         for out in (node0, node1)], timeout=150))
    assert errors == [
        "train_accelerate.py: error: --resume_from_checkpoint auto: the processes found "
        f"different checkpoints ({node0 / 'checkpoints' / 'step_2'} on process 0; none on "
        "process 1): --output_dir must be one folder that every machine sees (a shared file "
        "system)"], output[-5000:]


def test_a_checkpoint_one_machine_cannot_write_stops_every_machine(two_node_training,
                                                                   tiny_model):
    """An output folder on each machine's own disk: at the first checkpoint node 1 cannot
    write its RNG state (the step folder exists on node 0 only). Node 1 ended in a
    FileNotFoundError traceback and node 0, in the barrier after its writes, in a ``Connection
    closed by peer`` one (on NCCL it waited). Now every rank stops with node 1's line."""
    tmp_path, _ = two_node_training
    outs = [tmp_path / "local0_out", tmp_path / "local1_out"]
    errors, output = stopped_with(run_two_nodes(
        [train_args(tiny_model, tmp_path / "shared_cache", out, **SHARED_FLAGS) for out in outs],
        timeout=150))
    folder = outs[1] / "checkpoints" / "step_2"
    assert errors == [
        f"train_accelerate.py: error: {folder}: not written: process 1 could not write "
        f"{folder / 'rng_state_1.json'} (ENOENT: No such file or directory): --output_dir must "
        "be one folder that every machine sees (a shared file system); the checkpoint is "
        "unfinished (no manifest.json): auto skips it"], output[-5000:]
    assert not (outs[0] / "checkpoints" / "step_2" / "manifest.json").exists()


def test_a_model_folder_only_one_machine_refuses_stops_every_machine(tiny_model, tmp_path):
    """Each machine reads its own copy of --model (a node-local disk or hub cache); node 0's
    model.safetensors is truncated. Node 0 refused it and node 1 went on alone into the cache's
    collectives: a ``Connection closed by peer`` traceback (gloo; on NCCL it waited)."""
    copies = [tmp_path / "model0", tmp_path / "model1"]
    for copy in copies:
        shutil.copytree(tiny_model, copy)
    weights = copies[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    errors, output = stopped_with(run_two_nodes(
        [train_args(str(copy), tmp_path / "cache", tmp_path / "out", **EVAL_FLAGS)
         for copy in copies], timeout=150))
    assert errors == [
        f"train_accelerate.py: error: {weights}: not a readable safetensors file (Error while "
        "deserializing header: incomplete metadata, file not fully covered)"], output[-5000:]


def test_machines_reading_different_copies_of_the_data_stop_before_training(tiny_model,
                                                                            tmp_path):
    """Each machine reads its own copy of --train_data (node-local disks); the copies differ.
    Node 0 planned 6 optimizer steps from its 43 windows, node 1 7 from its 55, and both waited
    in each other's collectives for ever. Now the cache keys are compared before training."""
    data = [Path(TRAIN_DATA), Path(EVAL_DATA)]  # two different SQuAD files, as two "copies"
    flags = dict(SHARED_FLAGS, max_train_steps=None, num_train_epochs=1, checkpointing_steps=None,
                 cache_sharing="local")
    errors, output = stopped_with(run_two_nodes(
        [train_args(tiny_model, tmp_path / f"cache{rank}", tmp_path / "out",
                    train_data=str(copy), **flags) for rank, copy in enumerate(data)],
        timeout=150))
    assert len(errors) == 1 and errors[0].startswith(
        f"train_accelerate.py: error: {data[0]}: the processes did not read the same data (cache "
        "entry "), output[-5000:]
    assert errors[0].endswith(" on process 1): every machine's copy of it, and of --model's "
                              "tokenizer, must be the same"), errors


def test_an_output_folder_in_use_stops_every_machine_with_one_line(tiny_model, tmp_path):
    """Another run holds the folder's lock. Rank 0 took the lock before the process group
    existed and refused alone: node 1 waited in the group's rendezvous until node 0's launcher
    was gone, then ended with a ``DistNetworkError`` traceback. Now the lock is taken once the
    group exists and rank 0's refusal is gathered: every rank stops with its line."""
    import socket

    from qa_core.outputs import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        (out / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()}")
        results = run_two_nodes([train_args(tiny_model, tmp_path / "cache", out, **EVAL_FLAGS)]
                                * 2, timeout=150)
    finally:
        sleeper.kill()
        sleeper.wait()
    errors, output = stopped_with(results)
    assert errors == [f"train_accelerate.py: error: --output_dir {out}: another run (pid "
                      f"{sleeper.pid}) is writing into it; wait for it or give another "
                      "--output_dir"], output[-5000:]
    assert "DistNetworkError" not in output, output[-5000:]  # node 1's, in the rendezvous


def test_a_new_run_into_checkpoints_only_one_machine_sees_stops_every_machine(tiny_model,
                                                                            tmp_path):
    """A new run into an output folder on each machine's own disk, node 0's holding an earlier
    run's checkpoint. Node 0 refused it and node 1, seeing none, waited in the barrier after
    the check: a ``Connection closed by peer`` traceback (gloo; on NCCL it waited)."""
    outs = [tmp_path / "out0", tmp_path / "out1"]
    (outs[0] / "checkpoints" / "step_2").mkdir(parents=True)
    outs[1].mkdir()
    errors, output = stopped_with(run_two_nodes(
        [train_args(tiny_model, tmp_path / "cache", out, **EVAL_FLAGS) for out in outs],
        timeout=150))
    assert errors == [
        f"train_accelerate.py: error: --output_dir {outs[0]}: holds an earlier run's checkpoints "
        "(step_2): resume it with --resume_from_checkpoint auto, start afresh with "
        "--overwrite_output_dir (deletes them), or give another --output_dir"], output[-5000:]
