#!/usr/bin/env python
"""Stress loop for aborts at process exit (``terminate called without an active exception``,
SIGABRT) in launched runs. Not part of CI: it takes tens of minutes.

    python bench/stress_exit.py --minimal 200 --full 30 [--label TEXT] [--no_record]

* minimal: ``accelerate launch`` of 2 CPU processes running ``bench/_exit_probe.py`` (start,
  one all-reduce, the project's teardown, exit);
* full, in turn: 2-process DDP training, 2-process FSDP2 training, and two simulated machines
  (one ``accelerate launch`` per machine rank), each training a tiny model a few steps, saving a
  checkpoint and the model, and exiting.

A launch counts as an abort when any process exits on SIGABRT or prints ``terminate called``;
any other failure is counted apart. The last line printed is a JSON summary with the counts and
the first failures' output tails; it is appended to ``bench/results/stress_exit.jsonl`` with the
hardware fingerprint and commit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.common import append_record  # noqa: E402
from tiny_models import (  # noqa: E402
    TRAIN_DATA,
    accelerate_launcher,
    free_port,
    make_tiny_qa_model,
    offline_env,
    train_args,
)

CONFIGS = REPO / "accelerate_configs"
ABORT_MARKS = ("terminate called", "SIGABRT", "Aborted", "core dumped")


def launched(commands: list[list[str]], timeout: float) -> tuple[list[int], str]:
    """Run the launcher commands together (one per machine); their exit codes and output."""
    children = [subprocess.Popen(command, cwd=REPO, env=offline_env(), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for command in commands]
    codes, output = [], ""
    for child in children:
        try:
            text, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            text, _ = child.communicate()
            text += f"\n[stress] timed out after {timeout} s"
        codes.append(child.returncode)
        output += text
    return codes, output


def minimal_launch(index: int, work: Path, model: str, cache: Path) -> list[list[str]]:
    """The same arguments as :func:`full_launch`; a minimal launch needs none of them."""
    return [accelerate_launcher(CONFIGS / "cpu_2proc.yaml") + [str(REPO / "bench" /
                                                                  "_exit_probe.py")]]


def training_flags(model: str, cache: Path, out: Path) -> list[str]:
    return train_args(model, cache, out, train_data=TRAIN_DATA, max_train_steps=3,
                      checkpointing_steps=2, eval_strategy="end", logging_steps=1)


def full_launch(index: int, work: Path, model: str, cache: Path) -> list[list[str]]:
    out = work / f"run{index}"
    script = str(REPO / "train_accelerate.py")
    kind = index % 3
    if kind == 0:
        return [accelerate_launcher(CONFIGS / "cpu_2proc.yaml") + [script]
                + training_flags(model, cache, out)]
    if kind == 1:
        return [accelerate_launcher(CONFIGS / "fsdp2_cpu_2proc.yaml") + [script]
                + training_flags(model, cache, out)]
    port = str(free_port())
    return [[sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             str(CONFIGS / "cpu_2proc.yaml"), "--num_machines", "2", "--machine_rank", str(rank),
             "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port",
             port, script] + training_flags(model, cache, out) for rank in (0, 1)]


FULL_KINDS = ("ddp_2proc", "fsdp2_2proc", "two_machines")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minimal", type=int, default=200, help="minimal 2-process launches")
    parser.add_argument("--full", type=int, default=30, help="training launches (DDP, FSDP2 and "
                        "two machines in turn)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    parser.add_argument("--label", default="", help="a note stored with the record")
    parser.add_argument("--no_record", action="store_true", help="do not append to bench/results")
    args = parser.parse_args()
    counts = {"minimal": {"launches": 0, "aborts": 0, "other_failures": 0},
              **{kind: {"launches": 0, "aborts": 0, "other_failures": 0} for kind in FULL_KINDS}}
    failures: list[dict] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="stress_exit_") as folder:
        work = Path(folder)
        model = make_tiny_qa_model(work / "model")
        cache = work / "cache"
        plan = [("minimal", i, minimal_launch) for i in range(args.minimal)]
        plan += [(FULL_KINDS[i % 3], i, full_launch) for i in range(args.full)]
        for kind, index, build in plan:
            codes, output = launched(build(index, work, model, cache), args.timeout)
            aborted = any(code in (-6, 134) for code in codes) or any(
                mark in output for mark in ABORT_MARKS)
            failed = any(code != 0 for code in codes)
            counts[kind]["launches"] += 1
            if aborted or failed:
                counts[kind]["aborts" if aborted else "other_failures"] += 1
                failures.append({"kind": kind, "index": index, "codes": codes,
                                 "tail": output[-1500:]})
                print(f"[stress] {kind} #{index}: {'ABORT' if aborted else 'failed'} {codes}",
                      flush=True)
            done = sum(c["launches"] for c in counts.values())
            if done % 10 == 0:
                print(f"[stress] {done}/{len(plan)} launches, {time.time() - started:.0f} s",
                      flush=True)
    summary = {"label": args.label, "counts": counts,
               "seconds": round(time.time() - started, 1), "failures": failures[:5]}
    if not args.no_record:
        append_record("stress_exit", summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
