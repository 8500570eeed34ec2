"""What the machine runs natively (``--mixed_precision auto``), the ``Accelerator`` a run gets
(or a one-line refusal when it would not be what the launch asked for), and what is in effect.

FSDP on CPU: accelerate (1.15) assigns ``DistributedType.FSDP`` only for GPU-family devices, so
CPU workers launched with an FSDP config become ``MULTI_CPU`` and are wrapped in DDP (or stop
in the FSDP plugin when ``fsdp_sync_module_states`` is true). Its FSDP2 code itself runs on CPU
processes over gloo, so for the versions in :data:`FSDP2_ON_CPU_VERIFIED` the distributed type
is set here after the ``Accelerator`` is built. FSDP1 and DeepSpeed on CPU are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from qa_core.errors import QAError

# accelerate versions (major.minor) whose FSDP2 path was checked to train on CPU processes once
# the distributed type is set (tests/test_fsdp_cpu.py); other versions get the one-line refusal.
FSDP2_ON_CPU_VERIFIED = ("1.15",)
CPU_FSDP_CONFIG = "accelerate_configs/fsdp2_cpu_2proc.yaml"


class DistributionPlanError(QAError):
    """The launch asked for a distribution this run would not get; the message is one line."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; a container or ``taskset`` can
    give it fewer than the machine has), or the machine's count where there is no mask."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Native precision
# ---------------------------------------------------------------------------------------------


def native_bf16_available() -> bool:
    """True where bf16 matmuls run in hardware: a CUDA GPU that supports them, or an x86 CPU with
    AMX-BF16 / AVX512-BF16 (elsewhere CPU bf16 is emulated and slower than fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_mixed_precision(requested: str | None) -> str | None:
    """``auto`` -> bf16 where it is native (see :func:`native_bf16_available`), else no."""
    if requested == "auto":
        return "bf16" if native_bf16_available() else "no"
    return requested


def accelerator_device_available() -> bool:
    """A CUDA GPU, or another device ``torch.accelerator`` knows (XPU, MPS, ...)."""
    if torch.cuda.is_available():
        return True
    return hasattr(torch, "accelerator") and torch.accelerator.is_available()


# ---------------------------------------------------------------------------------------------
# What the launch asked for
# ---------------------------------------------------------------------------------------------


def _env_true(env, name: str) -> bool:
    return str(env.get(name, "false")).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class RequestedPlan:
    """The sharding ``accelerate launch`` asked for, read from the environment it exports."""

    kind: str = "none"  # none | fsdp | deepspeed
    fsdp_version: int | None = None
    fsdp_strategy: str | None = None  # FSDP1 sharding strategy / FSDP2 reshard_after_forward
    fsdp_sync_module_states: bool = False
    zero_stage: int | None = None
    launched: bool = False  # a process group will exist (torchrun / MPI variables)

    @property
    def label(self) -> str:
        if self.kind == "fsdp" and self.fsdp_version == 2:
            return f"FSDP2 (reshard_after_forward={self.fsdp_strategy})"
        if self.kind == "fsdp":
            return f"FSDP1 ({self.fsdp_strategy})"
        if self.kind == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage}"
        return "no sharding"


def requested_plan(env=None) -> RequestedPlan:
    """What the launcher's environment (``accelerate/utils/launch.py``) asks for."""
    env = os.environ if env is None else env
    launched = env.get("LOCAL_RANK") is not None or int(env.get("WORLD_SIZE", "1") or 1) > 1
    if _env_true(env, "ACCELERATE_USE_DEEPSPEED"):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        return RequestedPlan("deepspeed", zero_stage=int(stage) if stage.isdigit() else None,
                             launched=launched)
    if _env_true(env, "ACCELERATE_USE_FSDP"):
        version = int(env.get("FSDP_VERSION", "1") or 1)
        if version == 2:
            strategy = str(env.get("FSDP_RESHARD_AFTER_FORWARD", "true")).lower()
        else:
            strategy = str(env.get("FSDP_SHARDING_STRATEGY")
                           or env.get("FSDP_RESHARD_AFTER_FORWARD") or "FULL_SHARD").upper()
        return RequestedPlan("fsdp", fsdp_version=version, fsdp_strategy=strategy,
                             fsdp_sync_module_states=_env_true(env, "FSDP_SYNC_MODULE_STATES"),
                             launched=launched)
    return RequestedPlan(launched=launched)


def _accelerate_minor() -> str:
    import accelerate

    return ".".join(accelerate.__version__.split(".")[:2])


def refuse_on_cpu(plan: RequestedPlan, accelerate_minor: str) -> str | None:
    """Why ``plan`` cannot run on a machine without an accelerator (None: it can)."""
    version = f"accelerate {accelerate_minor}"
    ddp = "DDP over gloo on CPU (MULTI_CPU)"
    asked = f"the launch asked for {plan.label}, but this run would get"
    if plan.kind == "deepspeed":
        return (f"{asked} {ddp}: this machine has no GPU and {version} uses DeepSpeed only on "
                f"GPU-family devices; run on GPUs, or launch accelerate_configs/cpu_2proc.yaml "
                f"for CPU processes")
    if plan.kind != "fsdp":
        return None
    if plan.fsdp_version != 2:
        return (f"{asked} {ddp}, or a stop in accelerate's FSDP plugin ('no available devices'): "
                f"this machine has no GPU and {version} runs FSDP1 only on GPU-family devices; "
                f"set fsdp_version: 2 ({CPU_FSDP_CONFIG} trains FSDP2 on CPU) or run on GPUs")
    if accelerate_minor not in FSDP2_ON_CPU_VERIFIED:
        return (f"{asked} {ddp}: {version} assigns FSDP only on GPU-family devices and "
                f"qa_core.hardware sets FSDP2 on CPU only for the accelerate versions it was "
                f"verified with ({', '.join(FSDP2_ON_CPU_VERIFIED)}); run on GPUs")
    if plan.fsdp_sync_module_states:
        return (f"{asked} a stop in accelerate's FSDP plugin ('no available devices'): "
                f"fsdp_sync_module_states: true makes {version} look for a GPU, and FSDP2 does "
                f"not use it; set fsdp_sync_module_states: false (as in {CPU_FSDP_CONFIG})")
    if not plan.launched:
        return (f"{asked} one process without sharding: there is no process group; start it "
                f"with accelerate launch (e.g. --config_file {CPU_FSDP_CONFIG})")
    return None


# ---------------------------------------------------------------------------------------------
# The Accelerator
# ---------------------------------------------------------------------------------------------


def make_accelerator(mixed_precision: str | None, gradient_accumulation_steps: int = 1,
                     log_with: str | None = None, project_dir: str | None = None):
    """The ``Accelerator`` a training run uses, or :class:`DistributionPlanError`.

    CPU-only machines get ``cpu=True`` (every launched worker joins a gloo group); the LR
    schedule is stepped by the loop (``step_scheduler_with_optimizer=False``). When the launch
    asked for FSDP or DeepSpeed and the run would get something else, nothing is built (or
    the process group is torn down again) and the error says what was asked, what would run
    and why. FSDP2 on CPU processes is set up as the module docstring explains.
    """
    from accelerate import Accelerator

    plan = requested_plan()
    has_device = accelerator_device_available()
    fsdp_on_cpu = plan.kind == "fsdp" and not has_device
    if not has_device:
        reason = refuse_on_cpu(plan, _accelerate_minor())
        if reason:
            raise DistributionPlanError(reason)
    plugin = None
    if fsdp_on_cpu:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables, as accelerate does
    accelerator = Accelerator(cpu=not has_device, mixed_precision=mixed_precision,
                              gradient_accumulation_steps=gradient_accumulation_steps,
                              log_with=log_with, project_dir=project_dir,
                              step_scheduler_with_optimizer=False, fsdp_plugin=plugin)
    if fsdp_on_cpu:
        _set_fsdp_on_cpu(accelerator, plugin)
    problem = (outcome_mismatch(plan, str(accelerator.distributed_type.value))
               or precision_mismatch(accelerator))
    if problem:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise DistributionPlanError(problem)
    return accelerator


def end_distributed(accelerator) -> None:
    """The end of a launched run: every rank done, then the process group torn down (nothing
    collective after)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _set_fsdp_on_cpu(accelerator, plugin) -> None:
    """Make a ``MULTI_CPU`` accelerator an FSDP2 one: what ``AcceleratorState.__init__`` does for
    the GPU-family types (distributed type, plugin, its mixed precision), in both shared states."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return  # nothing to lift: outcome_mismatch reports what the run got
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def outcome_mismatch(plan: RequestedPlan, distributed_type: str) -> str | None:
    """Why the built accelerator (its ``distributed_type`` value) is not what ``plan`` asked."""
    wanted = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}.get(plan.kind)
    if wanted is None or distributed_type == wanted:
        return None
    why = ("there is no process group (start it with accelerate launch)" if not plan.launched
           else "accelerate chose it for this launch")
    return f"the launch asked for {plan.label}, but this run would get {distributed_type}: {why}"


def precision_mismatch(accelerator) -> str | None:
    """Why the built accelerator would not train in the mixed precision it reports: accelerate
    keeps ``mixed_precision`` fp16 on a CPU but autocasts only on GPU-family devices (its
    ``native_amp`` stays off, and no GradScaler is made), so the run would be fp32 throughout."""
    from accelerate.utils import DistributedType

    if (accelerator.mixed_precision != "fp16" or accelerator.native_amp
            or accelerator.device.type != "cpu"
            or accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)):
        return None
    return (f"mixed precision fp16 (--mixed_precision or the accelerate config) would not be in "
            f"effect: accelerate {_accelerate_minor()} runs fp16 only on GPU-family devices, so "
            f"this run on the CPU would train in fp32 while reporting fp16; give "
            f"--mixed_precision bf16 or no (auto: bf16 where this machine runs it natively)")


# ---------------------------------------------------------------------------------------------
# What is in effect
# ---------------------------------------------------------------------------------------------


def _sharding(accelerator) -> str:
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        if plugin.fsdp_version == 2:
            return f"FSDP2 (reshard_after_forward={str(plugin.reshard_after_forward).lower()})"
        strategy = plugin.sharding_strategy or plugin.reshard_after_forward
        return f"FSDP1 ({getattr(strategy, 'name', strategy)})"
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    return "none"


def describe_distribution(accelerator) -> dict:
    """Distributed type, world size, machines, device, backend, mixed precision and sharding in
    effect. ``num_machines`` comes from the launcher's ``LOCAL_WORLD_SIZE`` (None when unknown)."""
    world = accelerator.num_processes
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or 0)
    return {
        "distributed_type": str(accelerator.distributed_type.value),
        "world_size": world,
        "num_machines": 1 if world == 1 else (world // local_world if local_world else None),
        "processes_per_machine": local_world or (1 if world == 1 else None),
        "device": accelerator.device.type,
        "backend": getattr(accelerator.state, "backend", None),
        "mixed_precision": accelerator.mixed_precision,
        "sharding": _sharding(accelerator),
    }


def distribution_line(description: dict) -> str:
    """One human line of :func:`describe_distribution`'s dict."""
    d = description
    machines = f" on {d['num_machines']} machine(s)" if d.get("num_machines") else ""
    return (f"distribution: {d['distributed_type']}, {d['world_size']} process(es){machines}, "
            f"{d['device']} ({d['backend'] or 'no process group'}), mixed precision "
            f"{d['mixed_precision']}, sharding {d['sharding']}")
