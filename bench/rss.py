#!/usr/bin/env python
"""Peak RSS of a short training run as the cached training set grows (issue 9's acceptance).

    python bench/rss.py [--data FILE] [--copies 10] [--work_dir DIR] [--model PATH] [--label TEXT]
        [--no_record]

``--data`` (default: the long-document New-Wiki TyDi file) is replicated ``--copies`` times
with new example ids (``<id>-r<k>`` for copy k >= 1) into ``--work_dir`` (the copy is named
by the file's content; each run starts its training children afresh there). Both the 1x and
the replicated file are preprocessed first (``preprocess.py`` children, cache in
``<work_dir>/cache``, reused by later runs), so the measured runs are cache hits. Then, for each
file, a child process runs

    train_accelerate.py --model <packaged MiniLM> --train_data <file>
        --eval_data qa_core/data/squadshifts_new_wiki_eval.json.gz --max_eval_examples 20
        --max_train_steps 5 --cache_dir <work_dir>/cache --output_dir <work_dir>/run-<n>x
        --overwrite_output_dir

and its peak RSS is read from ``os.wait4``'s rusage (``ru_maxrss`` of that child alone).
Appends one record to ``bench/results/rss.jsonl``: the commands, the cached feature counts,
each peak, their ratio (target <= 1.3) and the MB added per 100k cached features.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    command_label,
    model_label,
    packaged_model,
    print_summary,
    resolve_data_files,
    resolve_model,
)
from qa_core.errors import first_line  # noqa: E402
from qa_core.files import sha256_file  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tydi_format" / "new_wiki_primary.jsonl.gz"
EVAL_DATA = "qa_core/data/squadshifts_new_wiki_eval.json.gz"
RSS_TARGET = 1.3


def replicated_path(work_dir: Path, source: Path, copies: int) -> Path:
    """Where the ``copies``-fold copy of ``source`` goes: named by the file's name and a prefix
    of the sha256 of its bytes, so that another file of the same name is never served an old
    copy."""
    digest = sha256_file(source)
    return work_dir / f"{source.name.split('.')[0]}-{digest[:12]}_x{copies}.jsonl.gz"


def replicate(source: Path, copies: int, target: Path) -> int:
    """Write ``copies`` copies of the JSONL(.gz) ``source`` to ``target`` (gzip), copy k >= 1
    with ids ``<id>-r<k>`` (the ``id`` field, else ``example_id``: the official TyDi schema;
    a row with neither gets its id from its position, new in each copy); returns the number of
    records written. Skips work when present (``target`` is named by the content:
    :func:`replicated_path`)."""
    if target.is_file():
        with gzip.open(target, "rt", encoding="utf-8") as handle:
            return sum(1 for _ in handle)
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    partial = target.with_suffix(".partial")
    written = 0
    with gzip.open(partial, "wt", encoding="utf-8", compresslevel=1) as out:
        for k in range(copies):
            for line in lines:
                record = json.loads(line)
                key = next((key for key in ("id", "example_id")
                            if isinstance(record, dict) and record.get(key) is not None), None)
                if k and key:
                    record[key] = f"{record[key]}-r{k}"
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    partial.rename(target)
    return written


def run_child(command: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run ``command`` in the repository; (exit status, peak RSS in MB, seconds)."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - started


def last_json_line(path: Path) -> dict:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{path}: no JSON summary line (see the log)")


def build_cache(data: str, model: str, cache_dir: Path, log_path: Path) -> dict:
    """``preprocess.py`` as a child (a cache hit when the entry exists); its summary."""
    command = [sys.executable, "preprocess.py", "--data", data, "--model", model,
               "--cache_dir", str(cache_dir)]
    code, _, _ = run_child(command, log_path)
    if code:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log_path}")
    return last_json_line(log_path)


def measure(data: str, model: str, work_dir: Path, name: str) -> dict:
    """One training child on ``data`` (cache already built); its command, peak RSS and summary."""
    command = [sys.executable, "train_accelerate.py", "--model", model, "--train_data", data,
               "--eval_data", EVAL_DATA, "--max_eval_examples", "20", "--max_train_steps", "5",
               "--cache_dir", str(work_dir / "cache"),
               "--output_dir", str(work_dir / f"run-{name}"),
               "--overwrite_output_dir"]  # the work folder is reused between runs
    log_path = work_dir / f"train-{name}.log"
    code, peak_mb, seconds = run_child(command, log_path)
    if code:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log_path}")
    summary = last_json_line(log_path)
    return {"command": command_label(command), "peak_rss_mb": round(peak_mb, 1),
            "seconds": round(seconds, 1), "f1": summary["f1"],
            "global_step": summary["global_step"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="TyDi-schema JSONL(.gz) to grow")
    parser.add_argument("--copies", type=int, default=10,
                        help="replication factor of the large run")
    parser.add_argument("--work_dir",
                        default=str(Path(tempfile.gettempdir()) / "qa-accelerate-rss"),
                        help="replicated file, cache and run folders (reused between runs)")
    parser.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--label", default=None, help="a note stored with the record")
    parser.add_argument("--no_record", action="store_true", help="do not append to bench/results")
    args = parser.parse_args(argv)
    data_arg = args.data  # as given, for messages
    given = resolve_data_files(parser, args, "data")
    if not args.data.endswith((".jsonl", ".jsonl.gz")):
        parser.error(f"--data {data_arg}: rss.py replicates the rows of a JSON Lines file "
                     "(.jsonl or .jsonl.gz)")
    if args.copies < 2:
        parser.error(f"--copies {args.copies}: must be at least 2")
    model = resolve_model(parser, args.model or packaged_model())  # before any copy is made
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    big = replicated_path(work_dir, Path(args.data), args.copies)
    try:
        records = replicate(Path(args.data), args.copies, big)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:  # e.g. not gzip
        parser.error(f"--data {data_arg}: cannot be replicated as JSON Lines "
                     f"({type(err).__name__}: {first_line(err)})")

    files = {"1x": args.data, f"{args.copies}x": str(big)}
    features = {}
    for name, data in files.items():
        summary = build_cache(data, model, work_dir / "cache", work_dir / f"preprocess-{name}.log")
        features[name] = summary["features"]
    runs = {name: measure(data, model, work_dir, name) for name, data in files.items()}

    small, large = runs["1x"]["peak_rss_mb"], runs[f"{args.copies}x"]["peak_rss_mb"]
    added = (features[f"{args.copies}x"] - features["1x"]) / 1e5
    record = {
        "label": args.label, "data": given["data"], "copies": args.copies,
        "replicated_examples": records,
        "model": model_label(model), "eval_data": EVAL_DATA, "train_features": features,
        "runs": runs, "peak_rss_ratio": round(large / small, 3), "target_ratio": RSS_TARGET,
        "meets_target": large / small <= RSS_TARGET,
        "mb_per_100k_features": round((large - small) / added, 1),
    }
    if not args.no_record:
        append_record("rss", record)
    print_summary(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
