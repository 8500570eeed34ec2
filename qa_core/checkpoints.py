"""Checkpoints that resume exactly and load without running code.

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
``run_state.json``  :class:`RunState`: where in the data the run is (step, epoch, batches into
                    the epoch, samples, best score, budget plan, averaged steps) and
                    ``settings``: every flag (``TrainSettings.as_flat_dict()``) with the facts
                    the run resolved (world size, distribution, data keys, precision,
                    negative-window share, optimizer class, scheduled steps). ``json``.
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
                    ``null``: the schedule itself is rebuilt from the flags). ``json``.
``scaler.json``     fp16 only: ``GradScaler.state_dict()`` (scale, growth tracker). ``json``.
``averaged_model.safetensors``  ``--average_last`` once the mean holds steps: the running mean
                    (:class:`~qa_core.averaging.WeightAverage`). safetensors.
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
swapped in from another checkpoint or unlisted is refused by name (:class:`CheckpointError`, one
line). A file edited with the manifest rewritten to match is trusted, and loaded as data only.
Then the settings ``qa_core.settings.RESUME_MUST_MATCH`` names are compared with the
checkpoint's and every file is read before anything is restored; a state that does not fit the
live model is torch's ``load_state_dict`` refusal, in one line naming the file.
"""
from __future__ import annotations

import base64
import errno
import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qa_core.errors import QAError, first_line
from qa_core.files import entry_problem, manifest_entry, write_atomic
from qa_core.files import read_json as _read_json
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
STEP_FOLDER = re.compile(r"^step_(\d+)$")


class CheckpointError(QAError):
    """A checkpoint that cannot be saved or restored exactly; the message names folder and file."""


read_json = partial(_read_json, error=CheckpointError)  # a checkpoint's JSON file


@dataclass
class RunState:
    """Where in the data the run is, and ``settings``: what it runs under (the flags and the
    facts resolved at run time, compared by name on resume: ``qa_core.settings``'s
    ``RESUME_*`` lists)."""

    global_step: int = 0            # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0
    batches_in_epoch: int = 0       # per-process batches of ``epoch`` already consumed
    samples_seen: int = 0
    nonfinite_steps: int = 0
    best_f1: float | None = None    # the best --metric_for_best_model so far (SQuAD F1 by default)
    best_step: int | None = None
    planned_total_steps: int | None = None   # --max_train_minutes: the plan made after calibration
    averaged_steps: int = 0         # --average_last: steps in the running mean of the weights
    settings: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        (Path(folder) / RUN_STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        """Read ``folder/run_state.json``. A checkpoint written before the settings were kept
        apart holds them beside the position: they are read as its ``settings``."""
        path = Path(folder) / RUN_STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing: {folder} is not a checkpoint of this script")
        data = read_json(path)
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
        position = {f.name for f in fields(cls)} - {"settings"}
        settings = data.get("settings", {k: v for k, v in data.items() if k not in position})
        return cls(**{k: v for k, v in data.items() if k in position}, settings=settings)

    def mismatches(self, current: "RunState") -> list[str]:
        """The ``RESUME_MUST_MATCH`` settings ``current`` gives otherwise than this checkpoint's
        run (one a checkpoint does not record is not compared)."""
        from qa_core.settings import RESUME_HINTS, RESUME_MUST_MATCH

        before, now = self.settings, current.settings
        return [f"{name}: checkpoint {before[name]!r} != now {now[name]!r}"
                + RESUME_HINTS.get(name, "")
                for name in RESUME_MUST_MATCH
                if name in before and name in now and before[name] != now[name]]

    def changed_settings(self, current: "RunState") -> list[str]:
        """One line per other setting the resuming run (``current``) gives a value other than
        the checkpoint's run (``self``) did, except ``RESUME_NOT_COMPARED``."""
        from qa_core.settings import RESUME_MUST_MATCH, RESUME_NOT_COMPARED

        lines, before = [], self.settings
        for name, now in current.settings.items():
            was = before.get(name, now)
            if was == now or name in RESUME_MUST_MATCH + RESUME_NOT_COMPARED or (
                    name == "scheduled_steps" and None in (was, now)):  # None: a budget plans
                continue
            lines.append(_change_said(name, was, now, self.best_f1))
        return lines

    def resumed_with(self, current: "RunState") -> "RunState":
        """This loaded position under the resumed run's settings (``RESUME_KEPT``: the
        checkpoint's); the best score is dropped when it scored other questions or another
        metric."""
        from qa_core.settings import RESUME_KEPT

        before = self.settings
        settings = {**current.settings, **{k: before[k] for k in RESUME_KEPT if k in before}}
        resumed = replace(self, settings=settings)
        if any(name in before and before[name] != settings.get(name)
               for name in ("eval_data_key", "metric_for_best_model")):
            resumed = replace(resumed, best_f1=None, best_step=None)
        return resumed


def _change_said(name: str, was, now, best) -> str:
    from qa_core.settings import RESUME_KEPT

    if name in RESUME_KEPT:
        return f"--{name} {now!r} is not used: the checkpoint's optimizer state keeps {was!r}"
    afresh = f"({best}) is not compared with the new"
    return {
        "scheduled_steps": f"--num_train_epochs / --max_train_steps give {now} optimizer steps, "
                           f"the checkpoint's run had {was}: the learning-rate schedule follows "
                           "the new length, so the resumed run will differ from an uninterrupted "
                           "one",
        "distributed_type": f"the launch distributes as {now!r}, the checkpoint's run as {was!r} "
                            "(another accelerate config): the resumed run will differ from an "
                            "uninterrupted one",
        "eval_data_key": "the evaluation data (--eval_data, --eval_split or --max_eval_examples) "
                         f"differs from the checkpoint's run: its best F1 {afresh} "
                         "scores; best_model/ is chosen afresh",
        "metric_for_best_model": f"--metric_for_best_model is {now!r}, the checkpoint's run chose "
                                 f"by {was!r}: its best {afresh} metric; best_model/ is chosen "
                                 "afresh",
    }.get(name, f"--{name} is {now!r}, the checkpoint's run had {was!r}: the resumed run will "
                "differ from an uninterrupted one")


# ---------------------------------------------------------------------------------------------
# Finding, pruning and choosing checkpoints
# ---------------------------------------------------------------------------------------------

def step_folders(output_dir: Path) -> list[Path]:
    """Everything named ``step_N`` under ``output_dir/checkpoints``, finished or not, by step."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    named = [(int(m.group(1)), path) for path in root.iterdir()
             if (m := STEP_FOLDER.match(path.name))]
    return [path for _, path in sorted(named)]


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Finished checkpoints (those with a manifest), oldest first."""
    return [folder for folder in step_folders(output_dir) if (folder / MANIFEST_FILE).is_file()]


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
    on all, and they must all have found the same folder (each machine reads ``output_dir`` for
    itself: one that found none would start afresh while the others resume, and hang)."""
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

def write_manifest(folder: Path) -> dict:
    """Record every file of ``folder`` (size, sha256) in ``manifest.json``, atomically."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST_FILE:
            continue
        if not path.is_file():
            raise CheckpointError(f"{path}: not a file; a checkpoint folder holds only files")
        files[path.name] = manifest_entry(path, sync=True)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": files}
    write_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1))
    return manifest


def verify_checkpoint(folder: Path) -> None:
    """Refuse (CheckpointError naming the file) unless ``folder`` holds exactly the files its
    manifest lists, each with the recorded size and sha256."""
    folder, path = Path(folder), Path(folder) / MANIFEST_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: the checkpoint was never finished (or this "
                              "is not a checkpoint folder)")
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{path}: manifest version {manifest.get('version')!r}, this "
                              f"version reads {MANIFEST_VERSION}")
    for name in sorted({p.name for p in folder.iterdir()} - {MANIFEST_FILE} - set(files)):
        raise CheckpointError(f"{folder / name}: not listed in {MANIFEST_FILE}: not part of this "
                              "checkpoint (remove it to resume)")
    for name in (RUN_STATE_FILE, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, *files):
        if name not in files or Path(name).name != name or not isinstance(files[name], dict):
            raise CheckpointError(f"{path}: does not list {name!r} as a file of this folder")
        problem = entry_problem(folder / name, files[name], MANIFEST_FILE)
        if problem:
            raise CheckpointError(f"{folder / name}: {problem}")


# ---------------------------------------------------------------------------------------------
# RNG states (one JSON file per rank)
# ---------------------------------------------------------------------------------------------

def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


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


def read_rng_state(path: Path) -> dict:
    """A :func:`rng_state` record; one of another count of CUDA devices (a run resumed on
    another machine) is refused: its generators would not continue."""
    data = read_json(path)
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(data["cuda"]) != devices:
        raise CheckpointError(f"{path}: holds {len(data['cuda'])} CUDA generator states, this "
                              f"process sees {devices} CUDA devices")
    return data


def restore_rng_state(data: dict) -> None:
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = data["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"], "has_gauss": numpy["has_gauss"],
                         "gauss": numpy["gauss"],
                         "state": {"key": np.asarray(numpy["key"], dtype=np.uint32),
                                   "pos": numpy["pos"]}})
    torch.set_rng_state(_decode_bytes(data["torch_cpu"]))
    if data["cuda"]:
        torch.cuda.set_rng_state_all([_decode_bytes(text) for text in data["cuda"]])


# ---------------------------------------------------------------------------------------------
# Model and optimizer: full state dicts
# ---------------------------------------------------------------------------------------------

def require_checkpoint_support(accelerator) -> None:
    """Refuse DeepSpeed, whose state this format cannot hold (called before training too, so
    such a run stops at once)."""
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
    (``unfinished`` added: what is left), rather than leaving the others in the next barrier."""
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


def read_optimizer_state(path: Path) -> dict:
    """``torch.load(weights_only=True)``: a pickle that would build anything but tensors and
    containers is refused, not run."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what it refused to build, not torch's advice
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
        raise CheckpointError(f"{path}: not a weights-only torch file, refused without running "
                              f"it ({found.group(0) if found else first_line(err)})") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable torch file ({first_line(err)})") from None


@dataclass
class CheckpointFiles:
    """Every file of a checkpoint, read: ready to restore."""

    saved: RunState
    rng: dict
    scheduler: dict
    scaler: dict | None
    model: dict
    optimizer: dict
    average: dict | None


def read_checkpoint(accelerator, folder: Path, expected: RunState | None = None,
                    average=None) -> CheckpointFiles:
    """Verify ``folder`` (:func:`verify_checkpoint`), compare its settings with ``expected``'s
    (``RunState.mismatches``), then read every file; restores nothing."""
    folder = Path(folder)
    verify_checkpoint(folder)
    saved = RunState.load(folder)
    problems = saved.mismatches(expected) if expected is not None else []
    if problems:
        raise CheckpointError(f"cannot resume exactly from {folder}: " + "; ".join(problems))
    scaler_path = folder / SCALER_FILE
    if (accelerator.scaler is not None) != scaler_path.is_file():
        on = accelerator.scaler is not None
        raise CheckpointError(
            f"{scaler_path}: {'missing' if on else 'present'}, but this run "
            f"{'uses' if on else 'does not use'} an fp16 GradScaler (--mixed_precision differs "
            "from the checkpoint's)")
    average_path = folder / AVERAGE_FILE
    return CheckpointFiles(
        saved, read_rng_state(folder / RNG_FILE_PATTERN.format(rank=accelerator.process_index)),
        read_json(folder / SCHEDULER_FILE),
        read_json(scaler_path) if scaler_path.is_file() else None,
        read_model_state(folder / MODEL_FILE), read_optimizer_state(folder / OPTIMIZER_FILE),
        read_model_state(average_path) if average is not None and average_path.is_file()
        else None)


def _restoring(path: Path, restore: Callable[[], None]) -> None:
    """``restore()``; torch's refusal of a state that does not fit (missing or unexpected keys,
    other shapes) is one CheckpointError naming ``path``."""
    try:
        restore()
    except (RuntimeError, KeyError, ValueError) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path}: does not fit this run ({reason})") from None


def load_checkpoint(accelerator, model, optimizer, scheduler, folder: Path,
                    expected: RunState | None = None, average=None) -> RunState:
    """Verify and read ``folder`` (:func:`read_checkpoint`, on every process: a file only one
    rank reads, its RNG state, stops every rank), then restore the model, optimizer, scheduler,
    GradScaler, this rank's RNG states, ``accelerator.step`` and the weight average
    (``average``, a :class:`~qa_core.averaging.WeightAverage`). ``expected``: this run's state;
    a checkpoint whose ``RESUME_MUST_MATCH`` settings differ is refused."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)  # DeepSpeed is refused before (TrainingRun.resume)
    files = on_every_process(accelerator, lambda: read_checkpoint(
        accelerator, folder, expected, average), CheckpointError)
    options, inner = StateDictOptions(full_state_dict=True), _inner_optimizer(optimizer)
    _restoring(folder / MODEL_FILE,
               lambda: set_model_state_dict(model, files.model, options=options))
    if files.optimizer["state"]:
        _restoring(folder / OPTIMIZER_FILE, lambda: set_optimizer_state_dict(
            model, inner, files.optimizer, options=options))
    else:  # no per-parameter state (plain SGD), which torch's loader cannot place
        for live, saved in zip(inner.param_groups, files.optimizer["param_groups"]):
            live.update({key: value for key, value in saved.items() if key != "params"})
    scheduler.load_state_dict(files.scheduler)
    if files.scaler is not None:
        accelerator.scaler.load_state_dict(files.scaler)
    if files.average is not None:
        _restoring(folder / AVERAGE_FILE, lambda: average.load_state_dict(files.average))
    restore_rng_state(files.rng)
    accelerator.step = files.rng["accelerator_step"]
    return files.saved
