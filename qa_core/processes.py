"""Processes of a run: collective helpers every rank calls alike, in one order
(:func:`on_every_process`, :func:`disagreement`), and a launched rank's life.

Light at import (no torch, no accelerate): ``train_accelerate.py`` calls
:func:`die_with_the_launcher` before flag parsing.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TypeVar

from qa_core.errors import QAError, launch_rank

T = TypeVar("T")
# A rank other than 0 that ends with an error waits this long first: rank 0 prints the one
# error line every rank met, and the launcher stops the other ranks as soon as one has ended.
REPORT_GRACE_SECONDS = 3.0


def disagreement(accelerator, value: str) -> str | None:
    """None when every process holds the same ``value`` (collective: a gather); else which
    processes hold which, in one line: ``a on process 0; b on processes 1, 2``."""
    if accelerator.num_processes == 1:
        return None
    from accelerate.utils import gather_object

    held: dict[str, list[int]] = {}
    for rank, text in enumerate(gather_object([value])):
        held.setdefault(text, []).append(rank)
    if len(held) == 1:
        return None
    return "; ".join(f"{text} on process{'es' if len(ranks) > 1 else ''} "
                     f"{', '.join(map(str, ranks))}" for text, ranks in held.items())


def on_every_process(accelerator, read: Callable[[], T], error: type[QAError]) -> T:
    """``read()`` on every process; a QAError any of them raises is raised on all of them (the
    lowest rank's). Only rank 0 prints errors, so a refusal of a file only rank 1 reads (its RNG
    state) would otherwise say nothing, and rank 0 would crash in the next collective."""
    if accelerator.num_processes == 1:
        return read()
    from accelerate.utils import gather_object

    try:
        result, problem = read(), None
    except QAError as err:
        result, problem = None, err
    said = gather_object([None if problem is None else str(problem)])
    first = next((text for text in said if text is not None), None)
    if first is None:
        return result
    if problem is not None and str(problem) == first:
        raise problem
    raise error(first)


def die_with_the_launcher() -> None:
    """A rank started by a launcher (torchrun, ``accelerate launch``) ends when the launcher
    does: a launcher killed with SIGKILL would leave its ranks running in their own sessions,
    writing into the output folder beside a resumed run (Linux only: ``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal

    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent exits
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher was already gone before the call
        os.kill(os.getpid(), signal.SIGTERM)


def leave_launched_process(code: int) -> int:
    """End a rank that a launcher started, now that its work is done: output flushed, then
    ``os._exit``. Elsewhere, return ``code``.

    torch keeps a DDP wrapper's gloo process group, and its threads, alive past
    ``destroy_process_group``; were they running while the interpreter finalizes, a rare
    ``terminate called without an active exception`` could end the rank. Every collective is
    finished when this runs, so the threads end with the process, before any finalization
    (``bench/stress_exit.py`` counts aborts over hundreds of launches). A rank other than 0
    leaving with an error gives rank 0 :data:`REPORT_GRACE_SECONDS` to print the error line
    first: an immediate exit let the launcher stop rank 0 before it had printed."""
    if "LOCAL_RANK" not in os.environ:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0 and launch_rank() != 0:
        time.sleep(REPORT_GRACE_SECONDS)
    os._exit(code)
