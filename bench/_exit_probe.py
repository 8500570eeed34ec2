"""One rank of a minimal launch for ``bench/stress_exit.py``: start, one collective, the
project's teardown (:func:`qa_core.hardware.end_distributed`, then
:func:`qa_core.processes.leave_launched_process`)."""
from __future__ import annotations

import torch

from qa_core.hardware import end_distributed, make_accelerator
from qa_core.processes import leave_launched_process

accelerator = make_accelerator(None)
total = accelerator.reduce(torch.ones(1), "sum")
assert int(total.item()) == accelerator.num_processes, total
end_distributed(accelerator)
leave_launched_process(0)
