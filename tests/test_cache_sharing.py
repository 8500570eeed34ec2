"""qa_core.cache_sharing: who builds the preprocessing cache, on 4 gloo processes posing as 2
machines x 2 processes (no model, no launcher), and the one-process cases.

The end-to-end check with ``accelerate launch --num_machines 2`` is tests/test_multinode.py.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qa_core.cache_sharing import (
    CacheSharing,
    cache_build_context,
    count_processes,
    resolve_cache_sharing,
)
from qa_core.errors import SettingsError
from tiny_models import free_port

WORLD, PER_MACHINE = 4, 2


@dataclass
class FakeAccelerator:
    """The part of ``Accelerator`` qa_core.cache_sharing uses, over a plain gloo group."""

    rank: int
    num_processes: int = WORLD
    device: torch.device = torch.device("cpu")

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.rank % PER_MACHINE == 0

    def wait_for_everyone(self) -> None:
        dist.barrier()

    def reduce(self, tensor, reduction: str):
        assert reduction == "sum"
        dist.all_reduce(tensor)
        return tensor

    @contextmanager
    def main_process_first(self):  # accelerate's: the global main goes first, then all others
        if not self.is_main_process:
            dist.barrier()
        yield
        if self.is_main_process:
            dist.barrier()


def build_if_missing(folder: Path) -> bool:
    """A stand-in for ``prepare()``: builds the entry unless it is already there (slowly, so that
    two processes building at once really overlap). True when this call built it."""
    entry = folder / "entry"
    if entry.is_file():
        return False
    time.sleep(0.3)
    folder.mkdir(parents=True, exist_ok=True)
    entry.write_text("built")
    return True


SCENARIOS = (
    "separate-auto",
    "shared-auto",
    "separate-global_main_first",
    "separate-local",
    "shared-shared",
    "unwritable-auto",
)


def _scenario(accelerator: FakeAccelerator, root: Path, scenario: str) -> dict:
    machine = accelerator.rank // PER_MACHINE
    folder = root / scenario / ("shared" if scenario.startswith("shared") else f"machine{machine}")
    requested = scenario.split("-")[1]
    if scenario.startswith("unwritable"):  # the cache folder would be below a plain file
        if accelerator.is_main_process:
            (root / scenario).mkdir()
            (root / scenario / "a_file").write_text("")
        folder = root / scenario / "a_file" / "cache"
        try:
            resolve_cache_sharing(accelerator, requested, folder)
        except SettingsError as err:  # a QAError: one line, exit 2 (was a ValueError traceback)
            return {"error": str(err)}
        return {"error": None}
    if requested == "global_main_first":  # what train_accelerate.py did before
        with accelerator.main_process_first():
            built = build_if_missing(folder)
        sharing = None
    else:
        sharing = resolve_cache_sharing(accelerator, requested, folder)
        with cache_build_context(accelerator, sharing):
            built = build_if_missing(folder)
    return {"builds": count_processes(accelerator, built), "sharing": sharing and asdict(sharing)}


def _worker(rank: int, port: int, root: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    accelerator = FakeAccelerator(rank)
    results = {scenario: _scenario(accelerator, Path(root), scenario) for scenario in SCENARIOS}
    if rank == 0:
        (Path(root) / "results.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict:
    """Every scenario in one 4-process gloo group (one start-up for all)."""
    root = tmp_path_factory.mktemp("sharing")
    mp.spawn(_worker, args=(free_port(), str(root)), nprocs=WORLD)
    return json.loads((root / "results.json").read_text()) | {"root": root}


def test_separate_folders_are_detected_and_built_once_per_machine(scenarios):
    assert scenarios["separate-auto"] == {
        "builds": 2,
        "sharing": {"requested": "auto", "mode": "local", "num_machines": 2, "detected": True},
    }
    for machine in (0, 1):
        folder = scenarios["root"] / "separate-auto" / f"machine{machine}"
        assert [p.name for p in folder.iterdir()] == ["entry"]  # built there; no probe file left


def test_the_old_global_main_first_builds_on_every_process_of_the_second_machine(scenarios):
    # what the issue describes: rank 0 first, then ranks 1, 2 and 3 at once; 2 and 3 both build
    assert scenarios["separate-global_main_first"]["builds"] == 3


def test_a_shared_folder_is_detected_and_built_once(scenarios):
    assert scenarios["shared-auto"] == {
        "builds": 1,
        "sharing": {"requested": "auto", "mode": "shared", "num_machines": 2, "detected": True},
    }
    assert [p.name for p in (scenarios["root"] / "shared-auto" / "shared").iterdir()] == ["entry"]


def test_an_unwritable_cache_folder_stops_every_process_alike(scenarios):
    # the probe cannot be written: every process raises (none waits forever for the others)
    assert scenarios["unwritable-auto"]["error"].startswith("--cache_dir ")
    assert scenarios["unwritable-auto"]["error"].endswith(": the main process cannot write there")


def test_explicit_settings_are_taken_as_given(scenarios):
    assert scenarios["separate-local"]["builds"] == 2
    assert scenarios["separate-local"]["sharing"]["detected"] is False
    assert scenarios["shared-shared"]["builds"] == 1


class OneProcess:
    num_processes = 1
    is_main_process = is_local_main_process = True
    device = torch.device("cpu")


def test_one_process_needs_no_collective(tmp_path):
    sharing = resolve_cache_sharing(OneProcess(), "local", tmp_path / "cache")
    assert sharing == CacheSharing("local", "shared", 1, detected=False)
    with cache_build_context(OneProcess(), sharing) as first:
        assert first is True
    assert count_processes(OneProcess(), True) == 1 and count_processes(OneProcess(), False) == 0
    assert not (tmp_path / "cache").exists()  # no probe on one machine
