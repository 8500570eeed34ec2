"""Pieces of the training loop that are worth testing on their own.

Batches come straight from numpy buffers (no per-row Python dicts), the epoch order is a pure
function of (seed, epoch) so a resumed run sees the same batches, and the run state that
``save_state`` does not cover lives in a small JSON file beside each checkpoint.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from qa_core.features import offsets_to_numpy

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
# Data: packed features, epoch order, batches
# ---------------------------------------------------------------------------------------------

# Length grouping sorts the shuffled order inside groups of this many global batches: little
# padding, yet batches still differ from epoch to epoch.
LENGTH_GROUP_BATCHES = 50


def pad_multiple(mixed_precision: str | None) -> int | None:
    """Batch widths round up to a multiple of 8 under fp16/bf16 (shapes the matrix units like)."""
    return 8 if mixed_precision in ("fp16", "bf16") else None


def padded_width(longest: int, multiple: int | None) -> int:
    """A batch's width: its longest window, rounded up to ``multiple`` when given."""
    return -(-longest // multiple) * multiple if multiple else longest


def _flat_list_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """list<int> column -> (values, row_offsets) numpy arrays."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


class PackedFeatures(torch.utils.data.Dataset):
    """The ``features`` split held as flat numpy buffers; ``__getitems__`` returns a padded batch.

    ``pad_to`` is ``"longest"`` (dynamic, rounded up to ``pad_to_multiple_of``) or
    ``"max_length"`` (the tutorial's fixed padding, for benchmarks).
    """

    def __init__(self, table: pa.Table, pad_token_id: int, pad_to: str = "longest",
                 pad_to_multiple_of: int | None = None, max_length: int | None = None,
                 with_offsets: bool = False) -> None:
        self.columns = {}
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            if name in table.column_names:
                self.columns[name] = _flat_list_column(table.column(name))
        self.lengths = np.diff(self.columns["input_ids"][1]).astype(np.int64)
        self.start_positions = table.column("start_positions").to_numpy().astype(np.int64)
        self.end_positions = table.column("end_positions").to_numpy().astype(np.int64)
        self.has_answer = table.column("has_answer").to_numpy(zero_copy_only=False).astype(bool)
        self.example_ids = table.column("example_id").to_pylist()
        self.offsets = offsets_to_numpy(table.column("offset_mapping"), pad_to=max_length) if with_offsets else None
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length or int(self.lengths.max(initial=1))
        if pad_to not in ("longest", "max_length"):
            raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def batch_width(self, indices: np.ndarray) -> int:
        if self.pad_to == "max_length":
            return self.max_length
        return padded_width(int(self.lengths[indices].max()), self.pad_to_multiple_of)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        width = self.batch_width(indices)
        batch = {}
        for name, (values, row_offsets) in self.columns.items():
            fill = self.pad_token_id if name == "input_ids" else 0
            out = np.full((len(indices), width), fill, dtype=np.int64)
            for row, index in enumerate(indices):
                start, end = row_offsets[index], row_offsets[index + 1]
                out[row, :end - start] = values[start:end]
            batch[name] = torch.from_numpy(out)
        batch["start_positions"] = torch.from_numpy(self.start_positions[indices])
        batch["end_positions"] = torch.from_numpy(self.end_positions[indices])
        batch["feature_index"] = torch.from_numpy(indices)
        return batch


def identity_collate(batch):
    """``PackedFeatures.__getitems__`` already returns a collated batch."""
    return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def epoch_order(has_answer: np.ndarray, negative_fraction: float, seed: int, epoch: int,
                lengths: np.ndarray | None = None, group_size: int | None = None) -> np.ndarray:
    """Feature order for one epoch, a pure function of its arguments (so resume replays it).

    Windows without the answer are subsampled to ``negative_fraction`` (drawn anew each epoch);
    with ``lengths`` and ``group_size`` the shuffled order is sorted by length inside groups of
    ``group_size`` features, so batches carry little padding but still differ every epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    positives = np.flatnonzero(has_answer)
    negatives = np.flatnonzero(~has_answer)
    if negative_fraction < 1.0:
        keep = int(round(negative_fraction * len(negatives)))
        negatives = rng.choice(negatives, size=keep, replace=False)
    order = rng.permutation(np.concatenate([positives, negatives]))
    if lengths is not None and group_size:
        groups = [g[np.argsort(-lengths[g], kind="stable")] for g in np.array_split(order, max(1, -(-len(order) // group_size)))]
        order = np.concatenate(groups) if groups else order
    return order


class EpochSampler(torch.utils.data.Sampler):
    """Yields :func:`epoch_order` for the epoch set by ``set_epoch``; its length never changes."""

    def __init__(self, has_answer: np.ndarray, negative_fraction: float, seed: int,
                 lengths: np.ndarray | None = None, group_size: int | None = None) -> None:
        self.has_answer = has_answer
        self.negative_fraction = negative_fraction
        self.seed = seed
        self.lengths = lengths
        self.group_size = group_size
        self.epoch = 0
        negatives = int((~has_answer).sum())
        kept = negatives if negative_fraction >= 1.0 else int(round(negative_fraction * negatives))
        self._length = int(has_answer.sum()) + kept

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.has_answer, self.negative_fraction, self.seed, self.epoch,
                            self.lengths, self.group_size)
        return iter(order.tolist())


def training_loader(dataset: PackedFeatures, batch_size: int, num_processes: int, negative_fraction: float,
                    seed: int, group_by_length: bool) -> tuple[EpochSampler, torch.utils.data.DataLoader]:
    """The training order and its batches, as ``train_accelerate.py`` trains (and the benches measure).

    Answer-less windows are subsampled to ``negative_fraction`` each epoch; with
    ``group_by_length`` the order is length-sorted inside groups of
    ``LENGTH_GROUP_BATCHES`` global batches.  The loader draws from its own seeded generator,
    which keeps the global RNG (dropout) untouched.
    """
    sampler = EpochSampler(dataset.has_answer, negative_fraction, seed,
                           dataset.lengths if group_by_length else None,
                           LENGTH_GROUP_BATCHES * batch_size * num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         collate_fn=identity_collate,
                                         generator=torch.Generator().manual_seed(seed))
    return sampler, loader


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
