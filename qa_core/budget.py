"""``--max_train_minutes``: a wall-clock budget for the whole run, turned into a step plan.

The clock starts when the script starts (rank 0's clock, broadcast), so preprocessing and model
loading count. Training first runs the schedule's warm-up (at least ``CALIBRATION_STEPS``, at most
``MAX_CALIBRATION_STEPS`` optimizer steps: see :func:`calibration_steps`), timing all but its first
steps; then rank 0 plans the total number of optimizer steps that
fits what is left, keeping back time for the evaluations and checkpoints the plan implies and a
safety margin, and broadcasts it. The plan is fixed from then on: it is stored in the run state,
so a resumed run continues the same schedule. Should the machine slow down, an all-reduced
"time is up" check ends training early (the run still evaluates and saves).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

CALIBRATION_STEPS = 12     # the fewest optimizer steps before the plan is made
MAX_CALIBRATION_STEPS = 100
TIMED_FROM_STEP = 4        # the first steps include compilation and allocator warm-up
FORWARD_SHARE = 0.4        # evaluation cost per window, as a share of a training step's
CHECKPOINT_SECONDS = 3.0   # writing one checkpoint (22M-parameter model + AdamW state)
SAFETY_SHARE = 0.04        # of the whole budget, kept back for what the estimate misses


def calibration_steps(warmup_steps: int) -> int:
    """Optimizer steps timed before the plan is made.

    The warm-up's learning rates do not depend on the total number of steps, so waiting for its
    end changes no rate, and timing more steps steadies the estimate: with length grouping,
    batch widths (and so step times) vary by about a third from one batch to the next, and 8
    timed steps over-estimated a 25-minute run's step time by a quarter (5 of its minutes went
    unused; bench/README.md, "CPU recipe")."""
    return max(CALIBRATION_STEPS, min(warmup_steps, MAX_CALIBRATION_STEPS))


@dataclass
class BudgetPlan:
    """What the plan was made from, and the plan (all in seconds / optimizer steps)."""

    total_steps: int
    seconds_per_step: float
    reserved_seconds: float
    evaluations: int


def process_started_at() -> float:
    """When this process started (seconds since the epoch), so that a budget covers start-up."""
    import psutil

    return psutil.Process().create_time()


class TimeBudget:
    """The deadline of a run that must end inside ``minutes`` of its start."""

    def __init__(self, accelerator, minutes: float, started_at: float) -> None:
        from accelerate.utils import broadcast_object_list

        start = [started_at]
        if accelerator.num_processes > 1:
            broadcast_object_list(start)  # one clock for every process: rank 0's
        self.accelerator = accelerator
        self.deadline = start[0] + minutes * 60.0
        self.budget_seconds = minutes * 60.0
        self._timer_step: int | None = None
        self._timer_started = 0.0

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def observe_step(self, step: int) -> None:
        """Called after each optimizer step: starts the calibration timer."""
        if step == TIMED_FROM_STEP:
            self._timer_step, self._timer_started = step, time.time()

    def seconds_per_step(self, step: int) -> float:
        if self._timer_step is None or step <= self._timer_step:
            raise RuntimeError("calibration has not timed any step yet")
        return (time.time() - self._timer_started) / (step - self._timer_step)

    def plan(self, step: int, eval_windows: int, batch_windows: int, steps_per_epoch: int,
             eval_every: int | None, epoch_evals: bool,
             checkpoint_every: int | None = None) -> BudgetPlan:
        """Total optimizer steps that fit the time left (rank 0 decides, all get the same)."""
        from accelerate.utils import broadcast_object_list

        per_step = self.seconds_per_step(step)
        eval_seconds = eval_windows / max(1, batch_windows) * per_step * FORWARD_SHARE
        left = self.seconds_left() - SAFETY_SHARE * self.budget_seconds
        total, evaluations = step, 1
        for _ in range(3):  # evaluations depend on the total, the total on the evaluations
            evaluations = 1 + _periodic_events(total, steps_per_epoch, eval_every, epoch_evals)
            checkpoints = _periodic_events(total, steps_per_epoch, checkpoint_every, True)
            reserved = evaluations * eval_seconds + (checkpoints + 1) * CHECKPOINT_SECONDS
            total = step + max(0, math.floor((left - reserved) / per_step))
        plan = [BudgetPlan(total, per_step, reserved, evaluations)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(plan)
        return plan[0]

    def time_is_up(self, reserve_seconds: float) -> bool:
        """True on every process once any process has less than ``reserve_seconds`` (plus half
        the safety margin: the final evaluation's estimate can be short) left."""
        margin = SAFETY_SHARE * self.budget_seconds / 2
        late = torch.tensor(float(self.seconds_left() <= reserve_seconds + margin),
                            device=self.accelerator.device)
        return bool(self.accelerator.reduce(late, "max").item())


def _periodic_events(total_steps: int, steps_per_epoch: int, every: int | None,
                     at_epoch_ends: bool) -> int:
    count = total_steps // every if every else 0
    if at_epoch_ends:
        count += total_steps // max(1, steps_per_epoch)
    return count
