"""qa_core.checkpoints: the checkpoint format (no pickles), its manifest, exact restore, refusals
that name the file, and saved models that are finite.

Checkpoints here come from a real ``Accelerator(cpu=True)`` run of the tiny random-init BERT
(dropout on, so the torch RNG matters) trained for a few steps on random token ids.
"""
from __future__ import annotations

import json
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from qa_core.checkpoints import (
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RUN_STATE_FILE,
    SCHEDULER_FILE,
    CheckpointError,
    NonFiniteModelError,
    RunState,
    checkpoint_folders,
    load_checkpoint,
    model_problems,
    nonfinite_parameters,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    save_model_checked,
    verify_checkpoint,
    write_manifest,
)
from qa_core.modeling import ModelFolderError, check_model_folder, load_qa_model
from qa_core.optim import lr_lambda, optimizer_param_groups
from tiny_models import reset_accelerate_state

CHECKPOINT_FILES = [MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, "rng_state_0.json", RUN_STATE_FILE,
                    SCHEDULER_FILE]


@dataclass
class Run:
    accelerator: object
    model: torch.nn.Module
    optimizer: object
    scheduler: torch.optim.lr_scheduler.LambdaLR


def make_run(model_folder: str) -> Run:
    """A fresh accelerate run: prepared model and AdamW, a linear schedule."""
    from accelerate import Accelerator
    from transformers import AutoModelForQuestionAnswering

    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    model = AutoModelForQuestionAnswering.from_pretrained(model_folder)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, 0.01), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lr_lambda("linear", 2, 20))
    return Run(accelerator, model, optimizer, scheduler)


def train_steps(run: Run, steps: int, data_seed: int) -> None:
    """Optimizer steps on random token ids; dropout draws from the global torch RNG."""
    generator = torch.Generator().manual_seed(data_seed)
    run.model.train()
    for _ in range(steps):
        ids = torch.randint(5, 1000, (4, 24), generator=generator)
        positions = torch.randint(0, 24, (4,), generator=generator)
        loss = run.model(input_ids=ids, start_positions=positions, end_positions=positions).loss
        run.accelerator.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()


def weights(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.accelerator.unwrap_model(run.model)
            .state_dict().items()}


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    """Checkpoints of one run at steps 2 and 3, and what the run did right after step 2."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    run = make_run(tiny_model)
    train_steps(run, 2, data_seed=1)
    save_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler,
                    RunState(global_step=2, seed=3), root / "step_2")
    after = draws()
    train_steps(run, 2, data_seed=2)
    continued = weights(run)
    save_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler,
                    RunState(global_step=4, seed=3), root / "step_4")
    reset_accelerate_state()
    return {"step_2": root / "step_2", "step_4": root / "step_4", "after": after,
            "continued": continued}


@pytest.fixture
def fresh(tiny_model):
    """A run in another state than the checkpoints (other data, other RNG)."""
    torch.manual_seed(99)
    run = make_run(tiny_model)
    train_steps(run, 1, data_seed=7)
    yield run
    reset_accelerate_state()


def copy_of(saved, tmp_path, name: str = "step_2") -> Path:
    folder = tmp_path / "copied" / name
    shutil.copytree(saved[name], folder)
    return folder


def load(run: Run, folder: Path, expected: RunState | None = None, **options) -> RunState:
    return load_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler, folder,
                           expected, **options)


# ---------------------------------------------------------------------------------------------
# Format and exact restore
# ---------------------------------------------------------------------------------------------

def test_checkpoint_files_are_plain_data(saved):
    folder = saved["step_2"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == sorted(set(CHECKPOINT_FILES) - {MANIFEST_FILE})
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (folder / name).stat().st_size
    for name in (SCHEDULER_FILE, RUN_STATE_FILE, "rng_state_0.json"):
        json.loads((folder / name).read_text())
    rng = json.loads((folder / "rng_state_0.json").read_text())
    assert set(rng) == {"python", "numpy", "torch_cpu", "cuda", "accelerator_step"}
    from safetensors.torch import load_file

    assert "qa_outputs.weight" in load_file(str(folder / MODEL_FILE))  # unwrapped names
    optimizer = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    assert "qa_outputs.weight" in optimizer["state"]  # keyed by parameter name


def test_load_restores_the_exact_state(saved, fresh):
    state = load(fresh, saved["step_2"], expected=RunState(seed=3))
    assert state.global_step == 2
    assert fresh.scheduler.last_epoch == 2
    assert draws() == saved["after"], "python, numpy and torch RNG states restored"
    train_steps(fresh, 2, data_seed=2)
    continued = weights(fresh)
    assert continued.keys() == saved["continued"].keys()
    different = [k for k in continued if not torch.equal(continued[k], saved["continued"][k])]
    assert not different, f"the resumed run diverged: {different[:5]}"


def test_a_changed_setting_is_refused_before_restoring(saved, fresh):
    before = weights(fresh)
    with pytest.raises(CheckpointError, match="cannot resume exactly from .*seed: checkpoint 3 != "
                                              "now 4"):
        load(fresh, saved["step_2"], expected=RunState(seed=4))
    assert all(torch.equal(before[k], v) for k, v in weights(fresh).items())


def test_save_replaces_an_existing_folder(saved, fresh, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "stale.txt").write_text("left over")
    save_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler,
                    RunState(global_step=1), folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    verify_checkpoint(folder)
    assert RunState.load(folder).global_step == 1



def _full_device(monkeypatch, name: str, folder: Path) -> str:
    """Make the write of ``name`` fail as each writer says a full device; what it then says."""
    import errno

    from safetensors import SafetensorError

    from qa_core import checkpoints

    if name == "model.safetensors":
        def refuse(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        monkeypatch.setattr("safetensors.torch.save_file", refuse)
        return "there (Error while serializing: I/O error: No space left on device (os error 28))"
    if name == "optimizer.pt":
        def refuse(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 "
                               "vs 534")
        monkeypatch.setattr(torch, "save", refuse)
        return (f"{folder / name} (OSError: [enforce fail at inline_container.cc:672] . "
                "unexpected pos 576 vs 534)")
    write_json = checkpoints._write_json

    def refuse_one(path: Path, data) -> None:
        if path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_json(path, data)
    monkeypatch.setattr(checkpoints, "_write_json", refuse_one)
    return f"{folder / name} (ENOSPC: No space left on device)"


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.json"])
def test_a_full_device_while_saving_is_one_line_and_leaves_an_unfinished_folder(
        fresh, tmp_path, monkeypatch, name):
    """Was the writer's own traceback (SafetensorError, torch's RuntimeError, OSError) on the
    main process, with the other ranks left in the barrier after the writes; now a
    CheckpointError that every rank raises (``write_on_every_process``)."""
    folder = tmp_path / "checkpoints" / "step_1"
    said = _full_device(monkeypatch, name, folder)
    with pytest.raises(CheckpointError) as refused:
        save_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler,
                        RunState(global_step=1), folder)
    assert str(refused.value) == (f"{folder}: not written: process 0 could not write {said}; "
                                  "the checkpoint is unfinished (no manifest.json): auto "
                                  "skips it")
    assert not (folder / "manifest.json").exists() and checkpoint_folders(tmp_path) == []

# ---------------------------------------------------------------------------------------------
# Damage: every file truncated or swapped in from another checkpoint is refused by name
# ---------------------------------------------------------------------------------------------

def assert_refused(run: Run, folder: Path, names: str, **options) -> str:
    before = weights(run)
    scheduler_before = run.scheduler.state_dict()
    with pytest.raises(CheckpointError) as refusal:
        load(run, folder, **options)
    message = str(refusal.value)
    assert "\n" not in message and str(folder / names) in message, message
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before), "nothing restored in part"
    assert run.scheduler.state_dict() == scheduler_before
    return message


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_file_is_refused_by_name(saved, fresh, tmp_path, name):
    folder = copy_of(saved, tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:len(data) // 2])
    message = assert_refused(fresh, folder, name)
    if name != MANIFEST_FILE:
        assert f"{len(data) // 2} bytes, {MANIFEST_FILE} records {len(data)}" in message


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_file_from_another_checkpoint_is_refused_by_name(saved, fresh, tmp_path, name):
    folder = copy_of(saved, tmp_path)
    other = saved["step_4"] / name
    assert other.read_bytes() != (folder / name).read_bytes()
    shutil.copyfile(other, folder / name)
    if name == MANIFEST_FILE:  # the other manifest: the first file that differs is named
        with pytest.raises(CheckpointError, match=f"{folder}/.*(differ|records)"):
            load(fresh, folder)
    else:
        assert_refused(fresh, folder, name)


@pytest.mark.parametrize("name", sorted(set(CHECKPOINT_FILES) - {MANIFEST_FILE}))
def test_a_missing_file_is_refused_by_name(saved, fresh, tmp_path, name):
    folder = copy_of(saved, tmp_path)
    (folder / name).unlink()
    assert f"missing (listed in {MANIFEST_FILE})" in assert_refused(fresh, folder, name)


def test_an_unlisted_file_is_refused_by_name(saved, fresh, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "rng_state_1.json").write_text("{}")
    assert f"not listed in {MANIFEST_FILE}" in assert_refused(fresh, folder, "rng_state_1.json")


def test_a_file_altered_in_place_is_refused_by_name(saved, fresh, tmp_path):
    folder = copy_of(saved, tmp_path)
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 1  # same size, one bit of one weight
    (folder / MODEL_FILE).write_bytes(bytes(data))
    assert "sha256" in assert_refused(fresh, folder, MODEL_FILE)


def test_an_unfinished_checkpoint_is_refused_and_skipped_by_auto(saved, fresh, tmp_path):
    output_dir = tmp_path / "out"
    old = output_dir / "checkpoints" / "step_2"
    shutil.copytree(saved["step_2"], old)
    unfinished = output_dir / "checkpoints" / "step_4"
    shutil.copytree(saved["step_4"], unfinished)
    (unfinished / MANIFEST_FILE).unlink()
    assert "never finished" in assert_refused(fresh, unfinished, MANIFEST_FILE)
    assert checkpoint_folders(output_dir) == [old]
    assert resolve_resume(output_dir, "auto") == old


def test_auto_refuses_a_damaged_newest_checkpoint_without_falling_back(saved, fresh, tmp_path):
    output_dir = tmp_path / "out"
    for name in ("step_2", "step_4"):
        shutil.copytree(saved[name], output_dir / "checkpoints" / name)
    newest = output_dir / "checkpoints" / "step_4"
    (newest / "rng_state_0.json").write_text("{")
    assert resolve_resume(output_dir, "auto") == newest
    assert_refused(fresh, newest, "rng_state_0.json")


@pytest.mark.parametrize("flag, expected", [
    ("freeze_encoder", "parameter groups of sizes [16, 23], this run's optimizer has [1, 1]: the "
                       "checkpoint's run trained parameters 'bert.embeddings.LayerNorm.bias', "
                       "'bert.embeddings.LayerNorm.weight', 'bert.embeddings.position_embeddings"
                       ".weight' and 34 more, which this run keeps fixed"),
    # the message named only --freeze_encoder, whichever flag had changed
    ("freeze_word_embeddings", "parameter groups of sizes [16, 23], this run's optimizer has "
                               "[15, 23]: the checkpoint's run trained parameter "
                               "'bert.embeddings.word_embeddings.weight', which this run keeps "
                               "fixed (--freeze_word_embeddings differs from the checkpoint's "
                               "run)"),
])
def test_an_optimizer_of_other_parameter_groups_is_refused_naming_the_flag(saved, tiny_model,
                                                                           flag, expected):
    from qa_core import modeling

    run = make_run(tiny_model)
    getattr(modeling, flag)(run.accelerator.unwrap_model(run.model))
    frozen = torch.optim.AdamW(optimizer_param_groups(run.model, 0.01), lr=1e-3)
    run.optimizer = run.accelerator.prepare(frozen)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(frozen, lr_lambda("linear", 2, 20))
    message = assert_refused(run, saved["step_2"], OPTIMIZER_FILE)
    assert expected in message and message.endswith(f"(--{flag} differs from the checkpoint's "
                                                    "run)"), message
    reset_accelerate_state()


def rewrite(folder: Path, name: str, edit) -> None:
    """``edit`` the contents of ``folder/name`` (tensors of a safetensors file, the data of a
    torch or JSON file), write them back and the manifest to match (a manifest is no
    signature: the checks after it must catch what it cannot)."""
    from safetensors.torch import load_file, save_file

    path = folder / name
    if name.endswith(".safetensors"):
        data = load_file(str(path))
        edit(data)
        save_file(data, str(path), metadata={"format": "pt"})
    elif name.endswith(".pt"):
        data = torch.load(path, weights_only=True)
        edit(data)
        torch.save(data, path)
    else:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    write_manifest(folder)


def refused_after_edit(saved, run: Run, tmp_path: Path, name: str, edit) -> tuple[Path, str]:
    """A copy of the step-2 checkpoint with ``name`` edited: refused naming it; returns the
    copy and the message."""
    folder = copy_of(saved, tmp_path)
    rewrite(folder, name, edit)
    return folder, assert_refused(run, folder, name)


MODEL_DAMAGE_CASES = {
    # resumed with rc 0 before: the missing tensor kept the resuming model's value, other dtypes
    # were cast silently
    "missing": (lambda t: t.pop("qa_outputs.bias"),
                "does not fit this run's model: lacks tensor 'qa_outputs.bias'"),
    "int32": (lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()}),
              "tensor 'bert.embeddings.word_embeddings.weight' has dtype torch.int32, this "
              "run's model has torch.float32 ("),
    "bf16": (lambda t: t.update({"qa_outputs.weight": t["qa_outputs.weight"].bfloat16()}),
             "tensor 'qa_outputs.weight' has dtype torch.bfloat16, this run's model has "
             "torch.float32"),
    # refused before, but as "(Error(s) in loading state_dict for BertForQuestionAnswering:)"
    "extra": (lambda t: t.update({"qa_outputs.extra": torch.zeros(2)}),
              "holds tensor 'qa_outputs.extra' that this run's model does not have"),
    "shape": (lambda t: t.update({"qa_outputs.bias": torch.zeros(3)}),
              "tensor 'qa_outputs.bias' has shape [3], this run's model has [2]"),
}


def test_a_checkpoint_of_a_wider_model_is_refused_naming_the_tensor(tiny_model, tmp_path):
    """A 48-hidden model's checkpoint on a 32-hidden run: same parameter count per group, so
    only the weights tell; refused before with an empty reason."""
    from tiny_models import make_tiny_qa_model

    wide = make_run(make_tiny_qa_model(tmp_path / "wide", hidden_size=48))
    save_checkpoint(wide.accelerator, wide.model, wide.optimizer, wide.scheduler,
                    RunState(global_step=0), tmp_path / "ck")
    message = assert_refused(make_run(tiny_model), tmp_path / "ck", MODEL_FILE)
    assert ("tensor 'bert.embeddings.word_embeddings.weight' has shape [30522, 48], this run's "
            "model has [30522, 32] (") in message, message
    reset_accelerate_state()


def test_an_averaged_model_of_another_dtype_is_refused_naming_the_tensor(fresh, tmp_path):
    """Only the names and shapes were compared: an int32 average resumed."""
    from qa_core.averaging import WeightAverage

    average = WeightAverage(fresh.accelerator.unwrap_model(fresh.model), 0.5)
    average.fix_tail(1, 0, resumed=False)
    average.update(fresh.accelerator.unwrap_model(fresh.model), step=1)
    folder = tmp_path / "ck"
    save_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler,
                    RunState(global_step=1, averaged_steps=1, average_last=0.5), folder, average)
    rewrite(folder, "averaged_model.safetensors", lambda t: t.update(
        {k: v.to(torch.int32) for k, v in t.items() if v.is_floating_point()}))
    live = WeightAverage(fresh.accelerator.unwrap_model(fresh.model), 0.5)
    with pytest.raises(CheckpointError) as refusal:
        load_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler, folder,
                        average=live)
    assert str(refusal.value).startswith(
        f"{folder / 'averaged_model.safetensors'}: does not fit this run's weight average: "
        "tensor 'module.bert.embeddings.word_embeddings.weight' has dtype torch.int32, this "
        "run's weight average has torch.float32 ("), str(refusal.value)


def set_group(data: dict, key: str, value) -> None:
    data["param_groups"][0][key] = value


OPTIMIZER_DAMAGE_CASES = {
    # a RuntimeError traceback at the first step after resuming, before
    "exp_avg_shape": (
        lambda d: d["state"]["qa_outputs.weight"].update(exp_avg=torch.zeros(2, 31)),
        "state['qa_outputs.weight']['exp_avg'] has shape [2, 31], its parameter's is [2, 32]"),
    "exp_avg_dtype": (
        lambda d: d["state"]["qa_outputs.weight"].update(
            exp_avg=d["state"]["qa_outputs.weight"]["exp_avg"].double()),
        "state['qa_outputs.weight']['exp_avg'] has dtype torch.float64, its parameter's is "
        "torch.float32"),
    "exp_avg_missing": (
        lambda d: d["state"]["qa_outputs.weight"].pop("exp_avg"),
        "state['qa_outputs.weight'] holds ['exp_avg_sq', 'step'], state["),
    # resumed silently, and the next update carried the NaN into the weights
    "exp_avg_nan": (
        lambda d: d["state"]["qa_outputs.weight"]["exp_avg"].view(-1).__setitem__(3, float("nan")),
        "state['qa_outputs.weight']['exp_avg'] holds NaN or inf"),
    "step_nan": (
        lambda d: d["state"]["qa_outputs.bias"].update(step=torch.tensor(float("nan"))),
        "state['qa_outputs.bias']['step'] is nan, expected a finite number >= 0"),
    "unknown_parameter": (
        lambda d: d["state"].update(nowhere={"step": torch.tensor(1.0)}),
        "state['nowhere'] is not the state of a parameter of its parameter groups"),
    # a TypeError traceback, before
    "lr_text": (lambda d: set_group(d, "lr", "x"),
                "param_groups[0]['lr'] is 'x', expected a finite number >= 0"),
    "lr_negative": (lambda d: set_group(d, "lr", -1.0),
                    "param_groups[0]['lr'] is -1.0, expected a finite number >= 0"),
    "betas": (lambda d: set_group(d, "betas", (0.9, "y")),
              "param_groups[0]['betas'] is (0.9, 'y'), expected 2 finite numbers"),
    "eps_missing": (lambda d: d["param_groups"][0].pop("eps"),
                    "param_groups[0]['eps'] is None, expected a finite number"),
    "amsgrad_text": (lambda d: set_group(d, "amsgrad", "no"),
                     "param_groups[0]['amsgrad'] is 'no', expected true, false or null"),
    "swapped_group_member": (
        lambda d: d["param_groups"][0]["params"].__setitem__(0, "no.such.weight"),
        "parameter groups name 'no.such.weight', which is not a tensor of model.safetensors"),
}


SCHEDULER_DAMAGE_CASES = {
    # a TypeError traceback, before
    "base_lrs_text": (lambda d: d.update(base_lrs=["x", "y"]),
                      "field 'base_lrs' is ['x', 'y'], expected 2 finite numbers >= 0, one per "
                      "parameter group"),
    "base_lrs_short": (lambda d: d.update(_last_lr=[0.001]),
                       "field '_last_lr' is [0.001], expected 2 finite numbers >= 0"),
    "base_lrs_other": (lambda d: d.update(base_lrs=[1.0, 1.0]),
                       "base_lrs[0] is 1.0, but optimizer.pt has initial_lr 0.001 in that group"),
    # resumed silently before, with the rate of step 1000 of a 20-step schedule: 0
    "last_epoch": (lambda d: d.update(last_epoch=1000),
                   "field 'last_epoch' is 1000, but run_state.json has global_step 2 (the "
                   "schedule steps once per optimizer step)"),
    "step_count_text": (lambda d: d.update(_step_count="3"),
                        "field '_step_count' is '3', expected int"),
}
CONTENT_DAMAGE = {MODEL_FILE: MODEL_DAMAGE_CASES, OPTIMIZER_FILE: OPTIMIZER_DAMAGE_CASES,
                  SCHEDULER_FILE: SCHEDULER_DAMAGE_CASES}


@pytest.mark.parametrize("name, damage", [(name, damage) for name, cases in CONTENT_DAMAGE.items()
                                          for damage in sorted(cases)])
def test_contents_that_cannot_resume_exactly_are_refused_naming_file_and_field(
        saved, fresh, tmp_path, name, damage):
    """Each file edited, the manifest rewritten to match: refused before anything is restored,
    in one line naming the file and the tensor or field."""
    edit, expected = CONTENT_DAMAGE[name][damage]
    folder, message = refused_after_edit(saved, fresh, tmp_path, name, edit)
    assert f"{folder / name}: " in message and expected in message, message


@pytest.mark.parametrize("position, batches_per_epoch, expected", [
    ({"batches_in_epoch": 2}, 5, None),  # the fixture's step 2: two batches of one
    # accumulation 2, an epoch of 3 batches: 2 steps, the second of a single batch
    ({"gradient_accumulation_steps": 2, "batches_in_epoch": 3}, 3, None),
    ({"gradient_accumulation_steps": 2, "epoch": 1}, 3, None),
    # resumed before, to another run length
    ({"batches_in_epoch": 8}, 10, "global_step 2 does not agree with epoch 0 and "
                                  "batches_in_epoch 8, which give global_step 8 "
                                  "(gradient_accumulation_steps 1, 10 batches per epoch)"),
    ({"epoch": 1, "batches_in_epoch": 2}, 5, "global_step 2 does not agree with epoch 1 and "
                                             "batches_in_epoch 2, which give global_step 7 "
                                             "(gradient_accumulation_steps 1, 5 batches per "
                                             "epoch)"),
    ({"gradient_accumulation_steps": 2, "batches_in_epoch": 3}, 5,
     "batches_in_epoch 3 is not at an optimizer step (gradient_accumulation_steps 2, 5 batches "
     "per epoch)"),
    ({"batches_in_epoch": 6}, 5, "batches_in_epoch is 6, but an epoch of this run has 5"),
])
def test_a_position_the_loop_cannot_have_saved_is_refused(saved, fresh, tmp_path, position,
                                                          batches_per_epoch, expected):
    """global_step = epoch x ceil(batches per epoch / accumulation) + ceil(batches_in_epoch /
    accumulation), batches_in_epoch at an optimizer step (a multiple of the accumulation, or the
    whole epoch)."""
    folder = copy_of(saved, tmp_path)
    rewrite(folder, RUN_STATE_FILE, lambda state: state.update(position))
    # accelerate's micro-batch counter, as the loop leaves it at that position
    rewrite(folder, "rng_state_0.json",
            lambda rng: rng.update(accelerator_step=position.get("batches_in_epoch", 0)))
    if expected is None:
        assert load(fresh, folder, batches_per_epoch=batches_per_epoch).global_step == 2
    else:
        message = assert_refused(fresh, folder, RUN_STATE_FILE,
                                 batches_per_epoch=batches_per_epoch)
        assert message == f"{folder / RUN_STATE_FILE}: {expected}"


def test_an_accumulation_counter_other_than_the_position_is_refused(saved, fresh, tmp_path):
    """rng_state_N.json's accelerator_step is the epoch's micro-batch count (0 after an epoch's
    end): another value made accelerate sync gradients at other micro-batches, silently."""
    folder = copy_of(saved, tmp_path)
    rewrite(folder, "rng_state_0.json", lambda rng: rng.update(accelerator_step=1))
    message = assert_refused(fresh, folder, "rng_state_0.json")
    assert message == (f"{folder / 'rng_state_0.json'}: accelerator_step is 1, but "
                       f"{RUN_STATE_FILE} says 0 batches of this epoch were taken")


def test_the_fp16_gradscaler_state_round_trips(fresh, tiny_model, tmp_path):
    """(accelerate makes a GradScaler only for fp16 on a GPU: one is set by hand here.)"""
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 7})
    fresh.accelerator.scaler = scaler
    save_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler,
                    RunState(global_step=1), tmp_path / "ck")  # fresh took one step
    assert json.loads((tmp_path / "ck" / "scaler.json").read_text())["scale"] == 512.0
    other = make_run(tiny_model)
    other.accelerator.scaler = torch.amp.GradScaler("cpu")
    load(other, tmp_path / "ck")
    assert other.accelerator.scaler.state_dict()["scale"] == 512.0
    assert other.accelerator.scaler.state_dict()["_growth_tracker"] == 7

def test_a_checkpoint_without_the_gradscaler_of_an_fp16_run_is_refused(saved, fresh):
    fresh.accelerator.scaler = torch.amp.GradScaler("cpu")
    assert "missing, but this run uses an fp16 GradScaler" in assert_refused(
        fresh, saved["step_2"], "scaler.json")


def test_a_gradscaler_state_without_fp16_is_refused(saved, fresh, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "scaler.json").write_text(json.dumps({"scale": 1024.0}))
    write_manifest(folder)
    assert "does not use an fp16 GradScaler" in assert_refused(fresh, folder, "scaler.json")


def test_deepspeed_runs_are_refused(fresh, tmp_path, monkeypatch):
    from accelerate.utils import DistributedType

    monkeypatch.setattr(type(fresh.accelerator), "distributed_type",
                        property(lambda self: DistributedType.DEEPSPEED))
    with pytest.raises(CheckpointError, match="DeepSpeed runs are not supported"):
        save_checkpoint(fresh.accelerator, fresh.model, fresh.optimizer, fresh.scheduler,
                        RunState(), tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_prune_removes_the_manifest_first(saved, tmp_path, monkeypatch):
    output_dir = tmp_path / "out"
    for name in ("step_2", "step_4"):
        shutil.copytree(saved[name], output_dir / "checkpoints" / name)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # killed before rmtree
    assert prune_checkpoints(output_dir, keep_last=1) == [output_dir / "checkpoints" / "step_2"]
    assert checkpoint_folders(output_dir) == [output_dir / "checkpoints" / "step_4"]


def test_run_state_errors_name_the_file(tmp_path):
    RunState(global_step=3).save(tmp_path)
    path = tmp_path / RUN_STATE_FILE
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(CheckpointError, match=f"{path}: not valid JSON .*truncated or damaged"):
        RunState.load(tmp_path)
    path.write_text(json.dumps({**json.loads(text), "global_step": "3"}))
    with pytest.raises(CheckpointError, match=f"{path}: field 'global_step' is '3', expected int"):
        RunState.load(tmp_path)
    path.write_text("[]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        RunState.load(tmp_path)


@pytest.mark.parametrize("field, value", [("global_step", -5), ("batches_in_epoch", -3),
                                          ("samples_seen", -1), ("best_f1", float("nan")),
                                          ("learning_rate", float("inf"))])
def test_run_state_values_out_of_range_are_refused(tmp_path, field, value):
    """Accepted before (manifest rewritten to match): a negative step resumed and counted 43
    samples where the run had seen 16; a NaN best_f1 ended as a bare NaN in metrics.json."""
    RunState(global_step=3).save(tmp_path)
    path = tmp_path / RUN_STATE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(CheckpointError, match=rf"{path}: field '{field}' is .*, expected a "
                                              "finite number >= 0"):
        RunState.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# Pickles: nothing from a checkpoint is unpickled
# ---------------------------------------------------------------------------------------------

class Plant:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path, zipped: bool) -> None:
    if zipped:
        torch.save({"state": Plant(marker)}, path)  # a torch.save file, as accelerate writes them
    else:
        path.write_bytes(pickle.dumps(Plant(marker)))


def test_the_planted_pickle_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "marker"
    plant(tmp_path / "x.pkl", marker, zipped=False)
    pickle.loads((tmp_path / "x.pkl").read_bytes())
    assert marker.exists(), "the test's pickle must be able to run code, else it proves nothing"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("zipped", [False, True], ids=["pickle", "torch_save"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_planted_pickle_under_a_checkpoint_name_runs_nothing(saved, fresh, tmp_path, name,
                                                               zipped):
    """Even with a manifest rewritten to match (a manifest is no signature), the file is loaded
    as data only: refused by name, never executed."""
    folder = copy_of(saved, tmp_path)
    marker = tmp_path / "marker"
    plant(folder / name, marker, zipped)
    if name != MANIFEST_FILE:
        write_manifest(folder)
    assert_refused(fresh, folder, name)
    assert not marker.exists()


LEGACY_NAMES = ["random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin",
                "scaler.pt", "sampler.bin", "pytorch_model.bin", "dl_state_dict.bin"]


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_a_planted_pickle_under_an_accelerate_name_is_never_read(saved, fresh, tmp_path, name):
    folder = copy_of(saved, tmp_path)
    marker = tmp_path / "marker"
    plant(folder / name, marker, zipped=True)
    assert f"not listed in {MANIFEST_FILE}" in assert_refused(fresh, folder, name)
    write_manifest(folder)  # listed now: verified, and still never read
    assert load(fresh, folder).global_step == 2
    assert draws() == saved["after"]
    assert not marker.exists()


def test_an_accelerate_save_state_folder_is_refused_and_runs_nothing(fresh, tmp_path):
    output_dir = tmp_path / "out"
    folder = output_dir / "checkpoints" / "step_5"
    fresh.accelerator.register_for_checkpointing(fresh.scheduler)
    fresh.accelerator.save_state(str(folder))
    RunState(global_step=5).save(folder)
    assert (folder / "random_states_0.pkl").is_file()
    marker = tmp_path / "marker"
    plant(folder / "custom_checkpoint_0.pkl", marker, zipped=True)
    assert resolve_resume(output_dir, "auto") == folder  # found, so not silently started afresh
    message = assert_refused(fresh, folder, "")
    assert "save_state layout" in message and "random_states_0.pkl" in message
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Saved models: finite weights and logits only
# ---------------------------------------------------------------------------------------------

def test_nonfinite_parameters_are_named_and_not_saved(fresh, tmp_path):
    assert nonfinite_parameters(fresh.model) == []
    assert model_problems(fresh.accelerator, fresh.model, {"nonfinite_features": 0}) == []
    save_model_checked(fresh.accelerator, fresh.model, tmp_path / "good")
    assert (tmp_path / "good" / "model.safetensors").is_file()

    unwrapped = fresh.accelerator.unwrap_model(fresh.model)
    with torch.no_grad():
        unwrapped.qa_outputs.bias[0] = float("nan")
        unwrapped.bert.embeddings.word_embeddings.weight[3, 1] = float("inf")
    names = nonfinite_parameters(unwrapped)
    assert sorted(names) == ["bert.embeddings.word_embeddings.weight", "qa_outputs.bias"]
    with pytest.raises(NonFiniteModelError, match="bad: not written: 2 parameter tensors hold NaN"):
        save_model_checked(fresh.accelerator, fresh.model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_nonfinite_logits_make_finite_weights_unusable(fresh, tmp_path):
    metrics = {"nonfinite_features": 5, "features": 9}
    assert model_problems(fresh.accelerator, fresh.model, metrics) == [
        "the evaluation's logits were NaN or inf for 5 of 9 features"]
    with pytest.raises(NonFiniteModelError, match="logits were NaN or inf for 5 of 9"):
        save_model_checked(fresh.accelerator, fresh.model, tmp_path / "best_model", metrics)
    assert not (tmp_path / "best_model").exists()


def test_eval_accumulator_counts_features_with_nonfinite_logits():
    from qa_core.decode import DecodeConfig
    from qa_core.evaluation import EvalAccumulator, EvalReferences

    offsets = np.tile(np.array([[-1, -1]] + [[i, i + 1] for i in range(5)]), (3, 1, 1))
    references = EvalReferences(["a", "b", "c"], ["hello", "world", "there"], [["h"], ["w"], []],
                                np.arange(3), np.zeros(3, np.int64), np.zeros(3, np.int64),
                                lambda indices: offsets[indices])
    accumulator = EvalAccumulator(references, DecodeConfig())
    logits = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    start, end = logits.copy(), logits.copy()
    start[1, 2] = np.nan
    end[2, 5] = np.inf
    accumulator.add(np.arange(3), start, end)
    assert accumulator.finish().metrics["nonfinite_features"] == 2


# ---------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------

def damaged_model(tiny_model: str, tmp_path: Path, damage: str) -> tuple[Path, str]:
    """A copy of the tiny model folder with one kind of damage; returns it and the path the
    error must name."""
    folder = tmp_path / f"model_{damage}"
    if damage == "empty":
        folder.mkdir()
        return folder, str(folder)
    if damage == "a_file":
        folder.write_text("not a folder")
        return folder, str(folder)
    if damage == "missing":
        return tmp_path / "no" / "such" / "model", str(tmp_path / "no" / "such" / "model")
    shutil.copytree(tiny_model, folder)
    if damage == "no_config":
        (folder / "config.json").unlink()
        return folder, str(folder)
    if damage == "truncated_config":
        (folder / "config.json").write_text('{"model_type": "be')
        return folder, str(folder / "config.json")
    if damage == "no_weights":
        (folder / "model.safetensors").unlink()
        return folder, str(folder)
    if damage == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:len(data) // 3])
        return folder, str(folder / "model.safetensors")
    if damage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
        return folder, str(folder)
    raise AssertionError(damage)


MODEL_DAMAGE = ["empty", "a_file", "missing", "no_config", "truncated_config", "no_weights",
                "truncated_weights", "no_tokenizer"]


@pytest.mark.parametrize("damage", MODEL_DAMAGE)
def test_a_bad_model_folder_is_one_error_naming_it(tiny_model, tmp_path, damage):
    folder, named = damaged_model(tiny_model, tmp_path, damage)
    with pytest.raises(ModelFolderError) as refusal:
        check_model_folder(str(folder))
    assert named in str(refusal.value) and "\n" not in str(refusal.value)
    with pytest.raises(ModelFolderError, match=named):
        load_qa_model(str(folder))


def test_load_qa_model_loads_a_good_folder_and_sets_dropout(tiny_model):
    model = load_qa_model(tiny_model, attention_dropout=0.25)
    assert model.config.hidden_size == 32 and model.config.attention_probs_dropout_prob == 0.25
    assert model.config.hidden_dropout_prob == 0.1  # the tiny model's own
    model = load_qa_model(tiny_model, hidden_dropout=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.attention_probs_dropout_prob == 0.1
    assert model.bert.embeddings.dropout.p == 0.0  # the modules follow the config
    check_model_folder("some-org/some-model")  # a hub name is left to the hub loader


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("zipped", [False, True], ids=["pickle", "torch_save"])
def test_pickle_model_weights_are_refused_by_name_and_run_nothing(tiny_model, tmp_path, zipped):
    """A ``pytorch_model.bin`` that runs code when unpickled (transformers reads it with
    ``torch.load(weights_only=True)``): one error naming the file, nothing executed."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    plant(folder / "pytorch_model.bin", marker, zipped)
    with pytest.raises(ModelFolderError) as refusal:
        load_qa_model(str(folder))
    message = str(refusal.value)
    assert message.startswith(f"{folder / 'pytorch_model.bin'}: not a weights-only torch file, "
                              "refused without running it (Unsupported ")
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("field,value,reason", [
    ("num_hidden_layers", "two", "Field 'num_hidden_layers' expected int, got str (value: 'two')"),
    ("model_type", "no-such-model", "The checkpoint you are trying to load has model type "
                                    "`no-such-model`"),
])
def test_an_unusable_config_is_one_error_naming_it(tiny_model, tmp_path, field, value, reason):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    for load in (check_model_folder, load_qa_model):  # check_model_folder: before any tokenizer
        with pytest.raises(ModelFolderError) as refusal:
            load(str(folder))
        message = str(refusal.value)
        assert message.startswith(f"{folder / 'config.json'}: not a usable model config ({reason}")
        assert "\n" not in message


def test_weights_of_other_shapes_than_the_config_are_one_error_naming_them(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="model.safetensors: tensor shapes differ from what "
                                               "config.json gives"):
        load_qa_model(str(folder))


def save_plain_encoder(tiny_model: str, folder: Path) -> Path:
    """The tiny model's encoder alone (a ``BertModel``: no ``qa_outputs``), with its tokenizer,
    as a pre-trained encoder is before fine-tuning."""
    from transformers import AutoConfig, BertModel

    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    BertModel(AutoConfig.from_pretrained(tiny_model)).save_pretrained(str(folder))
    return folder


def test_a_model_without_a_trained_qa_head_is_refused_only_when_asked(tiny_model, tmp_path):
    """Inference refuses a random QA head (``trained_head``); training starts from one."""
    folder = save_plain_encoder(tiny_model, tmp_path / "encoder")
    assert load_qa_model(str(folder)).qa_outputs.weight.shape[0] == 2  # fine-tuning starts so
    with pytest.raises(ModelFolderError) as refusal:
        load_qa_model(str(folder), trained_head=True)
    assert str(refusal.value) == (
        f"--model {folder}: has no trained question-answering head (qa_outputs.bias, "
        "qa_outputs.weight missing): fine-tune it first with train_accelerate.py")
    assert load_qa_model(tiny_model, trained_head=True).qa_outputs.weight.shape[0] == 2
