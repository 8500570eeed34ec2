"""--max_train_minutes: the plan fits the budget, is stored, survives a resume; time-up stops."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from test_training import one_line_error

import qa_core.budget
from qa_core.budget import (
    CALIBRATION_STEPS,
    MAX_CALIBRATION_STEPS,
    MIN_TIMED_STEPS,
    RunShape,
    StepCosts,
    TimeBudget,
    calibration_steps,
)
from qa_core.optim import lr_lambda
from tiny_models import read_log, run_main_in_process, train_args

BUDGET_FLAGS = dict(num_train_epochs=1000, max_train_examples=None, eval_strategy="end",
                    keep_last=0, checkpointing_steps=None)


class FakeAccelerator:
    num_processes = 1
    device = "cpu"

    @staticmethod
    def reduce(tensor, _op):
        return tensor


def shape(eval_windows: int = 800, epoch_evals: bool = False, step_limit: int = 10**6,
          warmup_steps: int = 0) -> RunShape:
    """A run of 8 windows a step, evaluated at the end (and each epoch with ``epoch_evals``)."""
    return RunShape(eval_windows=eval_windows, batch_windows=8, eval_every=None,
                    epoch_evals=epoch_evals, checkpoint_every=None, step_limit=step_limit,
                    warmup_steps=warmup_steps)


def timed_budget(monkeypatch, minutes: float, seconds_per_step, steps_timed: int,
                 costs: StepCosts, run_shape: RunShape) -> TimeBudget:
    """A budget whose clock is faked: started at t=1000, steps 1-4 untimed, then
    ``steps_timed`` steps of ``seconds_per_step(step)`` seconds each."""
    now = [1000.0]
    monkeypatch.setattr(qa_core.budget.time, "time", lambda: now[0])
    budget = TimeBudget(FakeAccelerator(), minutes=minutes, started_at=1000.0, costs=costs,
                        shape=run_shape)
    for step in range(1, qa_core.budget.TIMED_FROM_STEP + 1):
        budget.observe_step(step)
    for step in range(qa_core.budget.TIMED_FROM_STEP + 1,
                      qa_core.budget.TIMED_FROM_STEP + steps_timed + 1):
        now[0] += seconds_per_step(step)
        budget.observe_step(step)
    return budget


def test_plan_keeps_back_evaluations_checkpoints_and_margin(monkeypatch):
    budget = timed_budget(monkeypatch, 10, lambda _: 0.5, 8, StepCosts(1000), shape())
    plan = budget.plan(step=12)
    assert plan.seconds_per_step == pytest.approx(0.5)
    eval_seconds = 800 / 8 * 0.5 * qa_core.budget.FORWARD_SHARE
    left = 600 - 4 - qa_core.budget.SAFETY_SHARE * 600
    checkpoints = (plan.total_steps // 1000 + 1) * qa_core.budget.CHECKPOINT_SECONDS
    assert plan.evaluations == 1
    assert plan.total_steps == 12 + int((left - eval_seconds - checkpoints) // 0.5)
    assert budget.time_is_up(reserve_seconds=600 - 4 + 1) is True   # 596 s left
    assert budget.time_is_up(reserve_seconds=10) is False
    margin = qa_core.budget.SAFETY_SHARE * 600 / 2  # the final evaluation's estimate can be short
    assert budget.time_is_up(reserve_seconds=596 - margin + 1) is True
    assert budget.time_is_up(reserve_seconds=596 - margin - 1) is False


def test_plan_is_the_most_steps_whose_implied_evaluations_still_fit(monkeypatch):
    """With an evaluation every epoch, more steps imply more evaluations: the plan alternated
    between the two three times and kept whatever the last round gave, so a plan of 457 steps
    said "5 s kept for 1 evaluation(s)" while implying 23, and the run stopped at step 238."""
    budget = timed_budget(monkeypatch, 5, lambda _: 0.1, 8, StepCosts(20),
                          shape(epoch_evals=True))
    plan = budget.plan(step=12)
    eval_seconds = 800 / 8 * 0.1 * qa_core.budget.FORWARD_SHARE

    def needed(total: int) -> float:
        evaluations = 1 + total // 20
        return ((total - 12) * 0.1 + evaluations * eval_seconds
                + (total // 20 + 1) * qa_core.budget.CHECKPOINT_SECONDS)

    left = 300 - 0.8 - qa_core.budget.SAFETY_SHARE * 300
    assert plan.evaluations == 1 + plan.total_steps // 20
    assert needed(plan.total_steps) <= left < needed(plan.total_steps + 1)


def test_plan_prices_later_steps_by_their_padded_tokens(monkeypatch):
    """Length grouping puts a group's long batches first, so the timed warm-up steps cost more
    than the run's average step; the plan must not extrapolate their time to every step."""
    def epoch_costs(_epoch):  # each epoch: 50 steps of 2 units, then 50 of 1 unit
        return np.array([2.0] * 50 + [1.0] * 50)

    costs = StepCosts(100, epoch_costs)
    budget = timed_budget(monkeypatch, 2, lambda _: 1.0, 8, costs, shape(0))  # 1 s per 2 units
    plan = budget.plan(step=12)
    # 120 s - 8 s spent - 4.8 s margin - 2 checkpoints (epoch 0's end, final) of 3 s = 101.2 s:
    # steps 13-50 take 38 s, 51-100 take 25 s, then 38 of epoch 1's 1-second steps fit
    assert plan.total_steps == 138
    assert plan.seconds_per_step == pytest.approx((38 + 25 + 38) / 126)
    assert plan.reserved_seconds == pytest.approx(2 * qa_core.budget.CHECKPOINT_SECONDS)
    flat = timed_budget(monkeypatch, 2, lambda _: 1.0, 8, StepCosts(100), shape(0))
    assert flat.plan(step=12).total_steps == 12 + 101  # per-step timing: 1 s each
    capped = timed_budget(monkeypatch, 2, lambda _: 1.0, 8, StepCosts(100, epoch_costs),
                          shape(0, step_limit=120))
    assert capped.plan(step=12).total_steps == 120


def test_plan_fits_a_fixed_time_per_step_and_a_time_per_token(monkeypatch):
    """A step takes a fixed time (optimizer update, overheads) plus time per padded token: timed
    on a length-sorted group's long batches, pricing by tokens alone would under-estimate the
    shorter steps that follow."""
    def epoch_costs(_epoch):  # a length-sorted group: costs fall from 3 to 1 units per step
        return np.linspace(3.0, 1.0, 100)

    def step_seconds(step):  # 0.5 s + 0.25 s per unit
        return 0.5 + 0.25 * epoch_costs(0)[(step - 1) % 100]

    budget = timed_budget(monkeypatch, 2, step_seconds, 16, StepCosts(100, epoch_costs),
                          shape(0, step_limit=1000))
    model = budget.step_time_model(20)
    assert model.fixed == pytest.approx(0.5) and model.per_cost == pytest.approx(0.25)
    plan = budget.plan(step=20)
    spent = sum(step_seconds(s) for s in range(5, 21))
    available = 120 - spent - qa_core.budget.SAFETY_SHARE * 120 \
        - 2 * qa_core.budget.CHECKPOINT_SECONDS  # epoch 0's end and the final one
    total, used = 20, 0.0
    while used + step_seconds(total + 1) <= available:
        used += step_seconds(total + 1)
        total += 1
    assert total > 100 and plan.total_steps == total
    assert plan.seconds_per_step == pytest.approx(used / (total - 20))
    flat = qa_core.budget.fit_step_times(np.full(16, 2.0), np.full(16, 1.0))
    assert (flat.fixed, flat.per_cost) == (0.0, 0.5)  # no spread in cost: time per unit
    noisy = qa_core.budget.fit_step_times(np.array([3.0, 2.0, 1.0]), np.array([0.5, 1.0, 2.0]))
    assert noisy.fixed == 0.0 and noisy.per_cost == pytest.approx(3.5 / 6)  # no negative slope


def test_a_run_resumed_inside_the_warmup_times_its_own_steps_before_planning(monkeypatch):
    budget = TimeBudget(FakeAccelerator(), minutes=10, started_at=time.time(),
                        costs=StepCosts(100), shape=shape(10, step_limit=1000, warmup_steps=20))
    for step in range(11, 11 + qa_core.budget.TIMED_FROM_STEP):  # resumed at step 10
        budget.observe_step(step)
        assert not budget.ready_to_plan(step)
    for step in range(15, 30):
        budget.observe_step(step)
        assert budget.ready_to_plan(step) == (step >= 14 + MIN_TIMED_STEPS)
    assert budget.plan(step=29).total_steps == 1000


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_plan_waits_for_the_end_of_a_warmup_whose_rates_do_not_depend_on_the_total(schedule):
    assert calibration_steps(0) == calibration_steps(5) == CALIBRATION_STEPS
    assert calibration_steps(50) == 50
    assert calibration_steps(10**4) == MAX_CALIBRATION_STEPS
    for warmup in (0, 5, 50, 10**4):
        unplanned, planned = lr_lambda(schedule, warmup, None), lr_lambda(schedule, warmup, 300)
        # every rate used up to the plan, and the first step after it, are the same either way
        steps = range(calibration_steps(warmup) + 1)
        if warmup >= CALIBRATION_STEPS:
            assert [unplanned(s) for s in steps] == [planned(s) for s in steps]
    late = lr_lambda(schedule, 50, None), lr_lambda(schedule, 50, 300)
    assert schedule == "constant" or late[0](200) != late[1](200)  # after the warm-up they differ


def test_budgeted_run_ends_in_time_and_stores_its_plan(tiny_model, cache_dir, tmp_path):
    out = tmp_path / "budget"
    started = time.time()
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_minutes=0.3, checkpointing_steps=50,
        warmup_steps=20, **{k: v for k, v in BUDGET_FLAGS.items() if k != "checkpointing_steps"}))
    assert code == 0
    assert time.time() - started < 0.3 * 60
    assert "time budget:" in output
    plans = {json.loads(p.read_text())["planned_total_steps"]
             for p in (out / "checkpoints").glob("step_*/run_state.json")}
    plans.discard(None)  # checkpoints written before the plan was made (none at 50 steps)
    assert len(plans) == 1
    planned = plans.pop()
    assert 20 < summary["global_step"] <= planned
    made = [r for r in read_log(out) if r["event"] == "time_budget_plan"]
    assert [(r["step"], r["total_steps"]) for r in made] == [(20, planned)]  # after the warm-up
    stopped_early = [r for r in read_log(out) if r["event"] == "time_budget_stop"]
    assert stopped_early or summary["global_step"] == planned


def test_a_budgeted_run_resumed_before_its_plan_plans_and_finishes(tiny_model, cache_dir,
                                                                   tmp_path):
    """A checkpoint written inside the warm-up holds no plan: the resumed run times its own
    steps, makes the plan once, stores it and ends in time."""
    first = tmp_path / "first"
    flags = dict(BUDGET_FLAGS, max_train_minutes=0.25, warmup_steps=20, checkpointing_steps=10)
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, first, **flags))
    early = first / "checkpoints" / "step_10"
    assert code == 0 and json.loads((early / "run_state.json").read_text())[
        "planned_total_steps"] is None
    resumed = tmp_path / "resumed"
    started = time.time()
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, resumed, resume_from_checkpoint=str(early), **flags))
    assert code == 0, output[-2000:]
    assert time.time() - started < 0.25 * 60
    made = [r for r in read_log(resumed) if r["event"] == "time_budget_plan"]
    timed_from = 10 + qa_core.budget.TIMED_FROM_STEP
    assert [r["step"] for r in made] == [max(20, timed_from + MIN_TIMED_STEPS)]
    assert 22 < summary["global_step"] <= made[0]["total_steps"]


def test_step_times_leave_out_evaluations_and_price_the_final_one_before_the_plan(monkeypatch):
    """An evaluation inside the calibration was timed as a step (3.0 s/step planned for 1.3 s
    steps, and more than the budget reserved). Before the plan the stop check kept nothing for
    the final evaluation (a 30 s budget ran 44 s); now it prices one from the steps so far."""
    now = [1000.0]
    monkeypatch.setattr(qa_core.budget.time, "time", lambda: now[0])
    budget = TimeBudget(FakeAccelerator(), minutes=10, started_at=1000.0, costs=StepCosts(100),
                        shape=shape(800))
    assert budget.provisional_reserve() == 0.0  # nothing seen
    paused = 0.0
    for step in range(1, 15):
        now[0] += 0.5
        if step == 10:  # an evaluation of 20 s after step 10
            now[0] += 20.0
            paused += 20.0
        budget.observe_step(step, paused)
    model = budget.step_time_model(14)
    assert model.seconds(budget.costs.mean()) == pytest.approx(0.5)
    assert budget.provisional_reserve() == pytest.approx(
        800 / 8 * 0.5 * qa_core.budget.FORWARD_SHARE + qa_core.budget.CHECKPOINT_SECONDS)


def test_time_up_stops_training_and_still_evaluates(tiny_model, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(TimeBudget, "time_is_up", lambda self, reserve: True)
    out = tmp_path / "late"
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_minutes=5, **BUDGET_FLAGS))
    assert code == 0 and summary["global_step"] == 1
    # said on stdout, not only in log.jsonl (a spent budget used to stop the run silently)
    assert ("time budget: training stops at step 1, before the plan was made, keeping 0 s for "
            "the final evaluation and save inside --max_train_minutes 5") in output
    log = read_log(out)
    assert [r["step"] for r in log if r["event"] == "time_budget_stop"] == [1]
    assert [r["reason"] for r in log if r["event"] == "eval"] == ["final"]
    assert (out / "model.safetensors").is_file()


def test_a_run_stopped_before_its_averaged_tail_says_the_model_is_not_an_average(
        tiny_model, cache_dir, tmp_path, monkeypatch):
    """Time up before the tail of --average_last began: the last weights were saved as the
    model, averaged_steps 0 in the log only, no word on stdout."""
    calls = []

    def late_after_the_plan(self, reserve_seconds):
        calls.append(reserve_seconds)
        return len(calls) >= 15  # the plan is made at step 12

    monkeypatch.setattr(TimeBudget, "time_is_up", late_after_the_plan)
    out = tmp_path / "short"
    code, summary, output = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_minutes=5, average_last=0.5, **BUDGET_FLAGS))
    assert code == 0 and summary["global_step"] == 15 and summary["averaged_steps"] == 0
    planned = [r for r in read_log(out) if r["event"] == "time_budget_plan"][0]["total_steps"]
    first = planned - int(np.ceil(0.5 * planned)) + 1
    assert (f"warning: --average_last: training stopped at step 15 of the {planned} planned, "
            f"before the averaged tail (from step {first}): the model is the last step's "
            "weights, not an average") in output


def test_a_budget_spent_before_the_first_step_is_refused(tiny_model, cache_dir, tmp_path,
                                                         capsys):
    """--max_train_minutes 0.001 (0.06 s) ran 7 s, trained a step and said it kept 0 s for the
    final evaluation, rc 0: no run fits inside such a budget."""
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "spent", max_train_minutes=0.001, **BUDGET_FLAGS))
    assert code == 2 and summary == {}
    err = one_line_error(capsys)
    assert "--max_train_minutes 0.001: spent before the first step (" in err
    assert "s for start-up, data and model): no run fits inside it; give more time" in err
    assert not (tmp_path / "spent" / "model.safetensors").exists()


def test_budget_shortens_a_run_but_never_lengthens_it_past_its_epochs(tiny_model, cache_dir,
                                                                      tmp_path):
    out = tmp_path / "capped"
    # a few steps an epoch: 8 epochs end far inside 5 minutes even on a busy machine
    flags = dict(BUDGET_FLAGS, num_train_epochs=8, max_train_examples=40)
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, out, max_train_minutes=5, **flags))
    assert code == 0
    made = [r for r in read_log(out) if r["event"] == "time_budget_plan"]
    epoch_steps = [r["step"] for r in read_log(out) if r["event"] == "train" and r["epoch"] == 0]
    assert len(made) == 1 and made[0]["total_steps"] == summary["global_step"]
    assert summary["global_step"] == 8 * max(epoch_steps)  # 8 epochs, far inside 5 minutes


def test_freeze_word_embeddings_keeps_only_the_input_embeddings_fixed(tiny_model):
    from qa_core.modeling import freeze_word_embeddings, load_qa_model

    model = load_qa_model(tiny_model, None)
    frozen = freeze_word_embeddings(model)
    assert frozen == model.get_input_embeddings().weight.numel() > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not model.get_input_embeddings().weight.requires_grad
    assert any(n.startswith("qa_outputs") for n in trainable) and len(trainable) > 2


def test_a_run_that_never_plans_still_keeps_time_for_its_final_evaluation(
        tiny_model, cache_dir, tmp_path, monkeypatch):
    """A budgeted run whose step limit comes before the plan (and a resumed run under its stored
    plan) made no plan in this process, and its stop check kept 0 s for the final evaluation
    and save: it could overrun its budget by a whole evaluation. It now keeps what its own
    steps price one at."""
    reserves = []
    real_time_is_up = TimeBudget.time_is_up

    def recording(self, reserve_seconds):
        reserves.append(reserve_seconds)
        return real_time_is_up(self, reserve_seconds)

    monkeypatch.setattr(TimeBudget, "time_is_up", recording)
    code, summary, _ = run_main_in_process(train_args(
        tiny_model, cache_dir, tmp_path / "short", max_train_minutes=5,
        **dict(BUDGET_FLAGS, max_train_steps=6)))
    assert code == 0 and summary["global_step"] == 6
    assert len(reserves) == 6 and reserves[0] == 0.0  # one step seen: nothing to price with
    assert all(r >= qa_core.budget.CHECKPOINT_SECONDS for r in reserves[1:])


def test_the_budget_counts_from_the_program_start_not_from_bash_c(tiny_model, cache_dir,
                                                                  tmp_path):
    """``bash -c "a && python train_accelerate.py ..."``: bash execs the last command, which so
    inherits the shell's process start, before ``a`` ran (a pip install once took 134 s of the
    demo's 4.8 minutes). The budget starts with the program instead."""
    import shlex
    import subprocess
    import sys

    from tiny_models import REPO, offline_env

    out = tmp_path / "late_start"
    args = train_args(tiny_model, cache_dir, out, max_train_minutes=5,
                      **dict(BUDGET_FLAGS, num_train_epochs=3, max_train_examples=40))
    command = " ".join(shlex.quote(part) for part in
                       [sys.executable, str(REPO / "train_accelerate.py"), *args])
    shell_started = time.time()
    result = subprocess.run(["bash", "-c", f"sleep 3 && {command}"], cwd=REPO, text=True,
                            env=offline_env(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = [r for r in read_log(out) if r["event"] == "time_budget_plan"]
    assert len(plan) == 1
    assert plan[0]["budget_started_at"] >= shell_started + 3.0
