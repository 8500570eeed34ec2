"""Checkpoints that resume exactly and load without running code; saved models that are usable.

Layout of ``output_dir/checkpoints/step_N/`` (every file is plain data; nothing is unpickled):

==================  ==========================================================================
file                what it holds, and how it is read back
==================  ==========================================================================
``manifest.json``   written LAST, atomically (temp file, fsync, rename), by the main process
                    once every rank has written its files: ``{"format":
                    "qa-accelerate-checkpoint", "version": 1, "files": {name: {"bytes": n,
                    "sha256": hex}}}`` for every other file, names relative to the folder (a
                    copied folder still verifies). A folder without it was never finished.
                    Read with ``json``; checked FIRST on resume (:func:`verify_checkpoint`).
``run_state.json``  :class:`RunState`: where in the data the run is, and the settings that must
                    match for an exact resume. ``json``, every field type-checked.
``model.safetensors``  the FULL model state dict (unwrapped parameter names, as
                    ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
                    ``full_state_dict=True`` returns it), float tensors as trained; tied
                    weights stored once per name. safetensors: an 8-byte little-endian header
                    length, a JSON header (name -> dtype, shape, byte offsets), then raw
                    tensor bytes; read with ``safetensors.torch.load_file`` (no code).
``optimizer.pt``    the FULL optimizer state dict keyed by parameter name
                    (``get_optimizer_state_dict(..., full_state_dict=True)``): tensors, numbers,
                    strings, parameter groups with parameter names. ``torch.save``'s zip (a
                    ``data.pkl`` record of containers plus one raw-bytes entry per tensor);
                    read with ``torch.load(weights_only=True)``, whose unpickler builds only
                    tensors, numbers, strings and containers and refuses anything else
                    unread.
``scheduler.json``  ``LambdaLR.state_dict()`` (its lambdas are plain functions, stored as
                    ``null``: the schedule itself is rebuilt from the flags). ``json``; the keys
                    must be exactly the live scheduler's.
``scaler.json``     fp16 only: ``GradScaler.state_dict()`` (scale, growth tracker). ``json``.
``rng_state_R.json``  one per rank R: Python ``random``, NumPy's global MT19937, torch's CPU
                    generator and every CUDA device's generator (raw bytes in base64), and
                    ``accelerator.step`` (the gradient-accumulation counter). ``json``.
==================  ==========================================================================

The model and optimizer are written by the main process (DDP replicas are identical); each rank
writes its own RNG file. The folder must be on a filesystem every rank sees (as ``auto`` already
assumes). Checkpoints hold FULL (unsharded) state dicts: under FSDP they are gathered to the main
process through ``torch.distributed.checkpoint.state_dict`` and every rank reads them back
whole; FSDP sharded state (``torch.distributed.checkpoint`` folders) is not written or read.
DeepSpeed keeps its optimizer in its own (pickle-based) format, so checkpoints of DeepSpeed runs
are refused (:class:`CheckpointError`). RNG states of devices other than CPU and CUDA are not
saved.

Resume (:func:`load_checkpoint`) verifies the manifest first: a file missing, truncated, altered,
swapped in from another checkpoint, or not listed at all is refused with its name
(:class:`CheckpointError`, one line) before anything is restored. Then every file is parsed and
checked (types, the RNG states on throwaway generators, the model's and the weight average's
tensor names, shapes and dtypes against the live ones, parameter-group sizes against the live
optimizer, scheduler and GradScaler fields) before anything is applied.
Folders in accelerate's own ``save_state`` layout (pickles such as ``random_states_0.pkl``) are
refused by name.

Saved models: :func:`save_model_checked` writes a ``save_pretrained`` folder only when every
parameter is finite and the evaluation just run on those weights gave finite logits;
:func:`qa_core.modeling.load_qa_model` turns a missing, empty or damaged model folder into one
``ModelFolderError`` naming the folder or file.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qa_core.errors import QAError, first_line
from qa_core.processes import disagreement, on_every_process

RUN_STATE_FILE = "run_state.json"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
AVERAGE_FILE = "averaged_model.safetensors"  # --average_last: the running mean (qa_core.averaging)
RNG_FILE_PATTERN = "rng_state_{rank}.json"
MANIFEST_FORMAT = "qa-accelerate-checkpoint"
MANIFEST_VERSION = 1
# What accelerate's ``save_state`` writes (several of these are pickles it loads unsafely).
LEGACY_FILES = re.compile(r"^(random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl"
                          r"|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|scaler\.pt"
                          r"|sampler(_\d+)?\.bin|pytorch_model\.bin)$")
STEP_FOLDER = re.compile(r"^step_(\d+)$")


class CheckpointError(QAError):
    """A checkpoint that cannot be saved or restored exactly; the message names folder and file."""


class NonFiniteModelError(QAError):
    """Weights that are NaN/inf, or that give NaN/inf logits: not written as a usable model."""


# ---------------------------------------------------------------------------------------------
# Run state
# ---------------------------------------------------------------------------------------------

# The preprocessing cache key covers the data and every setting that shapes the windows.
TRAIN_DATA_KEY_HINT = (" (the training windows differ: another --train_data or --train_split, or "
                       "another --max_length, --doc_stride, --label_answer, --language or "
                       "tokenizer)")


@dataclass
class RunState:
    """What the model, optimizer and RNG states do not say: where in the data the run is."""

    global_step: int = 0            # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0
    batches_in_epoch: int = 0       # per-process batches of ``epoch`` already consumed
    samples_seen: int = 0
    nonfinite_steps: int = 0
    best_f1: float | None = None    # the best --metric_for_best_model so far (SQuAD F1 by default)
    best_step: int | None = None
    planned_total_steps: int | None = None   # --max_train_minutes: the plan made after calibration
    averaged_steps: int = 0         # --average_last: steps in the running mean of the weights
    # The settings that must match for an exact resume.
    world_size: int = 1
    seed: int = 0
    per_device_train_batch_size: int = 0
    gradient_accumulation_steps: int = 1
    train_data_key: str = ""
    average_last: float = 0.0
    optimizer: str = ""             # its class: AdamW whichever kernel (--optim adamw_torch*)
    max_train_examples: int | None = None
    group_by_length: bool = False
    negative_window_fraction: float | None = None   # the share in effect (a default resolved)
    # Settings that shape the updates but not the data order. A resume may change them
    # (lowering the rate after a bad stretch is common practice), but the change is said
    # (changed_settings); older checkpoints do not record them (load takes the resuming run's).
    learning_rate: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    lr_scheduler: str | None = None
    max_grad_norm: float | None = None
    attention_dropout: float | None = None
    hidden_dropout: float | None = None
    mixed_precision: str | None = None   # as in effect ("auto" resolved)
    pad_to: str | None = None
    distributed_type: str | None = None  # DDP ("MULTI_CPU"/"MULTI_GPU") or "FSDP": other sums
    # The questions evaluations score (cache key / --max_eval_examples): best_f1 compares
    # only scores on the same ones.
    eval_data_key: str | None = None
    # A run without a time budget: the optimizer steps that --num_train_epochs / --max_train_steps
    # give, which the learning-rate schedule decays over (a budgeted run's is planned_total_steps).
    scheduled_steps: int | None = None
    # What best_f1 holds (--metric_for_best_model): best_model/ compares only that metric.
    metric_for_best_model: str | None = None

    # The data order (which windows, in which batches) and what the checkpoint holds.
    MUST_MATCH = ("world_size", "seed", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "train_data_key", "average_last", "optimizer",
                  "max_train_examples", "group_by_length", "negative_window_fraction")
    SAID_IF_CHANGED = ("learning_rate", "weight_decay", "warmup_steps", "lr_scheduler",
                       "max_grad_norm", "attention_dropout", "hidden_dropout", "mixed_precision",
                       "pad_to", "distributed_type", "scheduled_steps", "eval_data_key",
                       "metric_for_best_model")
    # the restored optimizer state carries these (per parameter group), whatever the flags say
    KEPT_FROM_CHECKPOINT = ("learning_rate", "weight_decay")

    def save(self, folder: Path) -> None:
        (Path(folder) / RUN_STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path, unrecorded_from: "RunState | None" = None) -> "RunState":
        """Read ``folder/run_state.json``; anything but this class's fields, typed, is refused.
        ``unrecorded_from``: the resuming run's state, whose ``MUST_MATCH`` and
        ``SAID_IF_CHANGED`` values stand in for those a checkpoint written before they were
        recorded lacks (nothing to compare them with)."""
        path = Path(folder) / RUN_STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder} is not a checkpoint of this script: {RUN_STATE_FILE} "
                                  "is missing")
        data = read_json(path)
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise CheckpointError(f"{path}: unknown fields {sorted(unknown)}")
        for name, value in data.items():
            if not _has_type(value, known[name].type):
                raise CheckpointError(f"{path}: field {name!r} is {value!r}, expected "
                                      f"{known[name].type}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    not math.isfinite(value) or value < 0):
                # counts, steps, rates and scores are all finite and >= 0
                raise CheckpointError(f"{path}: field {name!r} is {value!r}, expected a finite "
                                      "number >= 0")
        if unrecorded_from is not None:  # an older checkpoint: what it lacks, it cannot differ in
            data = {**{name: getattr(unrecorded_from, name)
                       for name in cls.MUST_MATCH + cls.SAID_IF_CHANGED}, **data}
        return cls(**data)

    def mismatches(self, current: "RunState") -> list[str]:
        return [f"{name}: checkpoint {getattr(self, name)!r} != now {getattr(current, name)!r}"
                + (TRAIN_DATA_KEY_HINT if name == "train_data_key" else "")
                for name in self.MUST_MATCH if getattr(self, name) != getattr(current, name)]

    def changed_settings(self, current: "RunState") -> list[str]:
        """One line per ``SAID_IF_CHANGED`` setting the resuming run (``current``) gives a
        value other than the checkpoint's run (``self``, as loaded) did."""
        lines = []
        for name in self.SAID_IF_CHANGED:
            before, now = getattr(self, name), getattr(current, name)
            if before == now:
                continue
            if name == "scheduled_steps":
                if before is not None and now is not None:  # None: a time budget plans the run
                    lines.append(f"--num_train_epochs / --max_train_steps give {now} optimizer "
                                 f"steps, the checkpoint's run had {before}: the learning-rate "
                                 "schedule follows the new length, so the resumed run will "
                                 "differ from an uninterrupted one")
            elif name == "distributed_type":
                lines.append(f"the launch distributes as {now!r}, the checkpoint's run as "
                             f"{before!r} (another accelerate config): the resumed run will "
                             "differ from an uninterrupted one")
            elif name == "eval_data_key":
                if before is not None and now is not None:
                    lines.append("the evaluation data (--eval_data, --eval_split or "
                                 "--max_eval_examples) differs from the checkpoint's run: its "
                                 f"best F1 ({self.best_f1}) is not compared with the new scores; "
                                 "best_model/ is chosen afresh")
            elif name == "metric_for_best_model":
                if before is not None and now is not None:
                    lines.append(f"--metric_for_best_model is {now!r}, the checkpoint's run "
                                 f"chose by {before!r}: its best ({self.best_f1}) is not "
                                 "compared with the new metric; best_model/ is chosen afresh")
            elif name in self.KEPT_FROM_CHECKPOINT:
                lines.append(f"--{name} {now!r} is not used: the checkpoint's optimizer state "
                             f"keeps {before!r}")
            else:
                lines.append(f"--{name} is {now!r}, the checkpoint's run had {before!r}: the "
                             "resumed run will differ from an uninterrupted one")
        return lines

    def resumed_with(self, current: "RunState") -> "RunState":
        """This loaded state, recording the settings the resumed run goes on with: the
        checkpoint's for ``KEPT_FROM_CHECKPOINT``, ``current``'s for the other ones."""
        resumed = replace(self, **{name: getattr(current, name) for name in self.SAID_IF_CHANGED
                                   if name not in self.KEPT_FROM_CHECKPOINT})
        if self.eval_data_key is not None and self.eval_data_key != current.eval_data_key:
            resumed = replace(resumed, best_f1=None, best_step=None)  # scores on other questions
        if (self.metric_for_best_model is not None
                and self.metric_for_best_model != current.metric_for_best_model):
            resumed = replace(resumed, best_f1=None, best_step=None)  # another metric's value
        return resumed


def _has_type(value, annotation: str) -> bool:
    """``value`` fits a RunState annotation (``int``, ``str``, ``float | None``, ...)."""
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
             "None": (type(None),)}
    allowed = tuple(t for part in annotation.split("|") for t in kinds[part.strip()])
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def read_json(path: Path):
    """Parse a JSON file of a checkpoint; a file that is not valid JSON is a CheckpointError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column "
                              f"{err.colno}); truncated or damaged") from None


# ---------------------------------------------------------------------------------------------
# Finding, pruning and choosing checkpoints
# ---------------------------------------------------------------------------------------------

def is_legacy_checkpoint(folder: Path) -> bool:
    """A folder in accelerate's ``save_state`` layout (pickles), without this format's manifest."""
    folder = Path(folder)
    return (not (folder / MANIFEST_FILE).is_file() and folder.is_dir()
            and any(LEGACY_FILES.match(p.name) for p in folder.iterdir()))


def step_folders(output_dir: Path) -> list[Path]:
    """Everything named ``step_N`` under ``output_dir/checkpoints``, finished or not, by step."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    named = [(int(m.group(1)), path) for path in root.iterdir()
             if (m := STEP_FOLDER.match(path.name))]
    return [path for _, path in sorted(named)]


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first: those with a manifest, and old accelerate-format ones
    that were finished (so ``auto`` refuses them by name instead of silently starting afresh)."""
    return [folder for folder in step_folders(output_dir) if folder.is_dir() and (
        (folder / MANIFEST_FILE).is_file()
        or ((folder / RUN_STATE_FILE).is_file() and is_legacy_checkpoint(folder)))]


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint, its manifest first: a kill midway leaves an unfinished folder.
    A symbolic link is removed as a link: what it points to (perhaps a checkpoint kept
    elsewhere on purpose) is not this run's to delete."""
    folder = Path(folder)
    if folder.is_symlink():
        folder.unlink()
        return
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def prune_checkpoints(output_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns what was deleted."""
    if not keep_last:
        return []
    doomed = checkpoint_folders(output_dir)[:-keep_last]
    for folder in doomed:
        remove_checkpoint(folder)
    return doomed


# What a finished run writes beside its checkpoints (model, metrics, best model), removed by a
# new run with --overwrite_output_dir.
EARLIER_RESULTS = ("model.safetensors", "config.json", "metrics.json", "predictions.json",
                   "train_config.json", "best_model")


def check_new_run_output(accelerator, output_dir: Path, resume_from_checkpoint: str | None,
                         overwrite: bool) -> None:
    """A new run (no ``--resume_from_checkpoint``) into an ``output_dir`` holding an earlier
    run's checkpoints is refused, unless ``overwrite`` (then they are deleted first): otherwise
    both runs' checkpoints would sit side by side, pruned together, and ``auto`` would later
    resume whichever step is newest. Collective: a refusal on any process (each machine looks
    for itself) is raised on all of them; one that saw no checkpoints went on alone."""
    if resume_from_checkpoint:
        return

    def refuse_or_clear() -> None:
        earlier = step_folders(output_dir)  # unfinished ones too: a killed run's last save
        if earlier and not overwrite:
            raise CheckpointError(
                f"--output_dir {output_dir}: holds an earlier run's checkpoints "
                f"({', '.join(p.name for p in earlier)}): resume it with --resume_from_checkpoint "
                "auto, start afresh with --overwrite_output_dir (deletes them), or give another "
                "--output_dir")
        if not accelerator.is_main_process:
            return
        # the earlier run's results go too: a new run that then failed (or was killed) left
        # them beside its own log, as if they were its own. Its best_model/ goes in any case:
        # this run chooses its own, and one that chose none (evaluation only, or stopped
        # before its first evaluation) left the earlier run's beside a summary with no best
        if not overwrite and (Path(output_dir) / "best_model").exists():
            accelerator.print(f"warning: --output_dir {output_dir}: removing an earlier run's "
                              "best_model/ (this run chooses its own)")
        for name in EARLIER_RESULTS if overwrite else ("best_model",):
            target = Path(output_dir) / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for folder in earlier:  # none unless overwrite
            remove_checkpoint(folder)

    on_every_process(accelerator, refuse_or_clear, CheckpointError)  # the barrier after it too


def resolve_resume(output_dir: Path, resume_from_checkpoint: str | None) -> Path | None:
    """``auto`` -> the newest finished checkpoint in ``output_dir`` (None: a fresh start); a path
    must be a folder. Whether it can be restored is :func:`load_checkpoint`'s to check."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "auto":
        found = checkpoint_folders(output_dir)
        return found[-1] if found else None
    folder = Path(resume_from_checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {folder}: no such folder")
    return folder


def agreed_resume(accelerator, output_dir: Path,
                  resume_from_checkpoint: str | None) -> Path | None:
    """:func:`resolve_resume` on every process (collective): a refusal on any of them is raised
    on all, and they must all have found the same folder. Each machine reads ``output_dir`` for
    itself: one that found none (node-local disks: only rank 0's machine holds the manifests)
    started afresh while the others resumed, and the ranks waited in other collectives for
    ever."""
    folder = on_every_process(accelerator,
                              lambda: resolve_resume(output_dir, resume_from_checkpoint),
                              CheckpointError)
    differs = disagreement(accelerator, "none" if folder is None else str(folder))
    if differs:
        raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint}: the processes "
                              f"found different checkpoints ({differs}): --output_dir must be "
                              "one folder that every machine sees (a shared file system)")
    return folder


# ---------------------------------------------------------------------------------------------
# Manifest: sizes and hashes written last, checked first
# ---------------------------------------------------------------------------------------------

def _digest(path: Path, sync: bool = False) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
        if sync:
            os.fsync(handle.fileno())
    return sha.hexdigest()


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(folder: Path) -> dict:
    """Record every file of ``folder`` (size, sha256) in ``manifest.json``, atomically."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name in (MANIFEST_FILE, MANIFEST_FILE + ".tmp"):
            continue
        if not path.is_file():
            raise CheckpointError(f"{path}: not a file; a checkpoint folder holds only files")
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _digest(path, sync=True)}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": files}
    temporary = folder / (MANIFEST_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MANIFEST_FILE)
    _fsync_folder(folder)
    return manifest


def read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's ``files`` table, its shape checked; refusals name the folder."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not path.is_file():
        if is_legacy_checkpoint(folder):
            legacy = sorted(p.name for p in folder.iterdir() if LEGACY_FILES.match(p.name))
            raise CheckpointError(
                f"{folder}: written in accelerate's save_state layout ({', '.join(legacy[:3])}), "
                "whose pickles can run code when loaded; this version resumes only its own "
                f"format ({MANIFEST_FILE}, no pickles): start a new run")
        raise CheckpointError(f"{path}: missing: the checkpoint was never finished (or this "
                              "is not a checkpoint folder)")
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
            or not isinstance(files, dict)):
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{path}: manifest version {manifest.get('version')!r}, this "
                              f"version reads {MANIFEST_VERSION}")
    for name, entry in files.items():
        if (Path(name).name != name or not isinstance(entry, dict)
                or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str)):
            raise CheckpointError(f"{path}: malformed entry for {name!r}")
    return files


def verify_checkpoint(folder: Path) -> None:
    """Refuse (CheckpointError naming the file) unless ``folder`` holds exactly the files its
    manifest lists, each with the recorded size and sha256."""
    folder = Path(folder)
    files = read_manifest(folder)
    for required in (RUN_STATE_FILE, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE):
        if required not in files:
            raise CheckpointError(f"{folder / MANIFEST_FILE}: does not list {required}")
    present = {p.name for p in folder.iterdir()} - {MANIFEST_FILE}
    for name in sorted(present - set(files)):
        raise CheckpointError(f"{folder / name}: not listed in {MANIFEST_FILE}: not part of this "
                              "checkpoint (remove it to resume)")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST_FILE})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, {MANIFEST_FILE} records "
                                  f"{entry['bytes']}: truncated or replaced")
    for name, entry in files.items():
        if _digest(folder / name) != entry["sha256"]:
            raise CheckpointError(f"{folder / name}: contents differ from {MANIFEST_FILE} "
                                  "(sha256): altered, or copied from another checkpoint")


# ---------------------------------------------------------------------------------------------
# RNG states (one JSON file per rank)
# ---------------------------------------------------------------------------------------------

def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text, path: Path, field: str, expected: int) -> torch.Tensor:
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except ValueError:  # binascii.Error
        raw = None
    if raw is None or len(raw) != expected:
        raise CheckpointError(f"{path}: field {field!r} is not a {expected}-byte generator state")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def rng_state(accelerator_step: int) -> dict:
    """This process's generators as JSON-ready data (see the module docstring)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"],
                  "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]},
        "torch_cpu": _encode_bytes(torch.get_rng_state()),
        "cuda": ([_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
                 if torch.cuda.is_available() else []),
        "accelerator_step": accelerator_step,
    }


def parse_rng_state(data, path: Path) -> dict:
    """Check a :func:`rng_state` record against throwaway generators; returns restorable values."""
    expected = {"python", "numpy", "torch_cpu", "cuda", "accelerator_step"}
    if not isinstance(data, dict) or set(data) != expected:
        raise CheckpointError(f"{path}: expected the fields {sorted(expected)}")
    try:
        version, internal, gauss = data["python"]
        python_state = (version, tuple(internal), gauss)
        random.Random().setstate(python_state)
    except (TypeError, ValueError, OverflowError):
        raise CheckpointError(f"{path}: field 'python' is not a Python random state") from None
    numpy_data = data["numpy"]
    try:
        numpy_state = {"bit_generator": numpy_data["bit_generator"],
                       "state": {"key": np.asarray(numpy_data["key"], dtype=np.uint32),
                                 "pos": numpy_data["pos"]},
                       "has_gauss": numpy_data["has_gauss"], "gauss": numpy_data["gauss"]}
        np.random.RandomState().set_state(numpy_state)
    except (TypeError, ValueError, KeyError, OverflowError):
        raise CheckpointError(f"{path}: field 'numpy' is not a NumPy MT19937 state") from None
    cpu = _decode_bytes(data["torch_cpu"], path, "torch_cpu", torch.get_rng_state().numel())
    cuda_now = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    if not isinstance(data["cuda"], list) or len(data["cuda"]) != len(cuda_now):
        raise CheckpointError(f"{path}: holds {len(data['cuda'])} CUDA generator states, this "
                              f"process sees {len(cuda_now)} CUDA devices")
    cuda = [_decode_bytes(text, path, "cuda", now.numel())
            for text, now in zip(data["cuda"], cuda_now)]
    step = data["accelerator_step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: field 'accelerator_step' is {step!r}")
    return {"python": python_state, "numpy": numpy_state, "torch_cpu": cpu, "cuda": cuda,
            "accelerator_step": step}


def restore_rng_state(parsed: dict) -> None:
    random.setstate(parsed["python"])
    np.random.set_state(parsed["numpy"])
    torch.set_rng_state(parsed["torch_cpu"])
    if parsed["cuda"]:
        torch.cuda.set_rng_state_all(parsed["cuda"])


# ---------------------------------------------------------------------------------------------
# Model and optimizer: full state dicts
# ---------------------------------------------------------------------------------------------

def require_checkpoint_support(accelerator) -> None:
    """Refuse (CheckpointError) a distributed setup whose state this format cannot hold:
    DeepSpeed. Call it before training so such a run stops at once, not at its first checkpoint."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise CheckpointError("checkpoints of DeepSpeed runs are not supported: DeepSpeed keeps "
                              "its optimizer state in its own pickle-based format (use DDP or "
                              "FSDP)")


def _inner_optimizer(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def full_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts keyed by parameter name, on the CPU of the main
    process (empty elsewhere when distributed). Collective under FSDP: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizers=_inner_optimizer(optimizer), options=options)


def _safetensors_ready(state: dict) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; tied weights stored once per name (safetensors refuses shared
    memory)."""
    ready, storages = {}, set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"model state entry {name!r} is a {type(value).__name__}, not a "
                                  "tensor: not supported by this checkpoint format")
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _torch_save(data, path: Path) -> None:
    """``torch.save``, whose failed write (a full device) is a RuntimeError: an OSError here."""
    try:
        torch.save(data, path)
    except RuntimeError as err:
        raise OSError(None, first_line(err), str(path)) from err


def write_on_every_process(accelerator, folder: Path, write: Callable[[], None],
                           unfinished: str = "") -> None:
    """``write()`` on every process, in place of a barrier after it (collective): a failed write
    on any of them (an OSError or a SafetensorError: a full device, a folder its machine does
    not see) stops all of them with one CheckpointError naming the process and the file
    (``unfinished`` added: what is left). A process that failed alone left the others in the
    next barrier: a ``Connection closed by peer`` traceback there on gloo, a wait on NCCL."""
    from safetensors import SafetensorError

    def guarded() -> None:
        try:
            write()
        except SafetensorError as err:  # safetensors' own word for a failed write
            raise CheckpointError(f"{folder}: not written: process {accelerator.process_index} "
                                  f"could not write there ({first_line(err)}){unfinished}"
                                  ) from None
        except OSError as err:
            code = errno.errorcode.get(err.errno or 0, type(err).__name__)
            shared = (": --output_dir must be one folder that every machine sees (a shared "
                      "file system)" if err.errno == errno.ENOENT
                      and not accelerator.is_main_process else "")
            raise CheckpointError(f"{folder}: not written: process {accelerator.process_index} "
                                  f"could not write {err.filename or folder} ({code}: "
                                  f"{err.strerror or err}){shared}{unfinished}") from None

    on_every_process(accelerator, guarded, CheckpointError)


def save_checkpoint(accelerator, model, optimizer, scheduler, state: RunState,
                    folder: Path, average=None) -> None:
    """Write a checkpoint to ``folder`` (replacing one there); collective: every rank calls it.
    ``average``: the run's :class:`~qa_core.averaging.WeightAverage`, saved once it holds steps.

    The manifest is written last, after every rank wrote its files: until then the folder is
    an unfinished checkpoint that ``auto`` skips. A write that fails on any rank stops every
    rank (:func:`write_on_every_process`)."""
    from safetensors.torch import save_file

    require_checkpoint_support(accelerator)
    folder = Path(folder)
    main = accelerator.is_main_process
    unfinished = f"; the checkpoint is unfinished (no {MANIFEST_FILE}): auto skips it"

    def fresh_folder() -> None:
        if main:
            if folder.exists():
                remove_checkpoint(folder)
            folder.mkdir(parents=True)

    write_on_every_process(accelerator, folder, fresh_folder, unfinished)
    model_state, optimizer_state = full_state_dicts(model, optimizer)

    def files() -> None:
        _write_json(folder / RNG_FILE_PATTERN.format(rank=accelerator.process_index),
                    rng_state(accelerator.step))
        if not main:
            return
        save_file(_safetensors_ready(model_state), str(folder / MODEL_FILE),
                  metadata={"format": "pt"})
        _torch_save(optimizer_state, folder / OPTIMIZER_FILE)
        _write_json(folder / SCHEDULER_FILE, scheduler.state_dict())
        if accelerator.scaler is not None:
            _write_json(folder / SCALER_FILE, accelerator.scaler.state_dict())
        if average is not None and average.count:
            save_file(_safetensors_ready(average.state_dict()), str(folder / AVERAGE_FILE),
                      metadata={"format": "pt"})
        state.save(folder)

    write_on_every_process(accelerator, folder, files, unfinished)
    write_on_every_process(accelerator, folder, lambda: write_manifest(folder) if main else None,
                           unfinished)


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _names(names: list[str], kind: str = "tensor", limit: int = 3) -> str:
    """``tensor 'a'`` / ``tensors 'a', 'b', 'c' and 4 more``, for refusals."""
    shown = ", ".join(repr(name) for name in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{kind}{'s' if len(names) > 1 else ''} {shown}{more}"


def live_model_state(model) -> dict:
    """The live model's state dict under the names checkpoints use (unwrapped parameter names),
    sharded tensors left sharded (their shapes are the full ones): nothing is gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))


def check_tensors(path: Path, state: dict, live: dict, what: str = "this run's model") -> None:
    """Refuse unless ``state`` holds exactly ``live``'s tensors, each of its shape and dtype
    (loading would leave a missing one as it was, and cast another dtype silently); the
    refusal names the first offending tensor and counts the others."""
    missing = [name for name in live if name not in state]
    unexpected = [name for name in state if name not in live]
    if missing or unexpected:
        reasons = ([f"lacks {_names(missing)}"] if missing else []) + (
            [f"holds {_names(unexpected)} that {what} does not have"] if unexpected else [])
        raise CheckpointError(f"{path}: does not fit {what}: " + "; ".join(reasons))
    for index, attribute in enumerate(("shape", "dtype")):
        differ = [name for name in live if _layout(live[name])[index] is not None
                  and _layout(state[name])[index] != _layout(live[name])[index]]
        if differ:
            name, others = differ[0], len(differ) - 1
            raise CheckpointError(
                f"{path}: does not fit {what}: tensor {name!r} has {attribute} "
                f"{_layout(state[name])[index]}, {what} has {_layout(live[name])[index]}"
                + (f" ({others} more tensors differ in {attribute})" if others else ""))


def _layout(tensor) -> tuple[list[int] | None, torch.dtype | None]:
    """(shape, dtype) of a tensor, a DTensor (its full shape) or a sharded tensor (None where
    it does not say)."""
    shape = getattr(tensor, "shape", None)
    return (list(shape) if shape is not None else None, getattr(tensor, "dtype", None))


def read_optimizer_state(path: Path) -> dict:
    """``torch.load(weights_only=True)``: a pickle that would build anything but tensors and
    containers is refused, not run. Its contents: :func:`check_optimizer_state`."""
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what it refused to build, not torch's advice
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
        raise CheckpointError(f"{path}: not a weights-only torch file, refused without running "
                              f"it ({found.group(0) if found else first_line(err)})") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable torch file ({first_line(err)})") from None
    groups = data.get("param_groups") if isinstance(data, dict) else None
    if (not isinstance(groups, list) or not isinstance(data.get("state"), dict)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise CheckpointError(f"{path}: not an optimizer state (state, param_groups)")
    return data


# wrappers whose names torch's full state dicts leave out (FSDP1, activation checkpointing)
_WRAPPER_PART = re.compile(r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def live_group_names(accelerator, model, optimizer) -> tuple[list[set[str]] | None, str | None]:
    """The live optimizer's parameter groups as sets of parameter names (None when a parameter
    has no name in the unwrapped model, as FSDP1's flat parameters), and the name of the
    model's input word embeddings (None when unknown)."""
    unwrapped = accelerator.unwrap_model(model)
    names = {id(param): _WRAPPER_PART.sub(r"\1", name)
             for name, param in unwrapped.named_parameters(remove_duplicate=False)}
    try:
        embeddings = names.get(id(unwrapped.get_input_embeddings().weight))
    except (AttributeError, NotImplementedError):
        embeddings = None
    groups = [{names.get(id(param)) for param in group["params"]}
              for group in _inner_optimizer(optimizer).param_groups]
    return (None if any(None in group for group in groups) else groups), embeddings


def check_optimizer_state(path: Path, data: dict, optimizer, model_state: dict,
                          live_names: tuple[list[set[str]] | None, str | None]) -> None:
    """Refuse an optimizer state that cannot resume this run exactly: parameter groups of other
    parameters than the live optimizer's (the message names them, and the freezing flag that
    makes the difference), group settings of other types, per-parameter state tensors of other
    shapes or dtypes than their parameters (``model_state``: the checked model weights)."""
    saved_groups = [group["params"] for group in data["param_groups"]]
    for names in saved_groups:
        for name in names:
            if not isinstance(name, str) or name not in model_state:
                raise CheckpointError(f"{path}: parameter groups name {name!r}, which is not a "
                                      f"tensor of {MODEL_FILE}")
    live_groups, embeddings = live_names
    saved = [len(names) for names in saved_groups]
    live = [len(group["params"]) for group in _inner_optimizer(optimizer).param_groups]
    if saved != live or (live_groups is not None
                         and [set(names) for names in saved_groups] != live_groups):
        raise CheckpointError(f"{path}: parameter groups of sizes {saved}, this run's optimizer "
                              f"has {live}" + _trained_change(saved_groups, live_groups,
                                                              embeddings))
    _check_group_settings(path, data["param_groups"], _inner_optimizer(optimizer).param_groups)
    _check_parameter_states(path, data["state"], saved_groups, model_state)


def _trained_change(saved_groups: list[list[str]], live_groups: list[set[str]] | None,
                    embeddings: str | None) -> str:
    """What the checkpoint's run trained that this one does not (or the reverse), and the flag
    that does that."""
    if live_groups is None:
        return " (a different model, --freeze_encoder or --freeze_word_embeddings?)"
    saved, live = set().union(*map(set, saved_groups)), set().union(*live_groups)
    fixed_now, trained_now = sorted(saved - live), sorted(live - saved)
    if not fixed_now and not trained_now:
        return ": the same parameters, grouped otherwise (another grouping of weight decay?)"
    said = ([f"the checkpoint's run trained {_names(fixed_now, 'parameter')}, which this run "
             "keeps fixed"] if fixed_now else []) + (
        [f"this run trains {_names(trained_now, 'parameter')}, which the checkpoint's run kept "
         "fixed"] if trained_now else [])
    changed = set(fixed_now) | set(trained_now)
    flag = ("--freeze_word_embeddings" if changed == {embeddings} else "--freeze_encoder"
            if not any(name.startswith("qa_outputs") for name in changed) else None)
    return ": " + "; ".join(said) + (f" ({flag} differs from the checkpoint's run)" if flag
                                     else "")


def _finite_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_group_settings(path: Path, saved_groups: list[dict], live_groups: list[dict]) -> None:
    """Each group setting the live optimizer holds as a number (or numbers: betas) must be
    there, finite (a rate >= 0); flags must be true, false or null."""
    for index, (saved, live) in enumerate(zip(saved_groups, live_groups)):
        for key, now in live.items():
            value, where = saved.get(key), f"{path}: param_groups[{index}][{key!r}]"
            if _finite_number(now):
                if key not in saved or not _finite_number(value) or (
                        key in ("lr", "initial_lr") and value < 0):
                    raise CheckpointError(f"{where} is {value!r}, expected a finite number"
                                          + (" >= 0" if key in ("lr", "initial_lr") else ""))
            elif isinstance(now, tuple) and all(map(_finite_number, now)):
                if (not isinstance(value, (tuple, list)) or len(value) != len(now)
                        or not all(map(_finite_number, value))):
                    raise CheckpointError(f"{where} is {value!r}, expected {len(now)} finite "
                                          "numbers")
            elif (now is None or isinstance(now, bool)) and not (value is None
                                                                  or isinstance(value, bool)):
                raise CheckpointError(f"{where} is {value!r}, expected true, false or null")


def _check_parameter_states(path: Path, states: dict, saved_groups: list[list[str]],
                            model_state: dict) -> None:
    """Per-parameter state: for parameters of the groups, holding the same fields as the other
    parameters of as many dimensions, each tensor of its parameter's shape and dtype (a scalar,
    such as ``step``, finite and >= 0)."""
    grouped, fields_seen = {name for names in saved_groups for name in names}, {}
    for name, entry in states.items():
        if name not in grouped or not isinstance(entry, dict):
            raise CheckpointError(f"{path}: state[{name!r}] is not the state of a parameter of "
                                  "its parameter groups")
        param = model_state[name]
        first, keys = fields_seen.setdefault(param.dim(), (name, sorted(entry)))
        if sorted(entry) != keys:
            raise CheckpointError(f"{path}: state[{name!r}] holds {sorted(entry)}, "
                                  f"state[{first!r}] holds {keys}")
        for key, value in entry.items():
            problem = _state_value_problem(key, value, param)
            if problem:
                raise CheckpointError(f"{path}: state[{name!r}][{key!r}] {problem}")


def _state_value_problem(key: str, value, param: torch.Tensor) -> str | None:
    """Why one per-parameter state value cannot be this parameter's (None when it can)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isfinite(value) and value >= 0 else f"is {value!r}, expected a " \
            "finite number >= 0"
    if not isinstance(value, torch.Tensor):
        return None
    shape = list(param.shape)  # Adafactor keeps factored second moments of matrices
    shape = {"exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}.get(
        key, shape)
    if list(value.shape) != shape:
        return f"has shape {list(value.shape)}, its parameter's is {shape}"
    if value.dtype != param.dtype:
        return f"has dtype {value.dtype}, its parameter's is {param.dtype}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        # the next update would carry it into the weights (the non-finite guard skips such
        # steps, so a run never saves one: the file was changed)
        return "holds NaN or inf"
    return None


def _read_keyed_json(path: Path, live: dict, what: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or set(data) != set(live):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a {what} state (fields {found}, expected "
                              f"{sorted(live)})")
    return data


@dataclass
class CheckedCheckpoint:
    """Every file of a checkpoint, read and checked against the live run: ready to restore."""

    saved: RunState
    rng: dict
    scheduler: dict
    scaler: dict | None
    model: dict
    optimizer: dict
    average: dict | None


def read_checkpoint(accelerator, model, optimizer, scheduler, folder: Path,
                    expected: RunState | None = None, average=None,
                    batches_per_epoch: int | None = None) -> CheckedCheckpoint:
    """Verify ``folder`` (:func:`verify_checkpoint`), then read and check every file against
    the live run; restores nothing. Arguments as :func:`load_checkpoint`'s."""
    folder = Path(folder)
    verify_checkpoint(folder)
    saved = RunState.load(folder, unrecorded_from=expected)
    problems = saved.mismatches(expected) if expected is not None else []
    if problems:
        raise CheckpointError(f"cannot resume exactly from {folder}: " + "; ".join(problems))
    if batches_per_epoch is not None:
        check_run_position(folder / RUN_STATE_FILE, saved, batches_per_epoch)
    rng_path = folder / RNG_FILE_PATTERN.format(rank=accelerator.process_index)
    if not rng_path.is_file():
        raise CheckpointError(f"{rng_path}: missing: the checkpoint holds no RNG state for "
                              f"process {accelerator.process_index}")
    rng = parse_rng_state(read_json(rng_path), rng_path)
    if rng["accelerator_step"] != saved.batches_in_epoch:
        # accelerate counts this epoch's micro-batches (0 after an epoch's end, as the run state
        # then says): another count syncs gradients at other micro-batches, silently
        raise CheckpointError(f"{rng_path}: accelerator_step is {rng['accelerator_step']}, but "
                              f"{RUN_STATE_FILE} says {saved.batches_in_epoch} batches of this "
                              "epoch were taken")
    scheduler_state = _read_keyed_json(folder / SCHEDULER_FILE, scheduler.state_dict(),
                                       "LR scheduler")
    scaler, scaler_path = accelerator.scaler, folder / SCALER_FILE
    if (scaler is not None) != scaler_path.is_file():
        raise CheckpointError(
            f"{scaler_path}: {'missing' if scaler is not None else 'present'}, but this run "
            f"{'uses' if scaler is not None else 'does not use'} an fp16 GradScaler "
            "(--mixed_precision differs from the checkpoint's)")
    scaler_state = (_read_keyed_json(scaler_path, scaler.state_dict(), "GradScaler")
                    if scaler is not None else None)
    model_state = read_model_state(folder / MODEL_FILE)
    check_tensors(folder / MODEL_FILE, model_state, live_model_state(model))
    optimizer_state = read_optimizer_state(folder / OPTIMIZER_FILE)
    check_optimizer_state(folder / OPTIMIZER_FILE, optimizer_state, optimizer, model_state,
                          live_group_names(accelerator, model, optimizer))
    check_scheduler_state(folder / SCHEDULER_FILE, scheduler_state, scheduler.state_dict(),
                          saved.global_step, optimizer_state["param_groups"])
    return CheckedCheckpoint(saved, rng, scheduler_state, scaler_state, model_state,
                             optimizer_state, _read_average(folder, saved, average))


def load_checkpoint(accelerator, model, optimizer, scheduler, folder: Path,
                    expected: RunState | None = None, average=None,
                    batches_per_epoch: int | None = None) -> RunState:
    """Verify ``folder`` (:func:`verify_checkpoint`), read and check every file, then restore the
    model, optimizer, scheduler, GradScaler, this rank's RNG states, ``accelerator.step`` and
    the weight average (``average``, a :class:`~qa_core.averaging.WeightAverage`).

    ``expected``: this run's settings; a checkpoint whose ``RunState.MUST_MATCH`` fields differ is
    refused. ``batches_per_epoch``: this run's (per process); with it, the run state's position
    (epoch, batches_in_epoch, global_step) must be one the loop can have saved. Any refusal is a
    :class:`CheckpointError` raised before anything is restored."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_state_dict,
    )

    require_checkpoint_support(accelerator)
    folder = Path(folder)
    checked = on_every_process(  # a file only one rank reads (its RNG state) stops every rank
        accelerator, lambda: read_checkpoint(accelerator, model, optimizer, scheduler, folder,
                                             expected, average, batches_per_epoch),
        CheckpointError)
    options = StateDictOptions(full_state_dict=True)
    try:
        if checked.optimizer["state"]:
            set_state_dict(model, optimizers=_inner_optimizer(optimizer),
                           model_state_dict=checked.model, optim_state_dict=checked.optimizer,
                           options=options)
        else:  # no per-parameter state (plain SGD), which torch's loader cannot place
            set_model_state_dict(model, checked.model, options=options)
            restore_param_group_settings(_inner_optimizer(optimizer),
                                         checked.optimizer["param_groups"])
    except (RuntimeError, KeyError, ValueError) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__  # torch's reasons
        raise CheckpointError(f"{folder}: {MODEL_FILE} / {OPTIMIZER_FILE} do not fit this run's "
                              f"model ({reason})") from None  # follow a first line that names none
    scheduler.load_state_dict(checked.scheduler)
    if checked.scaler is not None:
        accelerator.scaler.load_state_dict(checked.scaler)
    if checked.average is not None:
        average.load_state_dict(checked.average)
    restore_rng_state(checked.rng)
    accelerator.step = checked.rng["accelerator_step"]
    return checked.saved


def check_run_position(path: Path, saved: RunState, batches_per_epoch: int) -> None:
    """Refuse a run state whose position the loop cannot have saved (it would resume, and run
    to another length). The loop counts ``batches_in_epoch`` per micro-batch and steps once per
    ``gradient_accumulation_steps`` of them, and once more for an epoch's last partial
    accumulation (accelerate syncs at the end of the data); it saves after an optimizer step
    (``batches_in_epoch`` a multiple of the accumulation, or the whole epoch) or at an epoch's
    end (``epoch`` advanced, ``batches_in_epoch`` 0). So ``global_step`` = ``epoch`` x
    ceil(batches per epoch / accumulation) + ceil(``batches_in_epoch`` / accumulation)."""
    batches, accumulation = saved.batches_in_epoch, saved.gradient_accumulation_steps
    if batches > batches_per_epoch:
        raise CheckpointError(f"{path}: batches_in_epoch is {batches}, but an epoch of this run "
                              f"has {batches_per_epoch}")
    if accumulation < 1:
        raise CheckpointError(f"{path}: gradient_accumulation_steps is {accumulation}, expected "
                              "1 or more")
    setting = (f"(gradient_accumulation_steps {accumulation}, {batches_per_epoch} batches per "
               "epoch)")
    if batches % accumulation and batches != batches_per_epoch:
        raise CheckpointError(f"{path}: batches_in_epoch {batches} is not at an optimizer step "
                              f"{setting}")
    steps = (saved.epoch * math.ceil(batches_per_epoch / accumulation)
             + math.ceil(batches / accumulation))
    if saved.global_step != steps:
        raise CheckpointError(
            f"{path}: global_step {saved.global_step} does not agree with epoch {saved.epoch} "
            f"and batches_in_epoch {batches}, which give global_step {steps} {setting}")


def check_scheduler_state(path: Path, data: dict, live: dict, global_step: int,
                          optimizer_groups: list[dict]) -> None:
    """Refuse a ``LambdaLR`` state that would not continue the schedule exactly: one base and
    last rate per parameter group, finite and >= 0, the base rates those the optimizer state
    started from (``initial_lr``), ``last_epoch`` the run state's ``global_step`` (the schedule
    steps once per optimizer step, skipped ones included), other fields of the live types."""
    groups = len(optimizer_groups)
    for key in ("base_lrs", "_last_lr"):
        values = data.get(key)
        if key in live and (not isinstance(values, list) or len(values) != groups or not all(
                _finite_number(value) and value >= 0 for value in values)):
            raise CheckpointError(f"{path}: field {key!r} is {values!r}, expected {groups} "
                                  "finite numbers >= 0, one per parameter group")
    step = data.get("last_epoch")
    if step != global_step or isinstance(step, bool):
        raise CheckpointError(f"{path}: field 'last_epoch' is {step!r}, but {RUN_STATE_FILE} "
                              f"has global_step {global_step} (the schedule steps once per "
                              "optimizer step)")
    for index, (base, group) in enumerate(zip(data.get("base_lrs", []), optimizer_groups)):
        if "initial_lr" in group and base != group["initial_lr"]:
            raise CheckpointError(f"{path}: base_lrs[{index}] is {base!r}, but {OPTIMIZER_FILE} "
                                  f"has initial_lr {group['initial_lr']!r} in that group")
    for key, now in live.items():
        value = data[key]
        if (isinstance(now, bool) != isinstance(value, bool)
                or (isinstance(now, int) and not isinstance(value, int))
                or (isinstance(now, list) and (not isinstance(value, list)
                                               or len(value) != len(now)))):
            raise CheckpointError(f"{path}: field {key!r} is {value!r}, expected "
                                  f"{type(now).__name__}" + (f" of {len(now)} items"
                                                             if isinstance(now, list) else ""))


def restore_param_group_settings(optimizer, saved_groups: list[dict]) -> None:
    """Each parameter group's settings (rate, weight decay, ...) from a saved full optimizer
    state, whose ``params`` name parameters rather than number them (groups match in sizes:
    :func:`read_optimizer_state`)."""
    for live, saved in zip(optimizer.param_groups, saved_groups):
        live.update({key: value for key, value in saved.items() if key != "params"})


def _read_average(folder: Path, saved: RunState, average) -> dict[str, torch.Tensor] | None:
    """The weight average's state, checked against ``saved.averaged_steps`` and the live
    average's fields; None when the checkpoint was written before the averaged tail began."""
    path = folder / AVERAGE_FILE
    if average is None or not saved.averaged_steps:
        if path.is_file():  # same average_last (MUST_MATCH), so the run state must count steps
            raise CheckpointError(f"{path}: present, but {RUN_STATE_FILE} counts no averaged "
                                  "steps")
        return None
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: {RUN_STATE_FILE} counts "
                              f"{saved.averaged_steps} averaged steps")
    state = read_model_state(path)
    check_tensors(path, state, average.state_dict(), "this run's weight average")
    if int(state["n_averaged"]) != saved.averaged_steps:
        raise CheckpointError(f"{path}: holds {int(state['n_averaged'])} steps, "
                              f"{RUN_STATE_FILE} counts {saved.averaged_steps}")
    return state


# ---------------------------------------------------------------------------------------------
# Saved models: finite weights only; model folders that load or say why not
# ---------------------------------------------------------------------------------------------

def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity."""
    return [name for name, param in model.named_parameters()
            if not bool(torch.isfinite(param.detach()).all())]


def model_problems(accelerator, model, metrics: dict | None = None) -> list[str]:
    """Why these weights are not a usable model ([] when they are): non-finite parameters on any
    process, or non-finite logits in the evaluation ``metrics`` just computed with them.
    Collective (one small all-reduce): every rank calls it and gets the same answer."""
    local = nonfinite_parameters(accelerator.unwrap_model(model))
    count = torch.tensor(len(local), device=accelerator.device)
    total = int(accelerator.reduce(count, reduction="sum").item())
    problems = []
    if total:
        examples = f" (e.g. {', '.join(local[:3])})" if local else ""
        problems.append(f"{len(local) or total} parameter tensors hold NaN or inf{examples}")
    bad_features = (metrics or {}).get("nonfinite_features", 0)
    if bad_features:
        problems.append(f"the evaluation's logits were NaN or inf for {bad_features} of "
                        f"{metrics.get('features', '?')} features")
    return problems


def save_model_checked(accelerator, model, folder: Path, metrics: dict | None = None) -> None:
    """``save_pretrained`` the model to ``folder`` unless :func:`model_problems` finds a reason
    not to: then :class:`NonFiniteModelError`, on every rank, and nothing is written."""
    problems = model_problems(accelerator, model, metrics)
    if problems:
        raise NonFiniteModelError(f"{folder}: not written: " + "; ".join(problems))
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: outside the write
    write_on_every_process(accelerator, folder, lambda: accelerator.unwrap_model(
        model).save_pretrained(folder, is_main_process=accelerator.is_main_process,
                               save_function=accelerator.save, state_dict=state_dict))
