"""What a run leaves in ``output_dir`` and prints: log.jsonl (:class:`RunLog`, written as it
runs), model + tokenizer, metrics.json, predictions.json, tydi_predictions.jsonl (TyDi
evaluation data), train_config.json, and the JSON summary (the last line printed)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from qa_core.errors import SettingsError
from qa_core.files import pid_alive

LOCK_FILE = ".run.lock"  # "<pid> <host>" of the run writing into the folder

SUMMARY_METRICS = ("exact_match", "f1", "start_f1", "end_f1")
# headline metrics shown when the evaluation data is TyDi (qa_core.tydi_predict.tydi_metrics)
TYDI_SUMMARY_METRICS = ("tydi_passage_f1", "tydi_minimal_f1", "tydi_headline")
TYDI_PREDICTIONS_FILE = "tydi_predictions.jsonl"


def run_summary(metrics: dict, state, trained, accelerator, output_dir: Path,
                **facts: Any) -> dict[str, Any]:
    """The JSON summary: headline metrics, all metrics, and the run's facts (``facts`` adds
    more, e.g. the distribution in effect and how the cache was built)."""
    return {
        **{k: metrics[k] for k in SUMMARY_METRICS},
        **{k: metrics[k] for k in TYDI_SUMMARY_METRICS if k in metrics},
        "metrics": metrics, "global_step": state.global_step, "samples_seen": state.samples_seen,
        "nonfinite_steps": state.nonfinite_steps,
        # best_f1: the best value of metric_for_best_model (SQuAD F1 unless chosen otherwise)
        "metric_for_best_model": state.settings.get("metric_for_best_model"),
        "best_f1": state.best_f1, "best_step": state.best_step,
        "averaged_steps": state.averaged_steps,
        "train_seconds": round(trained.seconds, 2),  # trained: this process's TrainedSpan
        "train_samples_per_s": trained.samples_per_s,
        "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        **facts, "output_dir": str(output_dir),
    }


def write_run_files(output_dir: Path, summary: dict, predictions: dict, config: dict,
                    tokenizer, tydi_predictions: list | None = None) -> None:
    """Main process only: tokenizer (also in ``best_model/``, so that folder loads on its own,
    e.g. with ``qa-answer``), metrics.json, train_config.json, predictions.json, and on TyDi
    evaluation data ``tydi_predictions.jsonl`` (TyDi's official prediction format; an earlier
    run's is removed otherwise)."""
    from qa_core.tydi_eval import write_predictions

    tokenizer.save_pretrained(output_dir)
    if (output_dir / "best_model").is_dir():
        tokenizer.save_pretrained(output_dir / "best_model")
    metrics = {**summary["metrics"], **{k: v for k, v in summary.items() if k != "metrics"}}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (output_dir / "train_config.json").write_text(json.dumps(config, indent=2))
    (output_dir / "predictions.json").write_text(
        json.dumps({k: p.text for k, p in predictions.items()}, ensure_ascii=False, indent=1))
    if tydi_predictions is None:
        (output_dir / TYDI_PREDICTIONS_FILE).unlink(missing_ok=True)
    else:
        write_predictions(output_dir / TYDI_PREDICTIONS_FILE, tydi_predictions)


def demo_answers(model, tokenizer, decode_config, summary: dict) -> None:
    """Answer the packaged comic-book questions, print them (each judged by its key words)
    under the held-out metrics, and add ``demo_answers`` (question -> answer) and
    ``demo_answers_right`` (how many of them are right) to ``summary``."""
    from qa_core.inference import answer_questions, demo_passage, demo_verdicts

    passage = demo_passage()
    answers = answer_questions(model, tokenizer, passage["questions"], passage["context"],
                               decode_config)
    verdicts = demo_verdicts([a.answer for a in answers], passage)
    print(f"\nheld-out New-Wiki questions: EM {summary['exact_match']:.2f}  "
          f"F1 {summary['f1']:.2f}  start F1 {summary['start_f1']:.3f}  "
          f"end F1 {summary['end_f1']:.3f}\n")
    for answer, verdict in zip(answers, verdicts):
        print(f"Q: {answer.question}\nA: {answer.answer}   [{verdict}]\n")
    summary["demo_answers"] = {a.question: a.answer for a in answers}
    summary["demo_answers_right"] = verdicts.count("right")


# What a finished run writes beside its checkpoints (model, metrics, best model), removed by a
# new run with --overwrite_output_dir.
EARLIER_RESULTS = ("model.safetensors", "config.json", "metrics.json", "predictions.json",
                   "train_config.json", "best_model")


def check_new_run_output(accelerator, output_dir: Path, resume_from_checkpoint: str | None,
                         overwrite: bool) -> None:
    """A new run (no ``--resume_from_checkpoint``) into an ``output_dir`` holding an earlier
    run's checkpoints is refused, unless ``overwrite`` (then they are deleted first): otherwise
    both runs' checkpoints would sit side by side, pruned together, and ``auto`` would later
    resume whichever step is newest. Collective: a refusal on any process (each machine looks
    for itself) is raised on all of them."""
    from qa_core.checkpoints import CheckpointError, remove_checkpoint, step_folders
    from qa_core.processes import on_every_process

    if resume_from_checkpoint:
        return

    def refuse_or_clear() -> None:
        earlier = step_folders(output_dir)  # unfinished ones too: a killed run's last save
        if earlier and not overwrite:
            raise CheckpointError(
                f"--output_dir {output_dir}: holds an earlier run's checkpoints "
                f"({', '.join(p.name for p in earlier)}): resume it with --resume_from_checkpoint "
                "auto, start afresh with --overwrite_output_dir (deletes them), or give another "
                "--output_dir")
        if not accelerator.is_main_process:
            return
        # the earlier run's results go too, so a new run that fails leaves none beside its own
        # log; its best_model/ goes in any case: this run chooses its own (or none)
        if not overwrite and (Path(output_dir) / "best_model").exists():
            accelerator.print(f"warning: --output_dir {output_dir}: removing an earlier run's "
                              "best_model/ (this run chooses its own)")
        for name in EARLIER_RESULTS if overwrite else ("best_model",):
            target = Path(output_dir) / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for folder in earlier:  # none unless overwrite
            remove_checkpoint(folder)

    on_every_process(accelerator, refuse_or_clear, CheckpointError)  # the barrier after it too


@contextmanager
def output_dir_lock(output_dir: Path, holder: bool) -> Iterator[None]:
    """One run at a time in ``output_dir``: ``holder`` (the launch's rank 0) takes
    ``output_dir/.run.lock`` for the run's duration. Two runs started together each saw no
    checkpoints yet and wrote into the same folder (mixed log records, one run failing on the
    other's half-written checkpoint). A lock whose process is gone (kill -9) is taken over."""
    if not holder:
        yield
        return
    folder = Path(output_dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path, mine = folder / LOCK_FILE, f"{os.getpid()} {socket.gethostname()}"
    _take_lock(path, mine)
    try:
        yield
    finally:
        if _read_lock(path) == mine:
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a run refused before writing anything leaves no folder


def _take_lock(path: Path, mine: str) -> None:
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = _read_lock(path)
            pid, _, host = held.partition(" ")
            if held and host != socket.gethostname():
                raise SettingsError(f"--output_dir {path.parent}: a run on {host} (pid {pid}) "
                                    f"is writing into it; remove {path} if that run is gone")
            if held and pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                raise SettingsError(f"--output_dir {path.parent}: another run (pid {pid}) is "
                                    "writing into it; wait for it or give another --output_dir")
            path.unlink(missing_ok=True)  # its run is gone (or the file is empty): take it
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(mine)
        return
    raise SettingsError(f"--output_dir {path.parent}: could not take {path}")


def _read_lock(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


class RunLog:
    """``log.jsonl`` (main process) and the experiment tracker, one record per event."""

    def __init__(self, accelerator, path: Path, report_to: str) -> None:
        self.accelerator = accelerator
        self.path = path
        self.report_to = report_to
        self.started = time.perf_counter()

    def write(self, record: dict) -> None:
        record = {**record, "time_s": round(time.perf_counter() - self.started, 3)}
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.report_to != "none":
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=record.get("step"))


def start_log(accelerator, output_dir: Path, report_to: str,
              new_run: bool) -> tuple[RunLog, dict]:
    """The run's log, opened with the distribution in effect (also printed): distributed type,
    world size, machines, mixed precision and sharding. A new run starts ``log.jsonl`` afresh;
    a resumed one goes on appending to its run's."""
    from qa_core.hardware import describe_distribution, distribution_line

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if new_run:
            (output_dir / "log.jsonl").unlink(missing_ok=True)
    log = RunLog(accelerator, output_dir / "log.jsonl", report_to)
    distribution = describe_distribution(accelerator)
    log.write({"event": "distribution", **distribution})
    accelerator.print(distribution_line(distribution))
    return log, distribution
