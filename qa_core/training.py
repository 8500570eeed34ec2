"""Pieces of the training loop that are worth testing on their own.

Optimizer groups, the LR schedule and precision choice; the run state that ``save_state``
does not cover (a small JSON file beside each checkpoint) and the non-finite guard. Batches,
the epoch order and the sampler live in :mod:`qa_core.batching`.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RUN_STATE_FILE = "run_state.json"
NO_DECAY_PATTERN = re.compile(r"(bias|LayerNorm\.weight|layer_norm\.weight|norm\.weight)$")


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------

def optimizer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (frozen params left out)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if NO_DECAY_PATTERN.search(name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def freeze_encoder(model: torch.nn.Module) -> int:
    """Train only the QA head (``qa_outputs``); returns the number of trainable parameters left."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("qa_outputs")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")


def set_attention_dropout(model_config, probability: float) -> list[str]:
    """Override the attention dropout of a transformers config (the field name varies by model).

    On CPU, attention dropout keeps PyTorch's scaled-dot-product attention off its fused kernel:
    training MiniLM ran about 2x faster here with it at 0.
    """
    changed = [name for name in ATTENTION_DROPOUT_FIELDS if hasattr(model_config, name)]
    if not changed:
        raise ValueError(f"{type(model_config).__name__} has no attention dropout field "
                         f"({', '.join(ATTENTION_DROPOUT_FIELDS)})")
    for name in changed:
        setattr(model_config, name, probability)
    return changed


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


def optimizer_steps_per_epoch(batches_per_process: int, gradient_accumulation_steps: int) -> int:
    """The last partial accumulation of an epoch still steps (accelerate syncs at the dataloader's end)."""
    return math.ceil(batches_per_process / gradient_accumulation_steps)


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    """LR multiplier per *optimizer* step: linear warm-up then linear/cosine/constant decay to 0."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1) if warmup_steps else 1.0
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown lr schedule {kind!r} (linear, cosine, constant)")
    return multiplier


# ---------------------------------------------------------------------------------------------
# Run state, checkpoints, non-finite guard
# ---------------------------------------------------------------------------------------------

@dataclass
class RunState:
    """What ``accelerator.save_state`` does not know: where in the data the run is."""

    global_step: int = 0            # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0
    batches_in_epoch: int = 0       # per-process batches of ``epoch`` already consumed
    samples_seen: int = 0
    nonfinite_steps: int = 0
    best_f1: float | None = None
    best_step: int | None = None
    # The settings that must match for an exact resume.
    world_size: int = 1
    seed: int = 0
    per_device_train_batch_size: int = 0
    gradient_accumulation_steps: int = 1
    train_data_key: str = ""

    MUST_MATCH = ("world_size", "seed", "per_device_train_batch_size", "gradient_accumulation_steps",
                  "train_data_key")

    def save(self, folder: Path) -> None:
        (folder / RUN_STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        path = folder / RUN_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a checkpoint of this script: {RUN_STATE_FILE} is missing")
        data = json.loads(path.read_text())
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"{path}: unknown fields {sorted(unknown)}")
        return cls(**data)

    def mismatches(self, current: "RunState") -> list[str]:
        return [f"{name}: checkpoint {getattr(self, name)!r} != now {getattr(current, name)!r}"
                for name in self.MUST_MATCH if getattr(self, name) != getattr(current, name)]


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Finished checkpoints (those with a run state), oldest first."""
    root = output_dir / "checkpoints"
    found = [p for p in root.glob("step_*") if (p / RUN_STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def prune_checkpoints(output_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns what was deleted."""
    if not keep_last:
        return []
    doomed = checkpoint_folders(output_dir)[:-keep_last]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def resolve_resume(output_dir: Path, resume_from_checkpoint: str | None) -> Path | None:
    """``auto`` -> newest checkpoint in ``output_dir`` (or None); a path must be a checkpoint."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "auto":
        found = checkpoint_folders(output_dir)
        return found[-1] if found else None
    folder = Path(resume_from_checkpoint)
    if not (folder / RUN_STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {folder}: not a checkpoint ({RUN_STATE_FILE} missing)")
    return folder


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Counts optimizer steps skipped for non-finite losses or gradients; too many in a row stop the run."""

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def update(self, finite: bool, step: int) -> bool:
        """Record one optimizer step; returns True when it was non-finite (and so skipped)."""
        if finite:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} optimizer steps in a row had non-finite losses or gradients "
                f"(at optimizer step {step}); stopping. "
                "Lower the learning rate, use bf16 instead of fp16, or check the data."
            )
        return True
