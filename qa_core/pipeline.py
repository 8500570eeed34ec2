"""Source -> cached, tokenized Arrow dataset (``features`` + ``examples``), shared by all scripts.

``prepare`` is what ``preprocess.py`` runs and what ``train_accelerate.py`` calls, so both
read and write the same cache entries. Examples stream from the reader in batches to
``num_proc`` workers and back to shard writers, with a bounded number of batches in flight,
so memory stays flat however large the input is. The cache key covers the data's content,
the tokenizer, every setting that changes the output and ``CODE_VERSION`` — not the worker
count or the shard size, which change neither the rows nor their order.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from qa_core.cache import (
    CacheEntryWriter, finished_entry, fingerprint, read_summary, tokenizer_files_fingerprint, tokenizer_fingerprint,
)
from qa_core.errors import QAError
from qa_core.features import FeatureBuilder, FeatureConfig, FeatureStats
from qa_core.readers import ExampleSource, ReadStats, SourceSpec, open_source

CODE_VERSION = "features-v2"  # v2: summaries record the source schema ("formats")

EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("context", pa.string()),
    ("answers", pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])),
    ("title", pa.string()), ("language", pa.string()), ("yes_no_answer", pa.string()),
    ("passage_answer_start", pa.int32()), ("passage_answer_end", pa.int32()),
])


@dataclass(frozen=True)
class PreprocessConfig:
    data: str
    model: str
    cache_dir: str
    split: str = "train"
    language: str = "english"
    hub_config: str | None = None
    max_length: int = 384
    doc_stride: int = 128
    num_proc: int = 1
    batch_size: int = 64            # examples per worker task
    rows_per_shard: int = 20_000    # features per Arrow shard
    overwrite_cache: bool = False


@dataclass
class PrepareResult:
    entry: Path
    summary: dict


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, use_fast=True)
    except (OSError, ValueError) as err:  # transformers raises either for a folder without one
        raise QAError(
            f"cannot load a tokenizer for {model!r}: not a local model folder, and the hub could not "
            f"supply it ({str(err).splitlines()[0][:160]}); pass a local folder or run where there is network"
        ) from None


def tokenizer_key(model: str, tokenizer=None) -> tuple[str, object | None]:
    """(fingerprint of the tokenizer, the tokenizer if it was given or had to be loaded).

    ``tokenizer``, when given, must be ``model``'s tokenizer already loaded by the caller.
    """
    key = tokenizer_files_fingerprint(model)
    if key is not None:
        return key, tokenizer
    tokenizer = tokenizer or load_tokenizer(model)  # a hub name: only the loaded tokenizer can say what it is
    return tokenizer_fingerprint(tokenizer), tokenizer


def cache_key(source: ExampleSource, tokenizer_key: str, config: PreprocessConfig) -> str:
    return fingerprint({
        "code": CODE_VERSION,
        "data": source.fingerprint,
        "source_kind": source.kind,
        "split": config.split if source.kind in ("hub", "load_from_disk") else None,
        "language": config.language.lower(),
        "hub_config": config.hub_config,
        "tokenizer": tokenizer_key,
        "features": FeatureConfig(config.max_length, config.doc_stride).as_dict(),
    })


# Worker side: one FeatureBuilder per process, created once.
_builder: FeatureBuilder | None = None


def _init_worker(model: str, feature_config: FeatureConfig) -> None:
    global _builder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    if _builder is None or _builder.config != feature_config:  # a forked worker inherits the parent's
        _builder = FeatureBuilder(load_tokenizer(model), feature_config)


def _process_batch(examples: list[dict]) -> tuple[pa.RecordBatch, pa.RecordBatch, FeatureStats]:
    features, stats = _builder.build(examples)
    kept_ids = set(features.column("example_id").to_pylist())
    kept = [e for e in examples if e["id"] in kept_ids]
    return features, pa.RecordBatch.from_pylist(kept, schema=EXAMPLE_SCHEMA), stats


def _batches(examples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for example in examples:
        batch.append(example)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ordered_results(batches: Iterator[list[dict]], config: PreprocessConfig, builder: FeatureBuilder):
    """Results in input order; at most ``2 * num_proc`` batches in flight so memory stays flat."""
    global _builder
    _builder = builder
    if config.num_proc <= 1:
        for batch in batches:
            yield _process_batch(batch)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before forking: workers must not spawn thread pools
    with multiprocessing.get_context(method).Pool(config.num_proc, _init_worker,
                                                  (config.model, builder.config)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_process_batch, (batch,)))
            if len(pending) >= 2 * config.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare(config: PreprocessConfig, tokenizer=None) -> PrepareResult:
    """Build (or reuse) the cache entry for ``config``; returns its folder and summary.

    ``tokenizer``: ``config.model``'s tokenizer when the caller has already loaded it
    (a training run does), so it is not loaded a second time.
    """
    started = time.perf_counter()
    source = open_source(SourceSpec(config.data, config.split, config.language, config.hub_config))
    feature_config = FeatureConfig(config.max_length, config.doc_stride)  # validates the settings
    tokenizer_fp, tokenizer = tokenizer_key(config.model, tokenizer)
    key = cache_key(source, tokenizer_fp, config)
    cache_root = Path(config.cache_dir)

    entry = finished_entry(cache_root, key)
    if entry is not None and not config.overwrite_cache:
        summary = read_summary(entry)
        # seconds and examples_per_s describe this run; the build's own figures keep a build_ prefix
        summary.update(build_seconds=summary.pop("seconds"), build_examples_per_s=summary.pop("examples_per_s"))
        summary.update(cache_hit=True, seconds=round(time.perf_counter() - started, 3), cache_dir=str(entry))
        summary["examples_per_s"] = round(summary["examples"] / summary["seconds"], 1) if summary["seconds"] else None
        return PrepareResult(entry, summary)

    tokenizer = tokenizer or load_tokenizer(config.model)
    builder = FeatureBuilder(tokenizer, feature_config)  # validates the tokenizer before any work
    writer = CacheEntryWriter(cache_root, key, config.rows_per_shard)
    read_stats, feature_stats = ReadStats(), FeatureStats()
    example_rows = windows_with_answer = 0
    try:
        batches = _batches(source.iter_examples(read_stats), config.batch_size)
        for features, examples, stats in _ordered_results(batches, config, builder):
            writer.splits["features"].write(features)
            writer.splits["examples"].write(examples)
            feature_stats.add(stats)
            example_rows += examples.num_rows
            windows_with_answer += pc.sum(features.column("has_answer")).as_py() or 0
        skipped = Counter(read_stats.skipped) + Counter(feature_stats.skipped)
        seconds = time.perf_counter() - started
        summary = {
            "cache_dir": str(cache_root / key),
            "cache_hit": False,
            "key": key,
            "source": source.description,
            "source_kind": source.kind,
            "examples": example_rows,
            "answerable": feature_stats.answerable,
            "features": feature_stats.features,
            "features_with_answer": windows_with_answer,
            "answers_covered": feature_stats.answers_covered,
            "skipped": dict(sorted(skipped.items())),
            "notes": read_stats.as_dict()["notes"],
            "formats": read_stats.as_dict()["formats"],
            "settings": {k: v for k, v in asdict(config).items() if k not in ("cache_dir", "overwrite_cache")},
            "num_shards": {name: len(w.files) or 1 for name, w in writer.splits.items()},
            "seconds": round(seconds, 3),
            "examples_per_s": round(example_rows / seconds, 1) if seconds else None,
        }
        schemas = {"features": builder.build([])[0].schema, "examples": EXAMPLE_SCHEMA}
        entry = writer.commit(summary, schemas, overwrite=config.overwrite_cache)
    except BaseException:
        writer.abort()
        raise
    return PrepareResult(entry, summary)


def first_examples(features: pa.Table, examples: pa.Table, limit: int | None) -> tuple[pa.Table, pa.Table]:
    """The first ``limit`` examples of a cache entry and exactly their features (every window)."""
    if limit is None or limit >= examples.num_rows:
        return features, examples
    examples = examples.slice(0, limit)
    keep = pc.is_in(features.column("example_id"), value_set=examples.column("id"))
    return features.filter(keep), examples
