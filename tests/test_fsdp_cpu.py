"""FSDP launches on a machine without a GPU (2 CPU processes, gloo).

* ``accelerate_configs/fsdp2_cpu_2proc.yaml`` trains with FSDP2 (``fully_shard``): the run
  states FSDP2 in its summary, log and ``metrics.json``; its losses match DDP's
  (``cpu_2proc.yaml``) on the same batches; it checkpoints through accelerate's FSDP path and a
  run resumed from a mid-run checkpoint ends with the same weights and losses.
* ``accelerate_configs/fsdp.yaml`` (FSDP1) stops with one line from the script, no traceback
  through it, and no DDP run.
"""

from __future__ import annotations

import json

import pytest
import torch

from qa_core.hardware import accelerator_device_available
from tiny_models import (
    REPO,
    accelerate_launcher,
    last_json_line,
    load_weights,
    read_log,
    run_main_in_process,
    run_script,
    train_args,
    train_records,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(accelerator_device_available(), reason="checks the CPU-only behaviour"),
]

CONFIGS = REPO / "accelerate_configs"
# 20 examples -> 43 windows; 2 x 4 per step -> 6 steps per epoch; stop after 4, checkpoint at 2.
FLAGS = dict(
    per_device_train_batch_size=4,
    max_train_steps=4,
    checkpointing_steps=2,
    keep_last=0,
    learning_rate=1e-3,
    warmup_steps=1,
    eval_strategy="end",
    max_eval_examples=5,
)


def launch(config: str, args: list[str]) -> dict:
    result = run_script(args, launcher=accelerate_launcher(CONFIGS / config), timeout=300)
    assert result.returncode == 0, f"{config}: {result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return last_json_line(result.stdout)


@pytest.fixture(scope="module")
def runs(tiny_model, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_cpu")
    ddp = launch("cpu_2proc.yaml", train_args(tiny_model, cache_dir, root / "ddp", **FLAGS))
    fsdp = launch("fsdp2_cpu_2proc.yaml", train_args(tiny_model, cache_dir, root / "fsdp", **FLAGS))
    checkpoint = root / "fsdp" / "checkpoints" / "step_2"
    resumed = launch(
        "fsdp2_cpu_2proc.yaml",
        train_args(
            tiny_model, cache_dir, root / "resumed", resume_from_checkpoint=str(checkpoint), **FLAGS
        ),
    )
    return root, ddp, fsdp, resumed


def test_fsdp2_runs_on_cpu_and_says_so(runs):
    root, ddp, fsdp, _ = runs
    assert (
        ddp["distribution"]["distributed_type"] == "MULTI_CPU"
        and ddp["distribution"]["sharding"] == "none"
    )
    expected = {
        "distributed_type": "FSDP",
        "world_size": 2,
        "num_machines": 1,
        "processes_per_machine": 2,
        "device": "cpu",
        "backend": "gloo",
        "mixed_precision": "no",
        "sharding": "FSDP2 (reshard_after_forward=true)",
    }
    assert fsdp["distribution"] == expected
    assert json.loads((root / "fsdp" / "metrics.json").read_text())["distribution"] == expected
    first = read_log(root / "fsdp")[0]
    assert first["event"] == "distribution" and first["sharding"] == expected["sharding"]
    # the pickle-free checkpoint (full state dicts gathered from the shards), no pickle files
    names = {p.name for p in (root / "fsdp" / "checkpoints" / "step_2").iterdir()}
    assert {"manifest.json", "model.safetensors", "optimizer.pt", "rng_state_0.json",
            "rng_state_1.json"} <= names and not any(n.endswith((".pkl", ".bin")) for n in names)
    assert fsdp["global_step"] == 4 and (root / "fsdp" / "model.safetensors").is_file()


def test_fsdp2_losses_match_ddp_on_the_same_batches(runs, tiny_model):
    root, ddp, fsdp, _ = runs
    ddp_records, fsdp_records = train_records(root / "ddp"), train_records(root / "fsdp")
    assert [r["step"] for r in fsdp_records] == [r["step"] for r in ddp_records] == [1, 2, 3, 4]
    for a, b in zip(ddp_records, fsdp_records):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    a, b = load_weights(root / "ddp"), load_weights(root / "fsdp")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    start = load_weights(tiny_model)  # both trained: the weights moved away from the initial ones
    assert max((b[k] - start[k]).abs().max().item() for k in b) > 1e-3


def test_fsdp2_resume_from_a_checkpoint_is_exact(runs):
    root, _, fsdp, resumed = runs
    assert resumed["global_step"] == fsdp["global_step"] == 4
    a, b = load_weights(root / "fsdp"), load_weights(root / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(r["step"], r["loss"]) for r in train_records(root / "resumed")] == [
        (r["step"], r["loss"]) for r in train_records(root / "fsdp") if r["step"] > 2
    ]


def test_fsdp2_evaluation_only_matches_one_process(tiny_model, cache_dir, tmp_path):
    # accelerate prepares an FSDP2 model only together with an optimizer: evaluation-only too
    flags = dict(max_train_steps=0, max_eval_examples=21, per_device_eval_batch_size=8)
    code, one, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "one", **flags))
    assert code == 0
    two = launch(
        "fsdp2_cpu_2proc.yaml", train_args(tiny_model, cache_dir, tmp_path / "two", **flags)
    )
    assert two["distribution"]["sharding"].startswith("FSDP2") and two["metrics"] == one["metrics"]
    predictions = [
        json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("one", "two")
    ]
    assert len(predictions[0]) == 21 and predictions[1] == predictions[0]


def test_fsdp1_launch_on_cpu_stops_with_one_line(tiny_model, cache_dir, tmp_path):
    args = train_args(tiny_model, cache_dir, tmp_path / "out", max_train_steps=1)
    result = run_script(
        args,
        launcher=accelerate_launcher(CONFIGS / "fsdp.yaml", "--num_processes", "2"),
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("train_accelerate.py: error")]
    assert errors == [
        "train_accelerate.py: error: the launch asked for FSDP1 (FULL_SHARD), but this run "
        "would get DDP over gloo on CPU (MULTI_CPU), or a stop in accelerate's FSDP plugin "
        "('no available devices'): this machine has no GPU and accelerate 1.15 runs FSDP1 only "
        "on GPU-family devices; set fsdp_version: 2 (accelerate_configs/fsdp2_cpu_2proc.yaml "
        "trains FSDP2 on CPU) or run on GPUs"
    ]
    # no traceback through the script (the launcher still reports the child's exit code 2)
    assert (
        'train_accelerate.py", line' not in result.stderr
        and "no available devices found" not in result.stderr
    )
    assert "exitcode  : 2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_adafactor_under_fsdp2_stops_with_one_line(tiny_model, cache_dir, tmp_path):
    """Each rank crashed at the first step ('aten.add_.Tensor got mixed torch.Tensor and
    DTensor'): three tracebacks and no error line."""
    args = train_args(tiny_model, cache_dir, tmp_path / "out", max_train_steps=1,
                      optim="adafactor")
    result = run_script(args, launcher=accelerate_launcher(CONFIGS / "fsdp2_cpu_2proc.yaml"),
                        timeout=300)
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("train_accelerate.py: error")]
    assert result.returncode != 0 and errors == [
        "train_accelerate.py: error: --optim adafactor: not supported with FSDP (transformers' "
        "Adafactor cannot update sharded DTensor parameters); use adamw_torch* or DDP"]
    assert 'train_accelerate.py", line' not in result.stderr
