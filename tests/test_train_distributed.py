"""Two CPU workers through ``accelerate launch --config_file accelerate_configs/cpu_2proc.yaml``.

* the launch really runs 2 ranks;
* evaluation on 2 processes (uneven last batch: padded, gathered, duplicates dropped) gives the
  same predictions and metrics as on 1 process;
* the LR schedule counts optimizer steps: 1 process x batch 8 and 2 processes x batch 4 take the
  same number of steps with the same LR at every step;
* a 2-process run resumed from a mid-epoch checkpoint ends with the same weights.

The 1-process reference runs in-process (``train_accelerate.main``); the 2-process runs are
subprocesses with HF_HUB_OFFLINE=1 and a free rendezvous port.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from qa_core.optim import lr_lambda
from tiny_models import (
    REPO,
    accelerate_launcher,
    last_json_line,
    load_weights,
    run_main_in_process,
    run_script,
    train_args,
    train_records,
)

pytestmark = pytest.mark.slow

CONFIG = REPO / "accelerate_configs" / "cpu_2proc.yaml"


def launch_two(args: list[str], **env: str) -> dict:
    result = run_script(args, launcher=accelerate_launcher(CONFIG), timeout=300, **env)
    assert result.returncode == 0, (
        f"launch failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return last_json_line(result.stdout)


def run_one(args: list[str]) -> dict:
    code, summary, _ = run_main_in_process(args)
    assert code == 0
    return summary


# ---------------------------------------------------------------------------------------------
# Training: 1 x 8 vs 2 x 4
# ---------------------------------------------------------------------------------------------

# 20 examples -> 43 windows: 6 global batches of 8 per epoch (the last one short), 2 epochs.
# No dropout and fixed-width batches: 1 x 8 and 2 x 4 then compute the same losses (the masks,
# and the padding positions the loss's softmax covers, would differ).
TRAIN_FLAGS = dict(max_train_examples=20, max_eval_examples=5, num_train_epochs=2, warmup_steps=3,
                   lr_scheduler="linear", learning_rate=1e-3, logging_steps=1, eval_strategy="end",
                   hidden_dropout=0.0, attention_dropout=0.0, pad_to="max_length")


# Imported by every Python process of a launch (it is on PYTHONPATH): at interpreter exit, a
# rank writes the names of its threads still alive, as the kernel names them.
EXIT_THREADS_HOOK = """
import atexit, os

def _threads_at_exit():
    if "RANK" not in os.environ:
        return
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as handle:
                names.append(handle.read().strip())
        except OSError:
            pass
    path = os.path.join(os.environ["EXIT_THREADS_DIR"], "rank" + os.environ["RANK"])
    with open(path, "w") as out:
        out.write("\\n".join(sorted(names)))

atexit.register(_threads_at_exit)
"""


@pytest.fixture(scope="module")
def two_process_training(tiny_model, cache_dir, tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("dist")
    out, hook = root / "train_2x4", root / "exit_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EXIT_THREADS_HOOK)
    return launch_two(train_args(tiny_model, cache_dir, out, per_device_train_batch_size=4,
                                 **TRAIN_FLAGS),
                      PYTHONPATH=f"{hook}{os.pathsep}{REPO}", EXIT_THREADS_DIR=str(hook)), out


@pytest.fixture(scope="module")
def one_process_training(tiny_model, cache_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dist") / "train_1x8"
    return run_one(train_args(tiny_model, cache_dir, out, per_device_train_batch_size=8,
                              **TRAIN_FLAGS)), out


def test_no_rank_finalizes_with_gloo_threads_alive(two_process_training):
    """A DDP run's gloo threads (``pt_gloo_runloop``, ``gloo_tcp_loop``) outlive
    ``destroy_process_group``; a rank that then finalized the interpreter ran C++ static
    destructors beside them (a rare ``terminate called without an active exception`` at exit).
    The ranks end before finalization, or with no such thread left."""
    _, out = two_process_training
    hook = out.parent / "exit_hook"
    for rank_file in sorted(hook.glob("rank*")):
        assert "gloo" not in rank_file.read_text(), (rank_file.name, rank_file.read_text())


def test_launch_runs_two_ranks(two_process_training):
    summary, out = two_process_training
    assert summary["world_size"] == 2
    assert summary["global_step"] == 12
    # 6 rounds of 2 x 4 hold 48 samples per epoch, 5 of them repeats that even out the ranks.
    assert summary["samples_seen"] == 2 * 43
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    # Only the main process writes the log: one record per step, no duplicates from rank 1.
    assert [r["step"] for r in train_records(out)] == list(range(1, 13))


def test_lr_per_optimizer_step_is_independent_of_the_process_count(one_process_training,
                                                                   two_process_training):
    (one, one_dir), (two, two_dir) = one_process_training, two_process_training
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["global_step"] == two["global_step"] == 2 * math.ceil(43 / 8)
    one_records, two_records = train_records(one_dir), train_records(two_dir)
    assert ([r["step"] for r in one_records] == [r["step"] for r in two_records]
            == list(range(1, 13)))
    assert [r["lr"] for r in one_records] == [r["lr"] for r in two_records]
    # The logged LR is the scheduler's after the step: warm-up over 3 steps, then linear to 0 at
    # step 12.
    schedule = lr_lambda("linear", 3, 12)
    # each record holds the rate its step was taken with: warm-up from the first step on
    assert [r["lr"] for r in one_records] == pytest.approx([1e-3 * schedule(step)
                                                            for step in range(0, 12)])
    assert one_records[-1]["lr"] > 0.0
    assert ([r["epoch"] for r in one_records] == [r["epoch"] for r in two_records]
            == [0] * 6 + [1] * 6)
    # the logged loss is the mean over both ranks' micro-batches (it was rank 0's own): the
    # same as one process's over the same 8 samples, for the epoch's full batches
    assert [r["loss"] for r in two_records[:5]] == pytest.approx(
        [r["loss"] for r in one_records[:5]], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Evaluation only: 1 vs 2 processes, uneven split
# ---------------------------------------------------------------------------------------------

# 41 examples -> 117 windows: not a multiple of 2 processes x 8 per batch (nor of 2).
EVAL_FLAGS = dict(max_train_steps=0, max_eval_examples=41, per_device_eval_batch_size=8)


def test_two_process_evaluation_matches_one_process(tiny_model, cache_dir, tmp_path):
    one = run_one(train_args(tiny_model, cache_dir, tmp_path / "eval_1", **EVAL_FLAGS))
    two = launch_two(train_args(tiny_model, cache_dir, tmp_path / "eval_2", **EVAL_FLAGS))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["global_step"] == two["global_step"] == 0

    features = one["metrics"]["features"]
    assert features == 117 and features % (2 * 8) != 0 and features % 2 == 1
    for summary in (one, two):
        assert summary["metrics"]["features"] == summary["metrics"]["features_expected"] == features
        assert summary["metrics"]["total"] == 41 and summary["metrics"]["missing_predictions"] == 0

    predictions_one = json.loads((tmp_path / "eval_1" / "predictions.json").read_text())
    predictions_two = json.loads((tmp_path / "eval_2" / "predictions.json").read_text())
    assert len(predictions_one) == 41
    assert predictions_two == predictions_one
    assert two["metrics"] == one["metrics"]
    metrics_one = json.loads((tmp_path / "eval_1" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "eval_2" / "metrics.json").read_text())
    for key in ("exact_match", "f1", "start_f1", "end_f1", "start_accuracy", "end_accuracy",
                "features"):
        assert metrics_two[key] == metrics_one[key], key


# ---------------------------------------------------------------------------------------------
# Exact resume on 2 processes
# ---------------------------------------------------------------------------------------------

def test_two_process_resume_mid_epoch_reproduces_the_run(tiny_model, cache_dir, tmp_path):
    # 43 windows -> 22 batches of 2 -> 11 per process -> 6 optimizer steps per epoch (accumulation
    # 2).
    flags = dict(max_train_examples=20, per_device_train_batch_size=2,
                 gradient_accumulation_steps=2, num_train_epochs=2, checkpointing_steps=4,
                 keep_last=0, warmup_steps=2, seed=11, learning_rate=1e-3, max_eval_examples=5,
                 eval_strategy="end")
    full = launch_two(train_args(tiny_model, cache_dir, tmp_path / "A", **flags))
    # mid epoch 0: the rest of it, then epoch 1
    checkpoint = tmp_path / "A" / "checkpoints" / "step_4"
    state = json.loads((checkpoint / "run_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["settings"]["world_size"]) == (
        0, 8, 2)
    assert (checkpoint / "rng_state_1.json").is_file(), "each rank saves its RNG state"

    resumed = launch_two(train_args(tiny_model, cache_dir, tmp_path / "B",
                                    resume_from_checkpoint=str(checkpoint), **flags))
    assert full["global_step"] == resumed["global_step"] == 12
    a, b = load_weights(tmp_path / "A"), load_weights(tmp_path / "B")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert [(r["step"], r["loss"]) for r in train_records(tmp_path / "B")] == [
        (r["step"], r["loss"]) for r in train_records(tmp_path / "A") if r["step"] > 4]
    # a file only rank 1 reads, damaged (manifest rewritten to match): every rank stops with
    # the one line naming it (rank 1 alone refused it: no line at all, rank 0 a traceback)
    from qa_core.checkpoints import write_manifest

    rng_file = checkpoint / "rng_state_1.json"
    rng_file.write_text("{")
    write_manifest(checkpoint)
    result = run_script(train_args(tiny_model, cache_dir, tmp_path / "C",
                                   resume_from_checkpoint=str(checkpoint), **flags),
                        launcher=accelerate_launcher(CONFIG), timeout=300)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if "train_accelerate.py: error: " in line]
    assert result.returncode != 0 and errors == [
        f"train_accelerate.py: error: {rng_file}: not valid JSON (Expecting property name "
        "enclosed in double quotes at line 1 column 2); truncated or damaged"], \
        result.stderr[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_end_when_their_launcher_is_killed(tiny_model, cache_dir, tmp_path):
    """A launcher killed with SIGKILL left both ranks running (parent PID 1, their own
    sessions) to the end of the run, writing checkpoints beside a resumed run."""
    import signal
    import subprocess
    import time

    import psutil

    from tiny_models import offline_env

    out = tmp_path / "out"
    args = train_args(tiny_model, cache_dir, out, max_train_examples=200, num_train_epochs=50,
                      eval_strategy="end")
    launcher = subprocess.Popen(accelerate_launcher(CONFIG) + [str(REPO / "train_accelerate.py"),
                                                               *args],
                                cwd=REPO, env=offline_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not train_records_so_far(out) and time.time() < deadline:
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "train_accelerate.py" in " ".join(p.cmdline())]
        assert len(ranks) == 2 and train_records_so_far(out), "the run did not start training"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        gone, alive = psutil.wait_procs(ranks, timeout=20)
        assert not alive, f"ranks still running after their launcher: {alive}"
    finally:
        for process in psutil.Process().children(recursive=True):
            if "train_accelerate.py" in " ".join(process.cmdline()):
                process.kill()
        if launcher.poll() is None:
            launcher.kill()


def train_records_so_far(out: Path) -> bool:
    log = out / "log.jsonl"
    return log.is_file() and '"event": "train"' in log.read_text()
