"""The training loop: units of qa_core.loop, optim and checkpoints, exact resume, the non-finite
guard, the output contract.

Runs use a random-init 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer on the shipped
squadshifts slices, in-process (``train_accelerate.main``) with accelerate's singleton state reset
between runs. Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import json
import math
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qa_core.checkpoints import (
    MANIFEST_FILE,
    RUN_STATE_FILE,
    CheckpointError,
    RunState,
    prune_checkpoints,
    resolve_resume,
    verify_checkpoint,
    write_manifest,
)
from qa_core.loop import StepPlan
from qa_core.modeling import freeze_encoder
from qa_core.optim import NonFiniteGuard, NonFiniteLossError, lr_lambda, optimizer_param_groups
from tiny_models import (
    EVAL_DATA,
    TRAIN_DATA,
    load_weights,
    read_log,
    run_main_in_process,
    train_args,
    train_records,
)


def small_bert(vocab_size: int = 50, seed: int = 0):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    return BertForQuestionAnswering(BertConfig(vocab_size=vocab_size, hidden_size=16,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32, max_position_embeddings=64))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]} ({len(different)} of {len(a)})"


# ---------------------------------------------------------------------------------------------
# Schedule and optimizer groups
# ---------------------------------------------------------------------------------------------

def test_lr_lambda_linear_warmup_then_decay_to_zero():
    m = lr_lambda("linear", warmup_steps=4, total_steps=10)
    warm = [m(s) for s in range(5)]
    assert warm == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a < b for a, b in zip(warm, warm[1:])), "warm-up must rise"
    assert m(7) == pytest.approx(0.5)
    decay = [m(s) for s in range(4, 11)]
    assert all(a > b for a, b in zip(decay, decay[1:])), "decay must fall"
    assert m(10) == 0.0 and m(25) == 0.0  # clamped after the end


def test_lr_lambda_cosine_constant_and_no_warmup():
    cosine = lr_lambda("cosine", warmup_steps=2, total_steps=12)
    assert cosine(1) == pytest.approx(2 / 3)
    assert cosine(2) == pytest.approx(1.0)
    assert cosine(7) == pytest.approx(0.5)
    assert cosine(12) == pytest.approx(0.0, abs=1e-12)
    assert cosine(4) > lr_lambda("linear", 2, 12)(4)  # cosine stays higher early on
    constant = lr_lambda("constant", warmup_steps=3, total_steps=10)
    assert constant(0) == pytest.approx(0.25) and constant(3) == constant(9) == constant(100) == 1.0
    assert lr_lambda("linear", warmup_steps=0, total_steps=4)(0) == 1.0


def test_step_plan_counts_the_partial_accumulation():
    assert StepPlan.build(11, 2, None, 1).steps_per_epoch == 6
    assert StepPlan.build(12, 2, None, 1).steps_per_epoch == 6
    assert StepPlan.build(5, 1, None, 1).steps_per_epoch == 5
    assert StepPlan.build(11, 2, None, 2.5) == StepPlan(6, 15, 3)
    assert StepPlan.build(11, 2, 4, 3) == StepPlan(6, 4, 1)


def test_optimizer_param_groups_no_decay_on_bias_and_layernorm():
    model = small_bert()
    layer_norm_weights = {f"{module_name}.weight" for module_name, module in model.named_modules()
                          if isinstance(module, torch.nn.LayerNorm)}
    assert layer_norm_weights
    groups = optimizer_param_groups(model, weight_decay=0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    decay_ids, no_decay_ids = ({id(p) for p in g["params"]} for g in groups)
    assert not decay_ids & no_decay_ids
    for name, param in model.named_parameters():
        expected_no_decay = name.endswith("bias") or name in layer_norm_weights
        assert (id(param) in no_decay_ids) == expected_no_decay, name
        assert (id(param) in decay_ids) == (not expected_no_decay), name
    assert len(decay_ids) + len(no_decay_ids) == len(list(model.parameters()))


def test_freeze_encoder_leaves_only_the_qa_head_trainable():
    model = small_bert()
    trainable = freeze_encoder(model)
    head = model.qa_outputs
    assert trainable == head.weight.numel() + head.bias.numel()
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith("qa_outputs"), name
    groups = optimizer_param_groups(model, 0.01)
    assert {id(p) for g in groups for p in g["params"]} == {id(head.weight), id(head.bias)}


# ---------------------------------------------------------------------------------------------
# Run state, checkpoints, non-finite guard
# ---------------------------------------------------------------------------------------------

def test_run_state_round_trip_and_mismatches(tmp_path):
    settings = {"world_size": 2, "seed": 42, "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 2, "train_data_key": "abc", "learning_rate": 1e-3}
    state = RunState(global_step=7, epoch=1, batches_in_epoch=3, samples_seen=56, nonfinite_steps=1,
                     best_f1=12.5, best_step=6, settings=settings)
    state.save(tmp_path)
    loaded = RunState.load(tmp_path)
    assert loaded == state
    assert loaded.mismatches(state) == []
    now = RunState(settings={**settings, "world_size": 1, "per_device_train_batch_size": 8})
    assert loaded.mismatches(now) == ["world_size: checkpoint 2 != now 1",
                                      "per_device_train_batch_size: checkpoint 4 != now 8"]
    # progress fields may differ freely
    assert loaded.mismatches(replace(state, global_step=99, epoch=5)) == []
    with pytest.raises(CheckpointError, match=RUN_STATE_FILE):
        RunState.load(tmp_path / "elsewhere")
    # a checkpoint that kept its settings beside the position: read as its settings
    (tmp_path / RUN_STATE_FILE).write_text(json.dumps({"global_step": 7, **settings}))
    assert RunState.load(tmp_path) == RunState(global_step=7, settings=settings)


def test_run_state_says_which_update_settings_a_resume_changes(tmp_path):
    saved = RunState(settings=dict(
        learning_rate=1e-3, weight_decay=0.01, warmup_steps=2, lr_scheduler="linear",
        max_grad_norm=1.0, attention_dropout=0.0, hidden_dropout=None, mixed_precision="no",
        logging_steps=10, scheduled_steps=100))
    saved.save(tmp_path)
    loaded = RunState.load(tmp_path)
    assert loaded.changed_settings(saved) == []
    now = RunState(settings={**saved.settings, "learning_rate": 5e-4, "warmup_steps": 5,
                             "hidden_dropout": 0.0, "logging_steps": 3, "scheduled_steps": 150,
                             "a_new_flag": 1})
    assert loaded.changed_settings(now) == [
        "--learning_rate 0.0005 is not used: the checkpoint's optimizer state keeps 0.001",
        "--warmup_steps is 5, the checkpoint's run had 2: the resumed run will differ from an "
        "uninterrupted one",
        "--hidden_dropout is 0.0, the checkpoint's run had None: the resumed run will differ "
        "from an uninterrupted one",
        "--num_train_epochs / --max_train_steps give 150 optimizer steps, the checkpoint's run "
        "had 100: the learning-rate schedule follows the new length, so the resumed run will "
        "differ from an uninterrupted one"]  # logging_steps: not compared; a_new_flag: unrecorded
    # the next checkpoints record what the resumed run goes on with
    resumed = loaded.resumed_with(now).settings
    assert (resumed["learning_rate"], resumed["warmup_steps"], resumed["hidden_dropout"],
            resumed["scheduled_steps"]) == (1e-3, 5, 0.0, 150)
    # with a time budget on either side, the plan (planned_total_steps) says the length
    assert len(loaded.changed_settings(
        RunState(settings={**now.settings, "scheduled_steps": None}))) == 3
    # bf16 after fp32 (fp16 is caught by its GradScaler state): said, as it changes the numbers
    assert loaded.changed_settings(RunState(settings={**saved.settings,
                                                      "mixed_precision": "bf16"})) == [
        "--mixed_precision is 'bf16', the checkpoint's run had 'no': the resumed run will differ "
        "from an uninterrupted one"]


def test_a_resume_says_other_padding_and_chooses_the_best_model_afresh_on_other_questions():
    """--pad_to changes the numbers and --max_eval_examples (or the evaluation data) the scores
    best_f1 is compared with: both resumed without a word, and the summary's best_f1 was a score
    on 8 questions beside a final F1 on 100."""
    saved = RunState(best_f1=12.6, best_step=6,
                     settings={"pad_to": "longest", "eval_data_key": "k/8"})
    now = RunState(settings={"pad_to": "max_length", "eval_data_key": "k/100"})
    assert saved.changed_settings(now) == [
        "--pad_to is 'max_length', the checkpoint's run had 'longest': the resumed run will "
        "differ from an uninterrupted one",
        "the evaluation data (--eval_data, --eval_split or --max_eval_examples) differs from "
        "the checkpoint's run: its best F1 (12.6) is not compared with the new scores; "
        "best_model/ is chosen afresh"]
    resumed = saved.resumed_with(now)
    assert (resumed.best_f1, resumed.best_step, resumed.settings["eval_data_key"]) == (
        None, None, "k/100")
    same = saved.resumed_with(RunState(settings={**now.settings, "eval_data_key": "k/8"}))
    assert (same.best_f1, same.best_step) == (12.6, 6)
    # a DDP checkpoint resumed under FSDP2: other reduction order, not exact (it was silent)
    assert RunState(settings={"distributed_type": "MULTI_CPU"}).changed_settings(
        RunState(settings={"distributed_type": "FSDP"})) == [
        "the launch distributes as 'FSDP', the checkpoint's run as 'MULTI_CPU' (another "
        "accelerate config): the resumed run will differ from an uninterrupted one"]


def make_checkpoints(output_dir: Path, finished: list[int], unfinished: list[int]) -> None:
    for step in finished + unfinished:
        folder = output_dir / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text("x")
        if step in finished:
            RunState(global_step=step).save(folder)
            write_manifest(folder)


def test_prune_checkpoints_keeps_the_newest_by_step_number(tmp_path):
    make_checkpoints(tmp_path, finished=[1, 2, 3, 10], unfinished=[20])
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in deleted) == ["step_1", "step_2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_10", "step_20", "step_3"]
    assert (prune_checkpoints(tmp_path, keep_last=0) == []
            and prune_checkpoints(tmp_path, None) == [])
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None  # nothing saved yet: a fresh start
    make_checkpoints(tmp_path, finished=[2, 9, 10], unfinished=[30])
    # 10 > 9, 30 unfinished
    assert resolve_resume(tmp_path, "auto") == tmp_path / "checkpoints" / "step_10"
    explicit = tmp_path / "checkpoints" / "step_9"
    assert resolve_resume(tmp_path / "other", str(explicit)) == explicit
    unfinished = tmp_path / "checkpoints" / "step_30"
    assert resolve_resume(tmp_path, str(unfinished)) == unfinished  # the load refuses it:
    with pytest.raises(CheckpointError, match=f"step_30/{MANIFEST_FILE}: missing: .*never fini"):
        verify_checkpoint(unfinished)
    with pytest.raises(CheckpointError, match="missing: no such folder"):
        resolve_resume(tmp_path, str(tmp_path / "missing"))


def test_nonfinite_guard_counts_and_stops():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.update(True, 0) is False
    assert guard.update(False, 1) is True
    assert guard.update(False, 1) is True
    assert guard.update(True, 2) is False  # a finite loss resets the run of failures
    assert guard.consecutive == 0
    guard.update(False, 3)
    guard.update(False, 3)
    with pytest.raises(NonFiniteLossError,
                       match="3 optimizer steps in a row had non-finite.*step 4"):
        guard.update(False, 4)


# ---------------------------------------------------------------------------------------------
# Runs: exact resume
# ---------------------------------------------------------------------------------------------

# 20 examples -> 43 windows (odd) -> 11 batches of 4 -> with accumulation 2, 6 optimizer steps per
# epoch, the last one from a single batch. Checkpoints at steps 4 (mid epoch 0), 6 (epoch end),
# 8 (mid epoch 1) and 12.
RESUME_FLAGS = dict(max_train_examples=20, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, num_train_epochs=2, checkpointing_steps=4,
                    keep_last=0, warmup_steps=2, seed=11, learning_rate=1e-3)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "A"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, **RESUME_FLAGS))
    assert code == 0
    assert summary["global_step"] == 12
    windows = summary["samples_seen"] // 2
    assert windows == 43 and math.ceil(windows / 4) % 2 == 1, (
        "the last accumulation of an epoch must be partial")
    return out


def test_uninterrupted_run_checkpoints(uninterrupted):
    folders = sorted((uninterrupted / "checkpoints").iterdir(),
                     key=lambda p: int(p.name.split("_")[1]))
    # keep_last 0 keeps all
    assert [p.name for p in folders] == ["step_4", "step_6", "step_8", "step_12"]
    states = {p.name: json.loads((p / RUN_STATE_FILE).read_text()) for p in folders}
    assert (states["step_4"]["epoch"], states["step_4"]["batches_in_epoch"]) == (0, 8)
    assert (states["step_6"]["epoch"], states["step_6"]["batches_in_epoch"]) == (1, 0)
    assert (states["step_8"]["epoch"], states["step_8"]["batches_in_epoch"]) == (1, 4)
    assert (states["step_8"]["settings"]["gradient_accumulation_steps"] == 2
            and states["step_8"]["settings"]["world_size"] == 1)
    assert (uninterrupted / "best_model" / "model.safetensors").is_file()


def compare_resumed(resumed: Path, reference: Path, from_step: int) -> None:
    assert_same_weights(load_weights(resumed), load_weights(reference))
    later = [r for r in train_records(reference) if r["step"] > from_step]
    replayed = train_records(resumed)
    assert [r["step"] for r in replayed] == [r["step"] for r in later]
    assert [(r["loss"], r["lr"]) for r in replayed] == [(r["loss"], r["lr"]) for r in later]
    metrics, reference_metrics = (json.loads((d / "metrics.json").read_text())
                                  for d in (resumed, reference))
    for key in ("f1", "exact_match", "global_step", "samples_seen", "best_step", "best_f1"):
        assert metrics[key] == reference_metrics[key], key


class Interrupted(Exception):
    pass


def test_interrupted_run_resumed_with_auto_reproduces_the_run(uninterrupted, tiny_model, cache_dir,
                                                              tmp_path, monkeypatch):
    """Stop a run right after its mid-epoch checkpoint at step 8, then restart it with ``auto``."""
    import qa_core.checkpoints

    out = tmp_path / "B"
    original = qa_core.checkpoints.prune_checkpoints

    def prune_then_stop(output_dir, keep_last):  # called once a checkpoint is complete
        deleted = original(output_dir, keep_last)
        if (Path(output_dir) / "checkpoints" / "step_8" / MANIFEST_FILE).is_file():
            raise Interrupted
        return deleted

    monkeypatch.setattr(qa_core.checkpoints, "prune_checkpoints", prune_then_stop)
    with pytest.raises(Interrupted):
        run_main_in_process(train_args(tiny_model, cache_dir, out, resume_from_checkpoint="auto",
                                       **RESUME_FLAGS))
    monkeypatch.undo()
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_6", "step_8"]

    code, _, stdout = run_main_in_process(
        train_args(tiny_model, cache_dir, out, resume_from_checkpoint="auto", **RESUME_FLAGS))
    assert code == 0
    assert f"resumed from {out / 'checkpoints' / 'step_8'} at step 8 (epoch 1, batch 4)" in stdout
    assert_same_weights(load_weights(out), load_weights(uninterrupted))
    # The log of both halves together is the uninterrupted run's log.
    assert [(r["step"], r["loss"], r["lr"]) for r in train_records(out)] == [
        (r["step"], r["loss"], r["lr"]) for r in train_records(uninterrupted)]
    metrics, reference = (json.loads((d / "metrics.json").read_text())
                          for d in (out, uninterrupted))
    for key in ("f1", "exact_match", "global_step", "samples_seen", "best_step", "best_f1"):
        assert metrics[key] == reference[key], key


def test_resume_mid_first_epoch_reproduces_the_run(uninterrupted, tiny_model, cache_dir, tmp_path):
    """From a copy of the step-4 checkpoint in another folder (manifest names are relative)."""
    copied = tmp_path / "elsewhere" / "my_checkpoint"
    shutil.copytree(uninterrupted / "checkpoints" / "step_4", copied)
    out = tmp_path / "C"
    code, _, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, out, resume_from_checkpoint=str(copied), **RESUME_FLAGS))
    assert code == 0 and "at step 4 (epoch 0, batch 8)" in stdout
    compare_resumed(out, uninterrupted, from_step=4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_12", "step_6", "step_8"]


def test_resume_from_a_checkpoint_taken_at_an_evaluation_is_exact(tiny_model, cache_dir,
                                                                   tmp_path):
    """The evaluation at a checkpoint's step used to run after the checkpoint was written: its
    loader's draw from the global RNG was missing from the checkpoint (so the resumed run's
    dropout differed), and so was its score (a better model at that step was later replaced
    in best_model/ by a worse one)."""
    flags = {**RESUME_FLAGS, "eval_strategy": "steps", "eval_steps": 4}
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "A", **flags))
    assert code == 0
    saved = RunState.load(tmp_path / "A" / "checkpoints" / "step_4")
    assert saved.best_step == 4 and saved.best_f1 is not None  # scored before it was written
    code, _, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "B",
        resume_from_checkpoint=str(tmp_path / "A" / "checkpoints" / "step_4"), **flags))
    assert code == 0
    compare_resumed(tmp_path / "B", tmp_path / "A", from_step=4)


def test_a_plain_sgd_run_resumes_exactly(tiny_model, cache_dir, tmp_path):
    """Plain SGD keeps no per-parameter state, which torch's full-state loader cannot place
    (AssertionError: Expected device to be set): no --optim sgd run could be resumed."""
    flags = {**RESUME_FLAGS, "optim": "sgd"}
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "A", **flags))
    assert code == 0
    code, _, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "B",
        resume_from_checkpoint=str(tmp_path / "A" / "checkpoints" / "step_4"), **flags))
    assert code == 0 and "at step 4 (epoch 0, batch 8)" in stdout
    compare_resumed(tmp_path / "B", tmp_path / "A", from_step=4)


def one_line_error(capsys) -> str:
    """The single stderr line of a refused run."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("train_accelerate.py: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0]


@pytest.mark.parametrize("flag, value, expected", [
    ("per_device_train_batch_size", 2, "per_device_train_batch_size: checkpoint 4 != now 2"),
    # the data order: other windows, or the same ones in other batches (these resumed silently)
    ("max_train_examples", 40, "max_train_examples: checkpoint 20 != now 40"),
    ("group_by_length", True, "group_by_length: checkpoint False != now True"),
    # another optimizer (adamw_torch_fused is the same AdamW: that resumes bit-identically)
    ("optim", "sgd", "optimizer: checkpoint 'AdamW' != now 'SGD'"),
    ("negative_window_fraction", 0.0, "negative_window_fraction: checkpoint 1.0 != now 0.0"),
    # other windows: the cache key differs, and the message says which flags make it
    ("max_length", 96, "(the training windows differ: another --train_data or --train_split, "
                       "or another --max_length, --doc_stride, --label_answer, --language or "
                       "tokenizer)"),
])
def test_resume_refuses_a_changed_setting(uninterrupted, tiny_model, cache_dir, tmp_path, capsys,
                                          flag, value, expected):
    flags = {**RESUME_FLAGS, flag: value}
    code, _, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "D",
        resume_from_checkpoint=str(uninterrupted / "checkpoints" / "step_4"), **flags))
    assert code == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "D" / "model.safetensors").exists()


def test_a_new_run_into_an_earlier_runs_output_dir_is_refused_unless_overwritten(
        uninterrupted, tiny_model, cache_dir, tmp_path, capsys):
    """Before: the new run's checkpoints joined the earlier run's (step_4 beside the old step_8),
    the log held both runs, and ``auto`` later resumed the old run."""
    out = tmp_path / "used"
    shutil.copytree(uninterrupted, out)
    flags = {**RESUME_FLAGS, "num_train_epochs": 1}
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, **flags))
    assert code == 2
    assert (f"--output_dir {out}: holds an earlier run's checkpoints (step_4, step_6, step_8, "
            "step_12): resume it with --resume_from_checkpoint auto, start afresh with "
            "--overwrite_output_dir (deletes them), or give another --output_dir"
            ) in one_line_error(capsys)
    assert (out / "checkpoints" / "step_12" / MANIFEST_FILE).is_file()  # nothing touched
    # an evaluation-only run too: it would replace the model beside the other run's checkpoints
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=0))
    assert code == 2 and "holds an earlier run's checkpoints" in one_line_error(capsys)

    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                      overwrite_output_dir=True, **flags))
    assert code == 0 and summary["global_step"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_6"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "distribution" for r in log) == 1  # this run's log only
    assert max(r.get("step", 0) for r in log) == 6


def test_the_run_summary_counts_each_splits_skipped_rows(tiny_model, cache_dir, tmp_path):
    """Rows preprocessing leaves out are counted in the run's summary and said on stdout (they
    used to be counted only in the cache entry's summary.json)."""
    context = "The fox lives in Paris. It hunts at night."
    eval_data = tmp_path / "eval.json"
    eval_data.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{
        "context": context, "qas": [
            {"id": "ok", "question": "Where does the fox live?",
             "answers": [{"text": "Paris", "answer_start": context.index("Paris")}]},
            {"id": "long", "question": "why " * 300,
             "answers": [{"text": "Paris", "answer_start": context.index("Paris")}]}]}]}]}))
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "out", eval_data=str(eval_data), max_eval_examples=None,
        max_train_steps=1))
    assert code == 0 and summary["metrics"]["total"] == 1
    assert summary["data"]["eval"] == {"source": str(eval_data), "examples": 1,
                                       "examples_used": 1, "skipped": {"question_too_long": 1},
                                       "notes": {}}
    assert summary["data"]["train"]["examples_used"] == 20
    assert summary["eval_on_training_data"] is False and "not held-out" not in stdout
    assert f"{eval_data}: 1 rows skipped (question_too_long 1)" in stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["eval"]["skipped"] == {"question_too_long": 1}


@pytest.mark.parametrize("script", ["train_accelerate.py", "preprocess.py", "qa-answer"])
def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys, script):
    """Each script used to end in a KeyboardInterrupt traceback."""
    import preprocess
    import qa_core.inference
    import train_accelerate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, work, argv, left = {
        "train_accelerate.py": (train_accelerate, "train", ["--max_train_steps", "1"],
                                ": finished checkpoints, if any, resume with "
                                "--resume_from_checkpoint auto"),
        "preprocess.py": (preprocess, "prepare", ["--data", "d", "--model", "m"],
                          ": an unfinished cache entry is never used"),
        "qa-answer": (qa_core.inference, "load_model_tokenizer", ["--model", "m", "--demo"], ""),
    }[script]
    monkeypatch.setattr(module, work, interrupted)
    assert module.main(argv) == 130
    assert capsys.readouterr().err == f"{script}: interrupted{left}\n"


def test_max_length_above_the_tokenizers_limit_is_one_line(tiny_model, cache_dir, tmp_path,
                                                           capsys):
    """Was a ValueError traceback from the feature builder (the limit needs the tokenizer)."""
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "out",
                                                max_length=100000, max_train_steps=1))
    assert code == 2
    assert ("--max_length 100000: exceeds the model's limit of 512 tokens (its "
            in one_line_error(capsys))


def test_evaluating_on_the_training_data_is_said(tiny_model, cache_dir, tmp_path):
    """Without --eval_data a file is also the evaluation data (a file has no splits): the run
    printed held-out-looking scores without a word."""
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "out", eval_data=None, max_train_steps=1))
    assert code == 0 and summary["eval_on_training_data"] is True
    assert (f"warning: the evaluation data is the training data ({TRAIN_DATA}): its scores are "
            "not held-out") in stdout


def test_pruning_removes_a_linked_checkpoint_as_a_link(tmp_path):
    """A step folder that is a symbolic link to a checkpoint kept elsewhere: pruning used to
    delete the manifest (and files) it points to."""
    kept = tmp_path / "kept" / "checkpoints" / "step_1"
    make_checkpoints(tmp_path / "kept", finished=[1], unfinished=[])
    make_checkpoints(tmp_path / "run", finished=[2, 3], unfinished=[])
    (tmp_path / "run" / "checkpoints" / "step_1").symlink_to(kept, target_is_directory=True)
    deleted = prune_checkpoints(tmp_path / "run", keep_last=2)
    assert [p.name for p in deleted] == ["step_1"]
    assert not (tmp_path / "run" / "checkpoints" / "step_1").exists()
    assert (kept / MANIFEST_FILE).is_file() and (kept / "model.safetensors").is_file()


def test_resume_with_other_update_settings_goes_on_and_says_so(uninterrupted, tiny_model,
                                                                cache_dir, tmp_path):
    step_4 = uninterrupted / "checkpoints" / "step_4"
    flags = {**RESUME_FLAGS, "learning_rate": 5e-4, "warmup_steps": 3, "num_train_epochs": 3}
    code, _, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "D2", resume_from_checkpoint=str(step_4), **flags))
    assert code == 0
    assert (f"warning: resuming from {step_4}: --learning_rate 0.0005 is not used: the "
            "checkpoint's optimizer state keeps 0.001") in stdout
    assert (f"warning: resuming from {step_4}: --warmup_steps is 3, the checkpoint's run had 2: "
            "the resumed run will differ from an uninterrupted one") in stdout
    assert (f"warning: resuming from {step_4}: --num_train_epochs / --max_train_steps give 18 "
            "optimizer steps, the checkpoint's run had 12: the learning-rate schedule follows the "
            "new length, so the resumed run will differ from an uninterrupted one") in stdout
    later = RunState.load(tmp_path / "D2" / "checkpoints" / "step_8")
    assert (later.settings["learning_rate"], later.settings["warmup_steps"],
            later.settings["scheduled_steps"]) == (1e-3, 3, 18)
    # the peak rate stays the checkpoint's 1e-3 and the schedule is the new warm-up's and
    # length's (3 steps, then linear decay to step 18); step 5 still runs at the rate step 4 set
    records = train_records(tmp_path / "D2")
    assert [r["step"] for r in records[:2]] == [5, 6]
    assert records[0]["lr"] == pytest.approx(1e-3 * lr_lambda("linear", 2, 12)(4))
    assert records[1]["lr"] == pytest.approx(1e-3 * lr_lambda("linear", 3, 18)(5))
    assert records[-1]["step"] == 18


def test_resume_refuses_a_folder_without_run_state(uninterrupted, tiny_model, cache_dir, tmp_path,
                                                   capsys):
    broken = tmp_path / "broken"
    shutil.copytree(uninterrupted / "checkpoints" / "step_4", broken)
    (broken / RUN_STATE_FILE).unlink()
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "E",
                                                resume_from_checkpoint=str(broken), **RESUME_FLAGS))
    assert code == 2
    expected = f"{broken / RUN_STATE_FILE}: missing (listed in {MANIFEST_FILE})"
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "E" / "model.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_resume_from_a_damaged_checkpoint_is_refused_by_file(uninterrupted, tiny_model, cache_dir,
                                                             tmp_path, capsys, damage):
    """The issue's case: a truncated RNG state resumed with rc 0 and another F1. Now any damaged
    file is refused by name (here the RNG state truncated, or the optimizer swapped in from the
    step-8 checkpoint), before training starts."""
    broken = tmp_path / "broken"
    shutil.copytree(uninterrupted / "checkpoints" / "step_4", broken)
    name = "rng_state_0.json" if damage == "truncate" else "optimizer.pt"
    if damage == "truncate":
        text = (broken / name).read_text()
        (broken / name).write_text(text[:len(text) // 2])
    else:
        shutil.copyfile(uninterrupted / "checkpoints" / "step_8" / name, broken / name)
    code, _, stdout = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "F",
                                                     resume_from_checkpoint=str(broken),
                                                     **RESUME_FLAGS))
    assert code == 2 and "resumed from" not in stdout
    assert str(broken / name) in one_line_error(capsys)
    assert not (tmp_path / "F" / "model.safetensors").exists()


def test_auto_refuses_a_damaged_newest_checkpoint(uninterrupted, tiny_model, cache_dir, tmp_path,
                                                  capsys):
    out = tmp_path / "G"
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "step_12" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    code, _, stdout = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                     resume_from_checkpoint="auto", **RESUME_FLAGS))
    assert code == 2 and "resumed from" not in stdout  # no silent fall-back to step_8
    assert f"{newest}: 1000 bytes, manifest.json records" in one_line_error(capsys)


def test_an_empty_model_folder_is_one_error_naming_it(cache_dir, tmp_path, capsys):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    code, _, _ = run_main_in_process(train_args(str(empty), cache_dir, tmp_path / "H"))
    assert code == 2
    assert f"--model {empty}: not a model folder (config.json missing; empty)" in one_line_error(
        capsys)


# ---------------------------------------------------------------------------------------------
# Runs: non-finite losses
# ---------------------------------------------------------------------------------------------

# A skipped optimizer step followed by scheduler.step() makes torch warn; expected here.
SKIPPED_STEP_WARNING = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")


@pytest.fixture
def poison(monkeypatch):
    """Make the loss NaN for the listed training micro-batches (0-based; ``"all"`` for every
    one)."""
    from transformers import BertForQuestionAnswering

    original = BertForQuestionAnswering.forward
    calls = {"n": 0, "poisoned": set()}

    def install(which):
        def forward(self, *args, **kwargs):
            outputs = original(self, *args, **kwargs)
            if self.training and kwargs.get("start_positions") is not None:
                index = calls["n"]
                calls["n"] += 1
                if which == "all" or index in which:
                    outputs["loss"] = outputs["loss"] * float("nan")
            return outputs

        monkeypatch.setattr(BertForQuestionAnswering, "forward", forward)
        return calls

    return install


@SKIPPED_STEP_WARNING
def test_nonfinite_micro_batches_skip_their_optimizer_step(poison, tiny_model, cache_dir, tmp_path):
    # 40 examples -> 76 windows -> 10 batches of 8 -> 5 optimizer steps (accumulation 2).
    calls = poison({0, 1, 4})  # micro-batches 0 and 1 -> step 1; micro-batch 4 -> step 3
    out = tmp_path / "nan"
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_examples=40, gradient_accumulation_steps=2,
        num_train_epochs=1, eval_strategy="end", learning_rate=1e-3))
    assert code == 0 and calls["n"] == 10
    assert summary["global_step"] == 5
    assert summary["nonfinite_steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["nonfinite_steps"] == 2
    log = read_log(out)
    skipped = [r for r in log if r["event"] == "nonfinite_step"]
    assert [(r["step"], r["nonfinite_losses"]) for r in skipped] == [(1, 2), (3, 1)]
    records = train_records(out)
    assert [r["nonfinite_steps"] for r in records] == [1, 1, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    weights = load_weights(out)
    assert all(torch.isfinite(t).all() for t in weights.values())
    initial = load_weights(tiny_model)
    assert not torch.equal(weights["qa_outputs.weight"], initial["qa_outputs.weight"]), (
        "training went on")


@SKIPPED_STEP_WARNING
def test_all_steps_nonfinite_leave_weights_untouched(poison, tiny_model, cache_dir, tmp_path):
    poison("all")
    out = tmp_path / "all_nan"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=3,
                                                      eval_strategy="end", learning_rate=1e-2))
    assert code == 0
    assert summary["global_step"] == 3 and summary["nonfinite_steps"] == 3
    # no optimizer step, no weight decay
    assert_same_weights(load_weights(out), load_weights(tiny_model))


@SKIPPED_STEP_WARNING
def test_too_many_consecutive_nonfinite_losses_stop_the_run(poison, tiny_model, cache_dir, tmp_path,
                                                            capsys):
    calls = poison("all")
    out = tmp_path / "stop"
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=10,
                                                max_consecutive_nonfinite=2, eval_strategy="end"))
    assert code == 2 and "3 optimizer steps in a row had non-finite" in one_line_error(capsys)
    assert calls["n"] == 3
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# Runs: non-finite weights are not saved as a model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("learning_rate", ["inf", "nan", "-1", "0"])
def test_a_learning_rate_that_cannot_work_is_refused_before_any_work(tmp_path, capsys,
                                                                     learning_rate):
    code, _, _ = run_main_in_process(["--learning_rate", learning_rate, "--model",
                                      str(tmp_path / "never-read"), "--output_dir",
                                      str(tmp_path / "out")])
    assert code == 2
    assert "--learning_rate: must be a positive finite number" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@SKIPPED_STEP_WARNING
def test_a_run_ending_with_unusable_weights_fails_and_saves_no_model(tiny_model, cache_dir,
                                                                    tmp_path, capsys):
    """lr 1e6 keeps the weights finite but so large that logits are NaN (for 6 of the 13
    features after the first step, all 13 later): exit 2, no final model, no best_model/ (no
    warm-up: the first step at full rate). (lr inf is refused as a flag, above.)"""
    out = tmp_path / "lr_1e6"
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_steps=3, learning_rate="1e6",
        warmup_steps=0, eval_strategy="steps", eval_steps=1))
    assert code == 2 and summary == {}
    error = one_line_error(capsys)
    assert f"{out}: not written: " in error
    assert "the evaluation's logits were NaN or inf for" in error
    assert not (out / "model.safetensors").exists() and not (out / "best_model").exists()
    not_saved = [r for r in read_log(out) if r["event"] == "model_not_saved"]
    assert [r["step"] for r in not_saved] == [1, 2, 3]
    assert all("best_model: not written" in r["reason"] for r in not_saved)


# ---------------------------------------------------------------------------------------------
# Runs: output contract, bf16, frozen encoder
# ---------------------------------------------------------------------------------------------

def first_eval_ids(n: int) -> list[str]:
    with gzip.open(EVAL_DATA, "rt", encoding="utf-8") as handle:
        data = json.load(handle)["data"]
    ids = [qa["id"] for article in data for paragraph in article["paragraphs"]
           for qa in paragraph["qas"]]
    return ids[:n]


def test_output_folder_contract(tiny_model, cache_dir, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out = tmp_path / "run"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                      max_eval_examples=12, max_train_steps=4,
                                                      eval_strategy="end"))
    assert code == 0
    assert (summary["global_step"] == 4 and summary["world_size"] == 1
            and summary["output_dir"] == str(out))
    model = AutoModelForQuestionAnswering.from_pretrained(str(out))
    assert model.config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(str(out)).is_fast

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("exact_match", "f1", "start_f1", "end_f1"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 100.0, key
        assert metrics[key] == summary[key]
    assert metrics["total"] == 12 and metrics["missing_predictions"] == 0
    assert metrics["features"] == metrics["features_expected"] > 0

    predictions = json.loads((out / "predictions.json").read_text())
    assert sorted(predictions) == sorted(first_eval_ids(12))
    assert all(isinstance(text, str) for text in predictions.values())

    config = json.loads((out / "train_config.json").read_text())
    assert (config["max_train_steps"] == 4 and config["model"] == tiny_model
            and config["max_length"] == 128)
    log = read_log(out)
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]
    assert [r["reason"] for r in log if r["event"] == "eval"] == ["final"]
    assert (out / "best_model" / "config.json").is_file()


def test_bf16_mixed_precision_runs_on_cpu(tiny_model, cache_dir, tmp_path):
    out = tmp_path / "bf16"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=2,
                                                      mixed_precision="bf16", eval_strategy="end"))
    assert code == 0 and summary["mixed_precision"] == "bf16" and summary["global_step"] == 2
    weights = load_weights(out)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
    assert not torch.equal(weights["qa_outputs.weight"],
                           load_weights(tiny_model)["qa_outputs.weight"])


def test_freeze_encoder_run_changes_only_the_head(tiny_model, cache_dir, tmp_path):
    out = tmp_path / "frozen"
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=3,
                                                freeze_encoder=True, learning_rate=1e-2,
                                                eval_strategy="end"))
    assert code == 0
    before, after = load_weights(tiny_model), load_weights(out)
    assert before.keys() == after.keys()
    for name in before:
        if name.startswith("qa_outputs"):
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name


def test_set_dropout_finds_the_field_of_each_architecture():
    from transformers import BertConfig, DistilBertConfig, GPT2Config

    from qa_core.modeling import set_attention_dropout, set_hidden_dropout

    bert, distil = BertConfig(), DistilBertConfig()
    assert set_attention_dropout(bert, 0.0) == ["attention_probs_dropout_prob"]
    assert bert.attention_probs_dropout_prob == 0.0 and bert.hidden_dropout_prob == 0.1
    assert (set_attention_dropout(distil, 0.05) == ["attention_dropout"]
            and distil.attention_dropout == 0.05)
    with pytest.raises(ValueError, match="no attention dropout field"):
        set_attention_dropout(GPT2Config(), 0.0)
    bert, distil = BertConfig(), DistilBertConfig()
    assert set_hidden_dropout(bert, 0.0) == ["hidden_dropout_prob"]
    assert bert.hidden_dropout_prob == 0.0 and bert.attention_probs_dropout_prob == 0.1
    assert set_hidden_dropout(distil, 0.0) == ["dropout"] and distil.dropout == 0.0
    assert distil.attention_dropout == 0.1 and distil.qa_dropout == 0.1
    with pytest.raises(ValueError, match="no hidden dropout field.*leave out --hidden_dropout"):
        set_hidden_dropout(GPT2Config(), 0.0)


def test_resolve_mixed_precision_auto(monkeypatch):
    from qa_core import hardware

    monkeypatch.setattr(hardware, "native_bf16_available", lambda: True)
    assert hardware.resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(hardware, "native_bf16_available", lambda: False)
    assert hardware.resolve_mixed_precision("auto") == "no"
    assert (hardware.resolve_mixed_precision("fp16") == "fp16"
            and hardware.resolve_mixed_precision(None) is None)


def test_resume_is_exact_with_the_fused_optimizer(tiny_model, cache_dir, tmp_path):
    """The speed settings' optimizer (fused AdamW) resumes bit for bit too."""
    flags = {**RESUME_FLAGS, "optim": "adamw_torch_fused", "num_train_epochs": 1}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run_main_in_process(train_args(tiny_model, cache_dir, full, **flags))[0] == 0
    code, _, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, resumed,
        resume_from_checkpoint=str(full / "checkpoints" / "step_4"), **flags))
    assert code == 0 and "at step 4" in stdout
    assert_same_weights(load_weights(resumed), load_weights(full))
    assert [(r["loss"], r["lr"]) for r in train_records(resumed)] == [
        (r["loss"], r["lr"]) for r in train_records(full) if r["step"] > 4]


def test_evaluations_do_not_change_the_trained_weights(tiny_model, cache_dir, tmp_path):
    """Iterating the evaluation loader drew its seed from torch's global generator, so the
    dropout masks after an evaluation, and the trained weights, depended on --eval_strategy
    (two runs differing only in it: 39 of 39 tensors differed)."""
    flags = dict(max_train_steps=4, hidden_dropout=0.1, learning_rate=1e-3)
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "end",
                                                eval_strategy="end", **flags))
    assert code == 0
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "every",
                                                eval_strategy="steps", eval_steps=1, **flags))
    assert code == 0
    assert [r["step"] for r in read_log(tmp_path / "every") if r["event"] == "eval"] == [
        1, 2, 3, 4]
    end, every = load_weights(tmp_path / "end"), load_weights(tmp_path / "every")
    assert all(torch.equal(end[name], every[name]) for name in end)


def test_the_progress_bar_shows_loss_lr_and_samples_per_s(tiny_model, cache_dir, tmp_path,
                                                           capsys):
    """Issue 3: a progress bar on the main process (loss, LR, samples/s). The loop's redesign
    (a10a44b) dropped its postfix: the bar showed steps and it/s only."""
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "bar",
                                                max_train_steps=4, logging_steps=2))
    assert code == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if line.startswith("train:") and "4/4" in line][-1]
    record = [r for r in read_log(tmp_path / "bar") if r["event"] == "train"][-1]
    assert record["step"] == 4
    assert (f"loss={record['loss']:.3f}" in last and f"lr={record['lr']:.2e}" in last
            and f"samples_per_s={record['samples_per_s']:.1f}" in last), last


def test_a_resume_into_another_folder_chooses_its_own_best_model(tiny_model, cache_dir,
                                                                 tmp_path):
    """The checkpoint's run's best_model/ stays in that run's folder: a resumed run into a new
    --output_dir whose scores did not beat it wrote no best_model/, and its summary named the
    old best step. Its train_samples_per_s divided all samples, the checkpoint's included, by
    this run's seconds (848 samples/s for 136)."""
    flags = dict(max_train_steps=4, checkpointing_steps=2, keep_last=0, eval_strategy="steps",
                 eval_steps=1)
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "a", **flags))
    assert code == 0
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "b",
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "step_2"), **flags))
    assert code == 0
    assert "into another --output_dir: best_model/ here is chosen from this run's evaluations" \
        in stdout
    assert summary["best_step"] in (3, 4) and (tmp_path / "b" / "best_model").is_dir()
    # the rate counts this process's samples (steps 3-4), not the checkpoint's as well
    assert summary["samples_seen"] == 32
    # (train_seconds is rounded to 0.01 s, and this run trains for a few hundredths: the
    # product lies near 16, far from the 32 that counting the checkpoint's samples gives)
    assert 8 < summary["train_samples_per_s"] * summary["train_seconds"] < 24


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_model, cache_dir, tmp_path, capsys):
    """Two runs started together each saw no checkpoints yet and wrote into the same folder
    (two runs' records mixed in log.jsonl, one failing on the other's half-written
    checkpoint). A lock left by a run that is gone (kill -9) is taken over."""
    import subprocess

    from qa_core.outputs import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (out / LOCK_FILE).write_text(f"{sleeper.pid} {socket.gethostname()}")
        code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                    max_train_steps=1))
        assert code == 2
        assert one_line_error(capsys).endswith(
            f"--output_dir {out}: another run (pid {sleeper.pid}) is writing into it; wait for "
            "it or give another --output_dir")
    finally:
        sleeper.kill()
        sleeper.wait()
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=1))
    assert code == 0 and not (out / LOCK_FILE).exists()  # taken over, and released at the end


def test_overwrite_output_dir_removes_the_earlier_runs_results(tiny_model, cache_dir, tmp_path):
    """A new run with --overwrite_output_dir that then failed left the earlier run's model,
    metrics and predictions beside its own log, as if they were its own."""
    out = tmp_path / "out"
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=2))
    assert code == 0 and (out / "model.safetensors").is_file() and (out / "best_model").is_dir()
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=2,
                                                overwrite_output_dir=True, max_train_minutes=0.001))
    assert code == 2  # its budget is spent before the first step: nothing written
    for name in ("model.safetensors", "metrics.json", "predictions.json", "train_config.json",
                 "best_model"):
        assert not (out / name).exists(), name


def test_best_model_loads_on_its_own_and_a_new_run_removes_an_earlier_one(tiny_model, cache_dir,
                                                                          tmp_path):
    """best_model/ had no tokenizer (qa-answer --model OUT/best_model: "no tokenizer"); and a
    new run into the folder that chose no best model (evaluation only) left the earlier run's
    best_model/ beside a summary saying best_step null."""
    from qa_core.inference import load_model_tokenizer

    out = tmp_path / "out"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                      max_train_steps=2))
    assert code == 0 and summary["best_step"] == 2
    tokenizer = load_model_tokenizer(str(out / "best_model"))
    assert len(tokenizer) == len(load_model_tokenizer(tiny_model))
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                      max_train_steps=0))
    assert code == 0 and summary["best_step"] is None
    assert not (out / "best_model").exists()
