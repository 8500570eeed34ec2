"""Building the preprocessing cache once per file system, on one machine or several.

A run's processes all need the same cache entry. When the cache folder is on a file system
every machine sees (``shared``), the global main process builds it and the others then read
it: once in total. When each machine has its own folder (``local``: node-local disks), each
machine's local main process builds it and that machine's other processes wait: once per
machine. ``auto`` finds out which by a probe file (:func:`cache_folder_is_shared`).

Every function here is collective: all processes of the run must call it, in the same order.
``accelerator`` is an ``accelerate.Accelerator`` (what is used of it: ``num_processes``,
``is_main_process``, ``is_local_main_process``, ``device``, ``wait_for_everyone`` and
``reduce``), with ``torch.distributed`` initialised when there are several processes.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from qa_core.errors import QAError, SettingsError
from qa_core.processes import on_every_process

T = TypeVar("T")

CACHE_SHARING = ("auto", "shared", "local")


@dataclass(frozen=True)
class CacheSharing:
    """How the cache folder is shared: ``requested`` as given, ``mode`` what the run uses."""

    requested: str
    mode: str  # shared | local
    num_machines: int  # machines of the run (counted from the local main processes)
    detected: bool  # mode came from the probe (requested auto on several machines)


def count_processes(accelerator, flag: bool) -> int:
    """How many processes of the run have ``flag`` set (an all-reduce; 1 process: 0 or 1)."""
    if accelerator.num_processes == 1:
        return int(flag)
    import torch  # here, not at the top: flag parsing imports this module's CACHE_SHARING

    value = torch.tensor([int(flag)], dtype=torch.int64, device=accelerator.device)
    return int(accelerator.reduce(value, "sum").item())


def cache_folder_is_shared(accelerator, cache_dir: str | Path) -> bool:
    """True when every machine's local main process sees a file the global main process just
    wrote in ``cache_dir`` (a random name, so no earlier run and no cached lookup can answer)."""
    folder = Path(cache_dir)
    names: list[str | None] = [None]
    if accelerator.is_main_process:
        probe = folder / f".shared-probe-{uuid.uuid4().hex}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text("the global main process asks: which machines see this folder?\n")
            names = [probe.name]
        except OSError:
            pass  # None tells every process, which then all stop alike (no one left waiting)
    import torch.distributed

    torch.distributed.broadcast_object_list(names, src=0)
    if names[0] is None:
        raise SettingsError(f"--cache_dir {folder}: the main process cannot write there")
    seen = not accelerator.is_local_main_process or (folder / names[0]).is_file()
    missing = count_processes(accelerator, not seen)
    if accelerator.is_main_process:
        (folder / names[0]).unlink(missing_ok=True)
    return missing == 0


def resolve_cache_sharing(accelerator, requested: str, cache_dir: str | Path) -> CacheSharing:
    """The sharing mode the run uses for ``cache_dir`` (collective when ``auto`` on 2+ machines).

    One machine: always ``shared`` (its processes see one folder), whatever was asked.
    ``requested`` is one of :data:`CACHE_SHARING` (the flag's choices).
    """
    machines = count_processes(accelerator, accelerator.is_local_main_process)
    if machines == 1:
        return CacheSharing(requested, "shared", machines, detected=False)
    if requested != "auto":
        return CacheSharing(requested, requested, machines, detected=False)
    mode = "shared" if cache_folder_is_shared(accelerator, cache_dir) else "local"
    return CacheSharing(requested, mode, machines, detected=True)


@contextmanager
def cache_build_context(accelerator, sharing: CacheSharing) -> Iterator[bool]:
    """Run the block first on the builder (global main when ``shared``, each machine's local main
    when ``local``), then on every other process; yields True on the builder.

    The builder releases the others even when its block raises, so they run it too and stop on
    the same error instead of waiting for a barrier that never comes.
    """
    if accelerator.num_processes == 1:
        yield True
        return
    first = (accelerator.is_main_process if sharing.mode == "shared"
             else accelerator.is_local_main_process)
    if not first:
        accelerator.wait_for_everyone()
    try:
        yield first
    finally:
        if first:
            accelerator.wait_for_everyone()


def build_on_every_process(accelerator, sharing: CacheSharing, build: Callable[[], T],
                           error: type[QAError] = QAError) -> T:
    """``build()`` on every process, the builder first (:func:`cache_build_context`), and a
    QAError any of them raises raised on all of them (:func:`on_every_process`). Collective.

    A builder's refusal releases the others, and the gather makes them stop alike even when
    they do not meet the error themselves: one that went on alone would end in the next
    collective (a ``Connection closed by peer`` traceback on gloo, a wait on NCCL)."""

    def first_then_the_others() -> T:
        with cache_build_context(accelerator, sharing):
            return build()

    return on_every_process(accelerator, first_then_the_others, error)
