"""qa_core.hardware: mixed precision choice, what a launch asked for, refusing a plan that would
silently change, and the description of what is in effect (one process, in-process)."""

from __future__ import annotations

import pytest

from qa_core import hardware
from qa_core.hardware import (
    FSDP2_ON_CPU_VERIFIED,
    DistributionPlanError,
    RequestedPlan,
    describe_distribution,
    distribution_line,
    make_accelerator,
    outcome_mismatch,
    refuse_on_cpu,
    requested_plan,
)
from tiny_models import reset_accelerate_state, run_main_in_process, train_args

# What `accelerate launch` exports for accelerate_configs/fsdp.yaml and deepspeed_zero2.yaml
# (accelerate/utils/launch.py), under torchrun.
TORCHRUN = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
FSDP1_ENV = {
    **TORCHRUN,
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "1",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_RESHARD_AFTER_FORWARD": "full_shard",
    "FSDP_SYNC_MODULE_STATES": "true",
}
FSDP2_ENV = {
    **TORCHRUN,
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_SYNC_MODULE_STATES": "false",
}
DEEPSPEED_ENV = {
    **TORCHRUN,
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
}
VERIFIED = FSDP2_ON_CPU_VERIFIED[0]


def test_resolve_mixed_precision_auto(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16_available", lambda: True)
    assert hardware.resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(hardware, "native_bf16_available", lambda: False)
    assert hardware.resolve_mixed_precision("auto") == "no"
    assert (
        hardware.resolve_mixed_precision("fp16") == "fp16"
        and hardware.resolve_mixed_precision(None) is None
    )


def test_requested_plan_reads_the_launch_environment():
    assert requested_plan({}) == RequestedPlan()
    fsdp1 = requested_plan(FSDP1_ENV)
    assert (
        fsdp1.kind,
        fsdp1.fsdp_version,
        fsdp1.fsdp_strategy,
        fsdp1.fsdp_sync_module_states,
        fsdp1.launched,
    ) == ("fsdp", 1, "FULL_SHARD", True, True)
    assert fsdp1.label == "FSDP1 (FULL_SHARD)"
    assert requested_plan(FSDP2_ENV).label == "FSDP2 (reshard_after_forward=true)"
    deepspeed = requested_plan(DEEPSPEED_ENV)
    assert (deepspeed.kind, deepspeed.zero_stage, deepspeed.label) == (
        "deepspeed",
        2,
        "DeepSpeed ZeRO-2",
    )
    assert not requested_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}).launched


@pytest.mark.parametrize(
    "env, version, says",
    [
        (
            FSDP1_ENV,
            VERIFIED,
            ["FSDP1 (FULL_SHARD)", "DDP over gloo on CPU (MULTI_CPU)", "no GPU", "fsdp_version: 2"],
        ),
        (
            DEEPSPEED_ENV,
            VERIFIED,
            ["DeepSpeed ZeRO-2", "DDP over gloo on CPU (MULTI_CPU)", "no GPU"],
        ),
        (FSDP2_ENV, "0.9", ["FSDP2", "DDP over gloo", "accelerate 0.9", VERIFIED]),
        (
            {**FSDP2_ENV, "FSDP_SYNC_MODULE_STATES": "true"},
            VERIFIED,
            ["fsdp_sync_module_states: false"],
        ),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
            VERIFIED,
            ["one process without sharding", "accelerate launch"],
        ),
    ],
)
def test_refusals_on_cpu_say_what_was_asked_what_would_run_and_why(env, version, says):
    message = refuse_on_cpu(requested_plan(env), version)
    assert message and "\n" not in message
    assert message.startswith("the launch asked for ") and ", but this run would get " in message
    for words in says:
        assert words in message


def test_fsdp2_on_cpu_and_plain_runs_are_not_refused():
    assert refuse_on_cpu(requested_plan(FSDP2_ENV), VERIFIED) is None
    assert refuse_on_cpu(requested_plan({}), VERIFIED) is None
    assert refuse_on_cpu(requested_plan(TORCHRUN), VERIFIED) is None


def test_outcome_mismatch_names_what_the_run_got():
    assert outcome_mismatch(requested_plan(FSDP2_ENV), "FSDP") is None
    assert outcome_mismatch(requested_plan(TORCHRUN), "MULTI_CPU") is None
    message = outcome_mismatch(
        requested_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}), "NO"
    )
    assert message == (
        "the launch asked for FSDP2 (reshard_after_forward=true), but this run would get NO: "
        "there is no process group (start it with accelerate launch)"
    )
    assert "MULTI_GPU" in outcome_mismatch(requested_plan(DEEPSPEED_ENV), "MULTI_GPU")


@pytest.fixture
def fresh_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def test_make_accelerator_builds_what_train_accelerate_trains_with(
    fresh_state, tmp_path, monkeypatch
):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    accelerator = make_accelerator("no", 3, None, str(tmp_path))
    assert accelerator.gradient_accumulation_steps == 3
    assert accelerator.step_scheduler_with_optimizer is False
    assert accelerator.device.type == ("cuda" if hardware.accelerator_device_available() else "cpu")
    description = describe_distribution(accelerator)
    assert description == {
        "distributed_type": "NO",
        "world_size": 1,
        "num_machines": 1,
        "processes_per_machine": 1,
        "device": accelerator.device.type,
        "backend": None,
        "mixed_precision": "no",
        "sharding": "none",
    }
    assert distribution_line(description).startswith(
        "distribution: NO, 1 process(es) on 1 machine(s)"
    )


def test_make_accelerator_refuses_fsdp1_on_cpu_before_building_anything(
    fresh_state, tmp_path, monkeypatch
):
    if hardware.accelerator_device_available():
        pytest.skip("a GPU is present: FSDP1 is not refused")
    for name, value in FSDP1_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributionPlanError, match=r"^the launch asked for FSDP1 \(FULL_SHARD\)"):
        make_accelerator("no", 1, None, str(tmp_path))
    from accelerate.state import PartialState

    assert PartialState._shared_state == {}, "nothing was initialised"


def test_fp16_on_a_cpu_is_refused_not_reported_while_training_in_fp32(
    fresh_state, tiny_model, cache_dir, tmp_path, monkeypatch, capsys
):
    """Issue 10: the summary, metrics.json and the log state the mixed precision in effect.
    accelerate keeps mixed_precision 'fp16' on a CPU but never autocasts there (native_amp off),
    so --mixed_precision fp16 trained in fp32 with "mixed precision fp16" in all three, rc 0."""
    if hardware.accelerator_device_available():
        pytest.skip("a GPU is present: fp16 runs there")
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "LOCAL_RANK", "WORLD_SIZE",
                 "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributionPlanError, match=r"^mixed precision fp16 .* would train in "
                                                    r"fp32 while reporting fp16; give "):
        make_accelerator("fp16", 1, None, str(tmp_path))
    reset_accelerate_state()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # from the accelerate config
    code, summary, stdout = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "o"))
    assert code == 2 and summary == {} and not stdout.strip()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(
        "train_accelerate.py: error: mixed precision fp16 (--mixed_precision or the accelerate "
        "config) would not be in effect")
    assert not (tmp_path / "o").exists()


def test_train_accelerate_prints_one_line_and_exits_2(
    fresh_state, tiny_model, cache_dir, tmp_path, monkeypatch, capsys
):
    if hardware.accelerator_device_available():
        pytest.skip("a GPU is present: DeepSpeed is not refused")
    for name, value in {**DEEPSPEED_ENV, "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    code, summary, stdout = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "out"))
    assert code == 2 and summary == {} and not stdout.strip()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(
        "train_accelerate.py: error: the launch asked for DeepSpeed ZeRO-2, "
        "but this run would get DDP"
    )
    assert not (tmp_path / "out").exists()
