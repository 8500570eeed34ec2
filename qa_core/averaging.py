"""Weight averaging over the end of a run (``--average_last F``).

The model that is evaluated and saved at the end is the equal-weight mean of the weights after
each of the last ``F`` of the planned optimizer steps: stochastic weight averaging (Izmailov et
al., 2018) over the tail of a decaying schedule. Why: late in a run, held-out F1 still moves by
about a point from one checkpoint to the next (a 25-minute CPU run scored 65.2, 64.4 and 64.0 F1
at steps 1100, 1200 and 1248), and the mean of those weights scores above the last of them
(``bench/README.md``, "CPU recipe").

The running mean is torch's ``AveragedModel`` (``torch.optim.swa_utils``): a copy of the model
in its parameter dtype (fp32 under autocast) on the model's device. It is identical on every
process (the weights it averages are), and it goes into checkpoints, so a resumed run averages
the same steps as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel


class WeightAverage(AveragedModel):
    """Running mean of a model's weights over the last ``last_fraction`` (in (0, 1]: the flag's
    rule; 0 builds none) of the planned steps; its ``state_dict`` is the ``AveragedModel``'s.

    The tail is fixed once, when the run's plan is (:meth:`fix_tail`): from then on each step
    only asks whether it is in it, whatever the plan's length."""

    def __init__(self, model: torch.nn.Module, last_fraction: float) -> None:
        super().__init__(model)  # starts empty (n_averaged 0)
        self.last_fraction = last_fraction
        self.start: int | None = None   # the first step averaged from now on; None: no plan yet
        self.total: int | None = None   # the plan's total steps

    def first_step(self, total_steps: int) -> int:
        """The first averaged step (1-based, as ``RunState.global_step`` after the step)."""
        return total_steps - max(1, math.ceil(self.last_fraction * total_steps)) + 1

    @property
    def count(self) -> int:
        """How many steps' weights are in the mean."""
        return int(self.n_averaged)

    def fix_tail(self, total_steps: int, step: int, resumed: bool) -> str | None:
        """Fix the tail for a plan of ``total_steps`` made after optimizer step ``step``: at the
        start of a run (a resumed one at its checkpoint's step) or when a time budget plans.
        Returns a warning when the tail cannot be the planned one."""
        first, count = self.first_step(total_steps), self.count
        self.total, self.start = total_steps, max(first, step + 1)
        tail = f"the averaged tail of the {total_steps}"
        if resumed:
            if count == max(0, step - first + 1):  # the checkpoint's mean is this plan's
                return None
            if first > step:  # a longer run: the checkpoint's mean is of steps before the tail
                self.reset()
                return (f"--average_last: resumed with another run length, {tail} steps begins "
                        f"at step {first}, after the checkpoint: its mean of {count} steps' "
                        "weights is dropped")
            return (f"--average_last: resumed with another run length, {tail} steps begins at "
                    f"step {first}, but the checkpoint's mean holds {count} steps up to step "
                    f"{step}: the model will be the mean of those and steps {step + 1}-"
                    f"{total_steps}")
        if first > step:
            return None
        left = (f"steps {step + 1}-{total_steps} are averaged" if total_steps > step else
                "no step is left to average")
        return (f"--average_last {self.last_fraction:g}: {tail} planned steps would begin at "
                f"step {first}, but the time budget made its plan at step {step}: {left}")

    def update(self, model: torch.nn.Module, step: int) -> None:
        """Add the weights after optimizer step ``step`` when it is in the fixed tail."""
        if self.start is not None and step >= self.start:
            self.update_parameters(model)

    def reset(self) -> None:
        """Empty the mean: the next update starts it afresh."""
        self.n_averaged.zero_()

    def finish(self, model: torch.nn.Module, step: int) -> str | None:
        """End of training at ``step``: ``model``'s weights become the mean (unchanged while it
        is empty). Returns a warning when training stopped short of the planned tail."""
        count = self.count
        if count:
            with torch.no_grad():
                for target, mean in zip(model.parameters(), self.module.parameters()):
                    target.copy_(mean)
        if self.total is None:
            return (f"--average_last: training stopped at step {step}, before the time budget "
                    "planned the run: nothing is averaged")
        first, total = self.first_step(self.total), self.total
        if step >= total or count >= total - first + 1:
            return None
        return (f"--average_last: training stopped at step {step} of the {total} planned, "
                + (f"so the model is the mean of {count} steps' weights, not of the "
                   f"{total - first + 1} planned" if count else
                   f"before the averaged tail (from step {first}): the model is the last step's "
                   "weights, not an average"))
