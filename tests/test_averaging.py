"""``--average_last``: the running mean of the weights over the end of a run (qa_core.averaging),
its checkpoints and exact resume.

Runs use the random-init tiny BERT on the shipped slices, in-process, as tests/test_training.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qa_core.averaging import WeightAverage
from qa_core.checkpoints import AVERAGE_FILE, RUN_STATE_FILE
from qa_core.errors import SettingsError
from tiny_models import load_weights, read_log, run_main_in_process, train_args

# As test_training.RESUME_FLAGS: 12 optimizer steps over 2 epochs; with average_last 0.5 the
# weights after steps 7..12 are averaged. A checkpoint after every step.
AVERAGE_FLAGS = dict(max_train_examples=20, per_device_train_batch_size=4,
                     gradient_accumulation_steps=2, num_train_epochs=2, checkpointing_steps=1,
                     keep_last=0, warmup_steps=2, seed=11, learning_rate=1e-3,
                     average_last=0.5)


def test_first_step_covers_the_last_fraction_of_the_plan():
    average = WeightAverage(torch.nn.Linear(2, 2), 0.2)
    assert average.first_step(1248) == 999          # 250 steps: 999..1248
    assert average.first_step(10) == 9              # 2 steps
    assert WeightAverage(torch.nn.Linear(2, 2), 0.01).first_step(10) == 10  # at least the last
    assert WeightAverage(torch.nn.Linear(2, 2), 1.0).first_step(10) == 1


def test_update_averages_only_the_fixed_tail_and_finish_sets_the_mean():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, 0.4)  # total 5 -> steps 4 and 5
    assert average.fix_tail(5, 0, resumed=False) is None and average.start == 4
    seen = []
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        seen.append([p.detach().clone() for p in model.parameters()])
        average.update(model, step)
    assert average.count == 2
    assert average.finish(model, 5) is None
    for param, at4, at5 in zip(model.parameters(), seen[3], seen[4]):
        torch.testing.assert_close(param.detach(), (at4 + at5) / 2)


def test_an_empty_average_leaves_the_model_alone():
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    WeightAverage(model, 0.5).finish(model, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fsdp_is_refused_with_one_named_error():
    from accelerate.utils import DistributedType

    from qa_core.run_setup import weight_average

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, unwrap_model=lambda m: m)
    with pytest.raises(SettingsError, match="--average_last"):
        weight_average(fsdp, torch.nn.Linear(2, 2), 0.2)
    assert weight_average(fsdp, torch.nn.Linear(2, 2), 0.0) is None


@pytest.fixture(scope="module")
def averaged_run(tiny_model, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("average") / "A"
    code, summary, _ = run_main_in_process(train_args(tiny_model, cache_dir, out,
                                                      **AVERAGE_FLAGS))
    assert code == 0
    assert summary["global_step"] == 12 and summary["averaged_steps"] == 6
    return out


def test_the_saved_model_is_the_mean_of_the_last_steps_weights(averaged_run):
    checkpoints = averaged_run / "checkpoints"
    tail = [load_weights(checkpoints / f"step_{step}") for step in range(7, 13)]
    saved = load_weights(averaged_run)
    for name, value in saved.items():
        torch.testing.assert_close(value, sum(w[name] for w in tail) / len(tail))
    assert not torch.equal(saved["qa_outputs.weight"], tail[-1]["qa_outputs.weight"])
    events = [r for r in read_log(averaged_run) if r["event"] == "weights_averaged"]
    assert [(e["averaged_steps"], e["first_step"]) for e in events] == [(6, 7)]
    # the final evaluation is of the averaged weights, after the last training record
    final = [r for r in read_log(averaged_run) if r.get("reason") == "final"]
    assert len(final) == 1 and final[0]["time_s"] >= events[0]["time_s"]
    # checkpoints before the averaged tail hold no average; those inside it hold the count
    assert not (checkpoints / "step_6" / AVERAGE_FILE).exists()
    state = json.loads((checkpoints / "step_8" / RUN_STATE_FILE).read_text())
    assert state["averaged_steps"] == 2 and state["settings"]["average_last"] == 0.5


def test_a_budgeted_run_that_ends_before_its_plan_averages_its_tail(tiny_model, cache_dir,
                                                                     tmp_path):
    """--max_train_minutes with a step limit below the calibration steps: the run ended before
    the budget could plan it, so nothing was averaged (averaged_steps 0, the last weights
    saved) and a limit from --num_train_epochs left the schedule at its placeholder length.
    The limit is now the plan."""
    out = tmp_path / "A"
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_steps=4, average_last=0.5, max_train_minutes=30))
    assert code == 0 and summary["global_step"] == 4 and summary["averaged_steps"] == 2
    events = [r for r in read_log(out) if r["event"] == "weights_averaged"]
    assert [(e["averaged_steps"], e["first_step"]) for e in events] == [(2, 3)]


def test_a_tail_beginning_before_the_budgets_plan_is_said_and_logged_as_averaged(
        tiny_model, cache_dir, tmp_path):
    """The plan is made after the warm-up (here at step 12); a tail of 0.9 of 20 steps would
    begin at step 3. The log claimed first_step 3 while steps 13-20 were averaged."""
    out = tmp_path / "B"
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_steps=20, average_last=0.9, max_train_minutes=30,
        max_train_examples=None, per_device_train_batch_size=4))
    assert code == 0 and summary["global_step"] == 20 and summary["averaged_steps"] == 8
    assert ("warning: --average_last 0.9: the averaged tail of the 20 planned steps would begin "
            "at step 3, but the time budget made its plan at step 12: steps 13-20 are averaged"
            ) in stdout
    events = [r for r in read_log(out) if r["event"] == "weights_averaged"]
    assert [(e["averaged_steps"], e["first_step"]) for e in events] == [(8, 13)]


@pytest.mark.parametrize("from_step", [4, 8])
def test_resume_before_or_inside_the_averaged_tail_is_exact(averaged_run, tiny_model, cache_dir,
                                                            tmp_path, from_step):
    out = tmp_path / "resumed"
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, out, **AVERAGE_FLAGS,
        resume_from_checkpoint=str(averaged_run / "checkpoints" / f"step_{from_step}")))
    assert code == 0 and f"at step {from_step}" in stdout
    assert summary["averaged_steps"] == 6
    reference, resumed = load_weights(averaged_run), load_weights(out)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(lines)
    return [line for line in lines if line.startswith("train_accelerate.py: error: ")][0]


def test_resume_with_another_average_last_is_refused(averaged_run, tiny_model, cache_dir,
                                                     tmp_path, capsys):
    flags = {**AVERAGE_FLAGS, "average_last": 0.25}
    code, _, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "other", **flags,
        resume_from_checkpoint=str(averaged_run / "checkpoints" / "step_8")))
    assert code == 2 and "average_last: checkpoint 0.5 != now 0.25" in _error_line(capsys)


def test_average_last_outside_zero_to_one_is_refused(tmp_path, capsys):
    from train_accelerate import main

    assert main(["--average_last", "1.5", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--average_last" in _error_line(capsys)


def test_a_resume_with_another_length_drops_or_says_the_moved_tail(averaged_run, tiny_model,
                                                                   cache_dir, tmp_path):
    """Resumed at step 8 of 12 (tail 7-12, two steps averaged) with --max_train_steps 24, the
    tail is 13-24: the checkpoint's mean was kept and averaged with it (10 steps, logged as
    15-24). Now it is dropped and said; with 10 steps (tail 6-10) the missing step is said."""
    checkpoint = str(averaged_run / "checkpoints" / "step_8")
    longer = dict(AVERAGE_FLAGS, max_train_steps=24)
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "longer", resume_from_checkpoint=checkpoint, **longer))
    assert code == 0 and summary["averaged_steps"] == 12
    assert ("warning: --average_last: resumed with another run length, the averaged tail of "
            "the 24 steps begins at step 13, after the checkpoint: its mean of 2 steps' weights "
            "is dropped") in output
    shorter = dict(AVERAGE_FLAGS, max_train_steps=10)
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "shorter", resume_from_checkpoint=checkpoint,
        **shorter))
    assert code == 0 and summary["averaged_steps"] == 4
    assert ("the averaged tail of the 10 steps begins at step 6, but the checkpoint's mean "
            "holds 2 steps up to step 8: the model will be the mean of those and steps 9-10"
            ) in output
