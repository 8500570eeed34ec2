"""What the machine runs natively, and the Accelerator a run gets (TEMPORARY lead version)."""
from __future__ import annotations

import torch


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


def make_accelerator(mixed_precision: str | None, gradient_accumulation_steps: int,
                     report_to: str, project_dir: str):
    from accelerate import Accelerator

    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.is_available())
    return Accelerator(
        cpu=not has_accelerator,  # CPU-only machines: every launched worker joins a gloo group
        mixed_precision=resolve_mixed_precision(mixed_precision),
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=None if report_to == "none" else report_to,
        project_dir=project_dir,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, at any world size
    )
