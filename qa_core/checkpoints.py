"""Checkpoints (TEMPORARY lead version; replaced by the pickle-free module at merge)."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from qa_core.errors import QAError

RUN_STATE_FILE = "run_state.json"


class CheckpointError(QAError):
    pass


def _register(accelerator, scheduler) -> None:
    if all(obj is not scheduler for obj in accelerator._custom_objects):
        accelerator.register_for_checkpointing(scheduler)


def save_checkpoint(accelerator, model, optimizer, scheduler, state, folder: Path) -> None:
    _register(accelerator, scheduler)
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        state.save(folder)


def load_checkpoint(accelerator, model, optimizer, scheduler, folder: Path):
    saved = RunState.load(folder)
    _register(accelerator, scheduler)
    accelerator.load_state(str(folder))
    return saved


def save_model(accelerator, model, folder: Path) -> None:
    accelerator.unwrap_model(model).save_pretrained(
        folder, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(model))


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
    planned_total_steps: int | None = None   # --max_train_minutes: the plan made after calibration
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
            raise CheckpointError(f"{folder} is not a checkpoint of this script: {RUN_STATE_FILE} is missing")
        data = json.loads(path.read_text())
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise CheckpointError(f"{path}: unknown fields {sorted(unknown)}")
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
        raise CheckpointError(f"--resume_from_checkpoint {folder}: not a checkpoint ({RUN_STATE_FILE} missing)")
    return folder


