"""``--max_train_minutes``: a wall-clock budget for the whole run, turned into a step plan.

The clock starts when the script starts (rank 0's clock, broadcast), so preprocessing and model
loading count. Training first runs the schedule's warm-up (at least ``CALIBRATION_STEPS``, at most
``MAX_CALIBRATION_STEPS`` optimizer steps: see :func:`calibration_steps`), timing all but its first
steps; then rank 0 plans the total number of optimizer steps that
fits what is left, keeping back time for the evaluations and checkpoints the plan implies and a
safety margin, and broadcasts it. Step times are predicted from the steps' padded tokens
(:class:`StepCosts`, :func:`fit_step_times`): with length grouping the timed steps are not a
fair sample of the run's.
The plan is fixed from then on: it is stored in the run state,
so a resumed run continues the same schedule. Should the machine slow down, an all-reduced
"time is up" check ends training early (the run still evaluates and saves).

The loop asks one question once per optimizer step, :meth:`TimeBudget.after_step` ("stop?");
the budget times, plans (handing the plan to the run, which sets its schedule and averaged tail)
and keeps the final evaluation's time. :class:`Deadline` is the bare clock, also the GPU
check's (``bench/gpu_check.py``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

CALIBRATION_STEPS = 12     # the fewest optimizer steps before the plan is made
MAX_CALIBRATION_STEPS = 100
TIMED_FROM_STEP = 4        # a process's first steps include compilation and allocator warm-up
MIN_TIMED_STEPS = 8        # a run resumed inside the warm-up times this many before planning
FORWARD_SHARE = 0.4        # evaluation cost per window, as a share of a training step's
CHECKPOINT_SECONDS = 3.0   # writing one checkpoint (22M-parameter model + AdamW state)
SAFETY_SHARE = 0.04        # of the whole budget, kept back for what the estimate misses


class Deadline:
    """Seconds left of ``seconds`` counted from ``started_at`` (``time.time()``; now if None)."""

    def __init__(self, seconds: float, started_at: float | None = None) -> None:
        self.seconds = seconds
        self.started_at = time.time() if started_at is None else started_at

    def left(self) -> float:
        return self.started_at + self.seconds - time.time()


def calibration_steps(warmup_steps: int) -> int:
    """Optimizer steps timed before the plan is made.

    The warm-up's learning rates do not depend on the total number of steps, so waiting for its
    end changes no rate, and timing more steps steadies the estimate: with length grouping,
    batch widths (and so step times) vary by about a third from one batch to the next, and 8
    timed steps over-estimated a 25-minute run's step time by a quarter (5 of its minutes went
    unused; bench/README.md, "CPU recipe")."""
    return max(CALIBRATION_STEPS, min(warmup_steps, MAX_CALIBRATION_STEPS))


class StepCosts:
    """The relative cost of each optimizer step of a run (global step ``s`` is the ``s``-th),
    from a function giving one epoch's per-step costs (padded tokens:
    :func:`qa_core.batching.epoch_step_costs`); epochs are computed when first needed.
    Without that function every step costs the same."""

    def __init__(self, steps_per_epoch: int,
                 epoch_costs: Callable[[int], np.ndarray] | None = None) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)
        self._epoch_costs = epoch_costs
        self._epochs: dict[int, np.ndarray] = {}

    def of_epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            costs = (np.ones(self.steps_per_epoch) if self._epoch_costs is None
                     else np.asarray(self._epoch_costs(epoch), dtype=np.float64))
            if len(costs) != self.steps_per_epoch:  # the loader's count rules: trim, or pad
                mean = costs.mean() if len(costs) else 1.0  # with the mean
                costs = np.concatenate([costs, np.full(self.steps_per_epoch, mean)])
                costs = costs[:self.steps_per_epoch]
            self._epochs[epoch] = np.maximum(costs, 1.0)  # a step is never free
        return self._epochs[epoch]

    def after(self, done: int, until: int, stop_at_sum: float = math.inf) -> np.ndarray:
        """Costs of steps ``done + 1 .. until`` in order, ending early once they add up to
        more than ``stop_at_sum``."""
        parts, total, step = [np.zeros(0)], 0.0, done
        while step < until and total <= stop_at_sum:
            epoch, inside = divmod(step, self.steps_per_epoch)
            part = self.of_epoch(epoch)[inside:inside + until - step]
            parts.append(part)
            total += float(part.sum())
            step += len(part)
        return np.concatenate(parts)

    def mean(self) -> float:
        """Mean cost of a step of the first epoch (the unit evaluations are priced in)."""
        return float(self.of_epoch(0).mean())


@dataclass(frozen=True)
class StepTimeModel:
    """Seconds of an optimizer step: ``fixed`` (optimizer update, Python, launch overheads) plus
    ``per_cost`` for each unit of its cost (padded token)."""

    fixed: float
    per_cost: float

    def seconds(self, costs: np.ndarray | float) -> np.ndarray | float:
        return self.fixed + self.per_cost * costs


def fit_step_times(costs: np.ndarray, seconds: np.ndarray) -> StepTimeModel:
    """The least-squares line through the timed steps' (cost, seconds).

    Pricing by tokens alone mis-predicts short steps: timing a warm-up of long batches and
    extrapolating per token under-estimated the demo's later, shorter steps by a tenth. The line
    keeps the timed steps' total time; when their costs barely differ, or noise gives the line
    a negative part, the time is split in proportion to cost (``fixed`` 0)."""
    costs, seconds = np.asarray(costs, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    proportional = StepTimeModel(0.0, float(seconds.sum() / max(costs.sum(), 1e-12)))
    if len(costs) < 3 or np.ptp(costs) < 0.05 * costs.mean():
        return proportional
    per_cost, fixed = np.polyfit(costs, seconds, 1)
    if per_cost <= 0 or fixed < 0:
        return proportional
    return StepTimeModel(float(fixed), float(per_cost))


@dataclass
class BudgetPlan:
    """What the plan was made from, and the plan (all in seconds / optimizer steps)."""

    total_steps: int
    seconds_per_step: float    # predicted mean of the planned steps still to run
    reserved_seconds: float
    evaluations: int


def evaluation_seconds(eval_windows: int, batch_windows: int, mean_step: float) -> float:
    """One evaluation's predicted seconds: its windows as training steps' worth of windows, at
    ``FORWARD_SHARE`` of a (forward + backward + update) step each."""
    return eval_windows / max(1, batch_windows) * mean_step * FORWARD_SHARE


@dataclass(frozen=True)
class RunShape:
    """What a plan is priced and bounded from, fixed before training starts."""

    eval_windows: int             # windows one evaluation reads
    batch_windows: int            # windows one optimizer step reads (all processes)
    eval_every: int | None        # --eval_steps under --eval_strategy steps
    epoch_evals: bool             # --eval_strategy epoch
    checkpoint_every: int | None  # --checkpointing_steps
    step_limit: int               # --num_train_epochs / --max_train_steps: never lengthened
    warmup_steps: int


class TimeBudget:
    """``--max_train_minutes`` as the loop sees it: one question after each optimizer step
    (:meth:`after_step`), for a run that must end inside ``minutes`` of its start.

    ``on_plan(total_steps, step)`` is called once when the plan is made (the run fixes its
    schedule and averaged tail to it)."""

    def __init__(self, accelerator, minutes: float, started_at: float, costs: StepCosts,
                 shape: RunShape, on_plan: Callable[[int, int], None] = lambda *_: None) -> None:
        from accelerate.utils import broadcast_object_list

        start = [started_at]
        if accelerator.num_processes > 1:
            broadcast_object_list(start)  # one clock for every process: rank 0's
        self.accelerator = accelerator
        self.deadline = Deadline(minutes * 60.0, start[0])  # rank 0's program start
        self.minutes = minutes
        self.costs = costs
        self.shape = shape
        self.on_plan = on_plan
        self.planned: int | None = None
        # kept back for the final evaluation and save; None until this process makes the plan
        self.final_reserve: float | None = None
        self._observed = 0
        self._timer_step: int | None = None
        self._last_seen = 0.0
        self._last_paused = 0.0
        self._step_seconds: list[float] = []   # of the timed steps, in order
        self._observed_seconds = 0.0  # of every observed step after the first, warm-up included

    def seconds_spent_before_training(self) -> bool:
        """True on every process when the deadline has passed before any step (a budget
        shorter than start-up: nothing can end inside it)."""
        return self._on_any_process(self.deadline.left() <= 0)

    def _on_any_process(self, flag: bool) -> bool:
        """``flag`` OR-ed over the processes (each reads its own clock): all decide alike."""
        import torch

        raised = torch.tensor(float(flag), device=self.accelerator.device)
        return bool(self.accelerator.reduce(raised, "max").item())

    def start(self, stored_plan: int | None, step: int) -> int | None:
        """The plan in effect as training starts at ``step``: a resumed run's stored plan, or
        the step limit when the run reaches it before it could plan (the warm-up over and
        ``MIN_TIMED_STEPS`` timed after this process's first ``TIMED_FROM_STEP``); None:
        planned later."""
        earliest = max(calibration_steps(self.shape.warmup_steps),
                       step + TIMED_FROM_STEP + MIN_TIMED_STEPS)
        if stored_plan is None and self.shape.step_limit <= earliest:
            stored_plan = self.shape.step_limit  # it is the plan (schedule, averaged tail)
        self.planned = stored_plan
        return stored_plan

    def observe_step(self, step: int, paused_seconds: float = 0.0) -> None:
        """Called after each optimizer step until the plan is made: times the steps after this
        process's ``TIMED_FROM_STEP``-th (step 4 of a new run, 4 steps after a resume).
        ``paused_seconds``: the run's evaluation and checkpoint seconds so far, left out of the
        step times (timed as a step, an evaluation inside the calibration prices every step at
        a multiple of its cost, and the plan then reserves more than the whole budget)."""
        self._observed += 1
        now = time.time()
        seconds = now - self._last_seen - (paused_seconds - self._last_paused)
        if self._observed > 1:
            self._observed_seconds += seconds
        if self._timer_step is not None and len(self._step_seconds) < MAX_CALIBRATION_STEPS:
            self._step_seconds.append(seconds)  # a plan is made within these
        elif self._observed == TIMED_FROM_STEP:
            self._timer_step = step
        self._last_seen, self._last_paused = now, paused_seconds

    def provisional_reserve(self) -> float:
        """Without a plan made by this process: seconds to keep for the final evaluation and
        save, priced with the steps observed so far (the first ones are the slowest: on the safe
        side)."""
        if self._observed < 2:
            return 0.0
        mean_step = self._observed_seconds / (self._observed - 1)
        return (evaluation_seconds(self.shape.eval_windows, self.shape.batch_windows, mean_step)
                + CHECKPOINT_SECONDS)

    def ready_to_plan(self, step: int) -> bool:
        """The warm-up is over and enough steps have been timed."""
        return (step >= calibration_steps(self.shape.warmup_steps)
                and self._timer_step is not None and step - self._timer_step >= MIN_TIMED_STEPS)

    def step_time_model(self, step: int) -> StepTimeModel:
        """Step time vs cost, fitted to the steps timed up to ``step``."""
        if self._timer_step is None or step <= self._timer_step:
            raise RuntimeError("calibration has not timed any step yet")
        timed = self._step_seconds[:step - self._timer_step]
        costs = self.costs.after(self._timer_step, self._timer_step + len(timed))
        return fit_step_times(costs, np.array(timed))

    def plan(self, step: int) -> BudgetPlan:
        """Total optimizer steps (at most the shape's step limit) that fit the time left, each
        step's time predicted from its cost; rank 0 decides, all get the same."""
        from accelerate.utils import broadcast_object_list

        shape, model = self.shape, self.step_time_model(step)
        mean_step = model.seconds(self.costs.mean())
        eval_seconds = evaluation_seconds(shape.eval_windows, shape.batch_windows, mean_step)
        left = self.deadline.left() - SAFETY_SHARE * self.deadline.seconds
        # seconds from now to the end of each later step (costs beyond what can fit not needed)
        ends = np.cumsum(model.seconds(self.costs.after(
            step, shape.step_limit, stop_at_sum=max(0.0, left) / max(model.per_cost, 1e-12))))
        steps_per_epoch = self.costs.steps_per_epoch

        def reserve(total: int) -> tuple[float, int]:
            """Seconds kept for the evaluations and checkpoints ``total`` steps imply."""
            evaluations = 1 + _periodic_events(total, steps_per_epoch, shape.eval_every,
                                               shape.epoch_evals)
            checkpoints = _periodic_events(total, steps_per_epoch, shape.checkpoint_every, True)
            return (evaluations * eval_seconds + (checkpoints + 1) * CHECKPOINT_SECONDS,
                    evaluations)

        def fits(total: int) -> bool:
            return total == step or ends[total - step - 1] + reserve(total)[0] <= left

        # the largest total that fits, by bisection: steps and reserve both grow with it, and
        # alternating between the two need not settle on a total whose reserve is its own
        low, high = step, step + len(ends)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        total = low
        reserved, evaluations = reserve(total)
        per_step = float(ends[total - step - 1] / (total - step)) if total > step else mean_step
        plan = [BudgetPlan(total, per_step, reserved, evaluations)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(plan)
        return plan[0]

    def time_is_up(self, reserve_seconds: float) -> bool:
        """True on every process once any process has less than ``reserve_seconds`` (plus half
        the safety margin: the final evaluation's estimate can be short) left."""
        margin = SAFETY_SHARE * self.deadline.seconds / 2
        return self._on_any_process(self.deadline.left() <= reserve_seconds + margin)

    def after_step(self, step: int, paused_seconds: float, log) -> bool:
        """Called after every optimizer step (``paused_seconds``: evaluation and checkpoint time
        so far). Times the calibration steps, then makes the plan once; True (on every process
        alike) when the time left no longer covers the final evaluation and save (before the
        plan, priced from the steps so far)."""
        if self.final_reserve is None:  # this process has made no plan (yet)
            self.observe_step(step, paused_seconds)
            if self.planned is None and self.ready_to_plan(step):
                self._plan(step, log)
        # before the plan, and under a plan this process did not make (a resumed run's stored
        # plan, a step limit reached before any plan could be made): the final evaluation is
        # priced from the steps seen so far
        reserve = self.final_reserve if self.final_reserve is not None else \
            self.provisional_reserve()
        if not self.time_is_up(reserve):
            return False
        self.accelerator.print(
            f"time budget: training stops at step {step}"
            + (f" of the {self.planned} planned" if self.planned is not None else
               ", before the plan was made")
            + f", keeping {reserve:.0f} s for the final evaluation and save inside "
              f"--max_train_minutes {self.minutes:g}")
        log.write({"event": "time_budget_stop", "step": step})
        return True

    def _plan(self, step: int, log) -> None:
        """Fix the total steps that fit the budget, hand them to the run and log the plan."""
        plan = self.plan(step)
        self.planned = plan.total_steps
        self.final_reserve = plan.reserved_seconds / max(1, plan.evaluations)
        self.on_plan(plan.total_steps, step)
        log.write({"event": "time_budget_plan", "step": step, "total_steps": plan.total_steps,
                   "seconds_per_step": plan.seconds_per_step,
                   "reserved_seconds": plan.reserved_seconds,
                   "budget_started_at": self.deadline.started_at})
        self.accelerator.print(
            f"time budget: {plan.total_steps} optimizer steps planned "
            f"({plan.seconds_per_step:.2f} s/step, {plan.reserved_seconds:.0f} s kept for "
            f"{plan.evaluations} evaluation(s) and checkpoints)")


def _periodic_events(total_steps: int, steps_per_epoch: int, every: int | None,
                     at_epoch_ends: bool) -> int:
    count = total_steps // every if every else 0
    if at_epoch_ends:
        count += total_steps // max(1, steps_per_epoch)
    return count
