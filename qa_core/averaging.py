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


class WeightAverage:
    """Running mean of a model's weights over the last ``last_fraction`` of the planned steps."""

    def __init__(self, model: torch.nn.Module, last_fraction: float) -> None:
        from torch.optim.swa_utils import AveragedModel

        if not 0.0 < last_fraction <= 1.0:
            raise ValueError(f"last_fraction must be in (0, 1], got {last_fraction}")
        self.last_fraction = last_fraction
        self.averaged = AveragedModel(model)  # starts empty (n_averaged 0)

    def first_step(self, total_steps: int) -> int:
        """The first averaged step (1-based, as ``RunState.global_step`` after the step)."""
        return total_steps - max(1, math.ceil(self.last_fraction * total_steps)) + 1

    @property
    def count(self) -> int:
        """How many steps' weights are in the mean."""
        return int(self.averaged.n_averaged)

    def update(self, model: torch.nn.Module, step: int, total_steps: int) -> None:
        """Add the weights after optimizer step ``step`` when it is in the averaged tail."""
        if step >= self.first_step(total_steps):
            self.averaged.update_parameters(model)

    def reset(self) -> None:
        """Empty the mean: the next update starts it afresh."""
        self.averaged.n_averaged.zero_()

    def copy_into(self, model: torch.nn.Module) -> None:
        """Replace ``model``'s weights by the mean (nothing happens while it is empty)."""
        if not self.count:
            return
        with torch.no_grad():
            for target, mean in zip(model.parameters(), self.averaged.module.parameters()):
                target.copy_(mean)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
