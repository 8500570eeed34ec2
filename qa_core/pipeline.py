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
    CacheEntryWriter, check_writable_folder, entry_problem, fingerprint, read_summary, remove_leftovers,
    tokenizer_files_fingerprint, tokenizer_fingerprint,
)
from qa_core.errors import QAError, SettingsError
from qa_core.features import FeatureBuilder, FeatureConfig, FeatureStats
from qa_core.readers import DataSourceError, ExampleSource, ReadStats, SourceSpec, open_source

# v2: summaries record the source schema ("formats"). v3: entries carry a manifest checked on
# every hit; the language filter runs before notes/skips are counted; negative answer starts
# are skipped.
CODE_VERSION = "features-v3"

EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("context", pa.string()),
    ("answers", pa.struct([("text", pa.list_(pa.string())),
                           ("answer_start", pa.list_(pa.int32()))])),
    ("title", pa.string()), ("language", pa.string()), ("yes_no_answer", pa.string()),
    ("passage_answer_start", pa.int32()), ("passage_answer_end", pa.int32()),
])


def check_preprocess_settings(max_length: int, doc_stride: int, num_proc: int = 1,
                              batch_size: int = 64, rows_per_shard: int = 20_000,
                              language: str = "english") -> None:
    """Refuse out-of-range preprocessing settings, naming the flag (``SettingsError``).

    The same checks serve ``preprocess.py`` and the training script (its flags of these names
    mean the same). What depends on the tokenizer (``max_length`` above the model's limit) is
    checked when the tokenizer is loaded.
    """
    for flag, value in (("--max_length", max_length), ("--doc_stride", doc_stride),
                        ("--num_proc", num_proc), ("--batch_size", batch_size),
                        ("--rows_per_shard", rows_per_shard)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SettingsError(f"{flag} {value!r}: must be an integer")
        minimum = 0 if flag == "--doc_stride" else 1
        if value < minimum:
            raise SettingsError(f"{flag} {value}: must be at least {minimum}")
    if doc_stride >= max_length:
        raise SettingsError(f"--doc_stride {doc_stride}: must be below --max_length ({max_length}): "
                           "it is the overlap between consecutive windows")
    if not isinstance(language, str) or not language.strip():
        raise SettingsError(f"--language {language!r}: give a language name (e.g. english) or 'all'")


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

    def validate(self) -> None:
        """:func:`check_preprocess_settings` on this config's values."""
        check_preprocess_settings(self.max_length, self.doc_stride, self.num_proc, self.batch_size,
                                  self.rows_per_shard, self.language)


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
            f"cannot load a tokenizer for {model!r}: not a local model folder, and the hub could "
            f"not supply it ({str(err).splitlines()[0][:160]}); pass a local folder or run where "
            "there is network"
        ) from None


def tokenizer_key(model: str, tokenizer=None) -> tuple[str, object | None]:
    """(fingerprint of the tokenizer, the tokenizer if it was given or had to be loaded).

    ``tokenizer``, when given, must be ``model``'s tokenizer already loaded by the caller.
    """
    key = tokenizer_files_fingerprint(model)
    if key is not None:
        return key, tokenizer
    # a hub name: only the loaded tokenizer can say what it is
    tokenizer = tokenizer or load_tokenizer(model)
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
    # a forked worker inherits the parent's builder
    if _builder is None or _builder.config != feature_config:
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


def _ordered_results(batches: Iterator[list[dict]], config: PreprocessConfig,
                     builder: FeatureBuilder):
    """Results in input order; at most ``2 * num_proc`` batches in flight so memory stays flat."""
    global _builder
    _builder = builder
    if config.num_proc <= 1:
        for batch in batches:
            yield _process_batch(batch)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # set before forking: workers must not spawn thread pools
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
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
    (a training run does), so it is not loaded a second time. Settings and the cache folder
    are checked before anything is read. Every run removes what killed runs left in the cache
    folder; a finished entry is reused only when its files are whole, else it is rebuilt and
    the summary's ``cache_rebuilt`` says why.
    """
    started = time.perf_counter()
    config.validate()
    cache_root = Path(config.cache_dir)
    check_writable_folder(cache_root)
    source = open_source(SourceSpec(config.data, config.split, config.language, config.hub_config))
    feature_config = FeatureConfig(config.max_length, config.doc_stride)
    tokenizer_fp, tokenizer = tokenizer_key(config.model, tokenizer)
    key = cache_key(source, tokenizer_fp, config)
    leftovers = len(remove_leftovers(cache_root))

    entry, problem = cache_root / key, None
    if entry.exists() and not config.overwrite_cache:
        problem = entry_problem(entry)
        if problem is None:
            return PrepareResult(entry, _hit_summary(entry, started, leftovers))

    tokenizer = tokenizer or load_tokenizer(config.model)
    builder = FeatureBuilder(tokenizer, feature_config)  # validates the tokenizer before any work
    writer = CacheEntryWriter(cache_root, key, config.rows_per_shard)
    try:
        summary = _write_entry(writer, source, config, builder)
        summary.update(cache_rebuilt=problem, leftovers_removed=leftovers)
        seconds = time.perf_counter() - started
        summary.update(seconds=round(seconds, 3),
                       examples_per_s=round(summary["examples"] / seconds, 1) if seconds else None)
        schemas = {"features": builder.build([])[0].schema, "examples": EXAMPLE_SCHEMA}
        entry = writer.commit(summary, schemas, overwrite=config.overwrite_cache,
                              damaged=problem is not None)
    except BaseException:
        writer.abort()
        raise
    return PrepareResult(entry, summary)


def _hit_summary(entry: Path, started: float, leftovers: int) -> dict:
    """The stored summary of a reused entry, with this run's figures."""
    summary = read_summary(entry)
    # seconds and examples_per_s describe this run; the build's own figures keep a build_ prefix
    summary.update(build_seconds=summary.pop("seconds"),
                   build_examples_per_s=summary.pop("examples_per_s"))
    summary.update(cache_hit=True, seconds=round(time.perf_counter() - started, 3),
                   cache_dir=str(entry), cache_rebuilt=None, leftovers_removed=leftovers)
    summary["examples_per_s"] = (round(summary["examples"] / summary["seconds"], 1)
                                 if summary["seconds"] else None)
    return summary


def _write_entry(writer: CacheEntryWriter, source: ExampleSource, config: PreprocessConfig,
                 builder: FeatureBuilder) -> dict:
    """Stream the source through the workers into ``writer``; the summary's counts.

    A source that yields no example (every row skipped, filtered out or without a window) is
    an error naming the source and the counts, not an empty entry.
    """
    read_stats, feature_stats = ReadStats(), FeatureStats()
    example_rows = windows_with_answer = 0
    batches = _batches(source.iter_examples(read_stats), config.batch_size)
    for features, examples, stats in _ordered_results(batches, config, builder):
        writer.splits["features"].write(features)
        writer.splits["examples"].write(examples)
        feature_stats.add(stats)
        example_rows += examples.num_rows
        windows_with_answer += pc.sum(features.column("has_answer")).as_py() or 0
    skipped = dict(sorted((Counter(read_stats.skipped) + Counter(feature_stats.skipped)).items()))
    read = read_stats.as_dict()
    if example_rows == 0:
        raise DataSourceError(empty_result_message(source.description, read, skipped))
    return {
        "cache_dir": str(writer.cache_root / writer.key),
        "cache_hit": False,
        "key": writer.key,
        "source": source.description,
        "source_kind": source.kind,
        "examples": example_rows,
        "answerable": feature_stats.answerable,
        "features": feature_stats.features,
        "features_with_answer": windows_with_answer,
        "answers_covered": feature_stats.answers_covered,
        "skipped": skipped,
        "notes": read["notes"],
        "formats": read["formats"],
        "settings": {k: v for k, v in asdict(config).items()
                     if k not in ("cache_dir", "overwrite_cache")},
        "num_shards": {name: len(w.files) or 1 for name, w in writer.splits.items()},
    }


def empty_result_message(source: str, read: dict, skipped: dict) -> str:
    """One line: why ``source`` gave no example (rows read, skips and notes by reason)."""
    rows = sum(read["formats"].values()) + read["notes"].get("other_language", 0)
    parts = [f"{source}: no usable examples: {rows} rows read"]
    if skipped:
        parts.append("skipped " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    if read["notes"].get("other_language"):
        parts.append(f"{read['notes']['other_language']} rows of another language than the one "
                     "kept (--language)")
    if "question_too_long" in skipped:
        parts.append("raise --max_length or lower --doc_stride")
    return "; ".join(parts)


def first_examples(features: pa.Table, examples: pa.Table,
                   limit: int | None) -> tuple[pa.Table, pa.Table]:
    """The first ``limit`` examples of a cache entry and exactly their features (every window)."""
    if limit is None or limit >= examples.num_rows:
        return features, examples
    examples = examples.slice(0, limit)
    keep = pc.is_in(features.column("example_id"), value_set=examples.column("id"))
    return features.filter(keep), examples
