"""Source -> cached, tokenized Arrow dataset (``features`` + ``examples``), shared by all scripts.

``prepare`` is what ``preprocess.py`` runs and what ``train_accelerate.py`` calls, so both
read and write the same cache entries. The cache key covers the data's content, the tokenizer,
every setting that changes the output and ``CODE_VERSION`` — not the worker count or the shard
size, which change neither the rows nor their order.

How an entry is built: the main process only reads the source into chunks of rows (a
.jsonl(.gz) file: undecoded lines) and hands each chunk to a worker as a *task*. The worker
parses and checks the rows, tokenizes and windows them and writes the task's own shards into
the entry's temporary folder; it sends back only counts, ids and file names. The main process
takes the results in input order (an id an earlier task already kept is a duplicate: that
task is redone without it), names the shards in that order and commits the entry, so rows and
their order are those of ``num_proc=1``, which runs the same tasks in the main process. At
most ``2 * num_proc`` tasks are read ahead, so memory stays flat however large the input is.
Every stage is timed in CPU seconds (``summary["cpu_seconds"]``).
"""
from __future__ import annotations

import copy
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from qa_core.cache import (
    SPLITS,
    SUMMARY_FILE,
    CacheEntryWriter,
    ShardWriter,
    check_writable_folder,
    entry_problem,
    fingerprint,
    no_space_error,
    remove_leftovers,
    tokenizer_files_fingerprint,
    tokenizer_fingerprint,
    write_split_info,
)
from qa_core.errors import QAError, SettingsError, first_line
from qa_core.features import FeatureBuilder, FeatureConfig, FeatureStats
from qa_core.files import read_json
from qa_core.readers import (
    Chunk,
    DataSourceError,
    ExampleSource,
    ReadStats,
    SourceSpec,
    examples_from_rows,
    open_source,
)

# Part of every cache key: raise it whenever the same inputs would give other rows or counts,
# so entries built by older code are rebuilt rather than reused.
CODE_VERSION = "features-v8"

EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("context", pa.string()),
    ("answers", pa.struct([("text", pa.list_(pa.string())),
                           ("answer_start", pa.list_(pa.int32()))])),
    ("title", pa.string()), ("language", pa.string()), ("yes_no_answer", pa.string()),
    ("passage_answer_start", pa.int32()), ("passage_answer_end", pa.int32()),
    # TyDi only (null otherwise): offsets in UTF-8 bytes of the context, as the data gives them
    ("tydi_annotations", pa.list_(pa.struct([
        ("passage_index", pa.int64()), ("minimal_start_byte", pa.int64()),
        ("minimal_end_byte", pa.int64()), ("yes_no_answer", pa.string())]))),
    ("passage_candidates", pa.list_(pa.struct([("start_byte", pa.int64()),
                                               ("end_byte", pa.int64())]))),
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
        raise SettingsError(f"--doc_stride {doc_stride}: must be below --max_length "
                            f"({max_length}): it is the overlap between consecutive windows")
    if not isinstance(language, str) or not language.strip():
        raise SettingsError(f"--language {language!r}: give a language name (e.g. english) "
                            "or 'all'")


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
    label_answer: str = "first"
    num_proc: int = 1
    batch_size: int = 64            # examples per worker task
    rows_per_shard: int = 20_000    # features per Arrow shard
    overwrite_cache: bool = False

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(self.max_length, self.doc_stride, self.label_answer)


@dataclass
class PrepareResult:
    entry: Path
    summary: dict


def load_tokenizer(model: str):
    """``model``'s fast tokenizer. A local folder's tokenizer files that cannot be read, or that
    give a vocabulary far smaller than the model's, are refused naming the folder: transformers
    otherwise builds a 5-token tokenizer from a lone ``tokenizer_config.json`` and every word
    becomes ``[UNK]``, with no error."""
    from transformers import AutoTokenizer

    folder = Path(model).expanduser()
    local = folder.is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder) if local else model, use_fast=True)
    except Exception as err:  # noqa: BLE001 - damaged files raise KeyError, JSON and Rust errors
        reason = f"{type(err).__name__}: {first_line(err)}"[:160]
        if local:
            raise QAError(f"--model {folder}: its tokenizer files cannot be loaded (damaged or "
                          f"incomplete; found {', '.join(_tokenizer_files(folder)) or 'none'}: "
                          f"{reason})") from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise QAError(
            f"cannot load a tokenizer for {model!r}: not a local model folder, and the hub could "
            f"not supply it ({reason}); pass a local folder or run where there is network"
        ) from None
    if local:
        config = _model_config(folder)
        vocab_size = config.get("vocab_size")
        # models round vocab_size up, so a little less is normal; under half means the
        # tokenizer's vocabulary files are missing
        if isinstance(vocab_size, int) and len(tokenizer) < vocab_size / 2:
            raise QAError(
                f"--model {folder}: its tokenizer has {len(tokenizer)} tokens, the model's "
                f"vocabulary {vocab_size}: the tokenizer's vocabulary file is missing or damaged "
                f"(found {', '.join(_tokenizer_files(folder)) or 'none'}; a BERT-style folder "
                "needs tokenizer.json or vocab.txt)")
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0 and tokenizer.model_max_length >= 10**6:
            # transformers' "no limit" placeholder: the model's positions are the limit
            # (--max_length 1000 on a 512-position model failed inside the forward pass)
            tokenizer.model_max_length = positions
    return tokenizer


def _model_config(folder: Path) -> dict:
    """The folder's config.json, or {} (check_model_folder speaks for a missing or bad one)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _tokenizer_files(folder: Path) -> list[str]:
    from qa_core.modeling import TOKENIZER_FILES

    return [name for name in TOKENIZER_FILES if (folder / name).is_file()]


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
        "split": config.split if source.has_splits else None,
        "language": config.language.lower(),
        "hub_config": config.hub_config,
        "tokenizer": tokenizer_key,
        "features": asdict(config.feature_config()),
    })


class PreprocessWorkerError(QAError):
    """A worker process died (killed, or out of memory) while building a cache entry."""


# Source bytes per task: small first tasks keep every worker busy early and small files
# balanced; then 1/16 of what was read so far, so a large source has a few hundred tasks (and
# shard files per split), not thousands. The sizes depend only on the source, so an entry's
# shards are the same for every num_proc.
TASK_BYTES_MIN = 2 << 20
TASK_BYTES_MAX = 16 << 20
STAGES = ("setup", "read", "parse", "tokenize", "window", "arrow", "write", "metadata", "commit")
FIXED_STAGES = ("setup", "commit")  # once per entry in the main process, whatever the data size


def task_bytes(read_so_far: int) -> int:
    """How many bytes of source text the next task gets."""
    return min(TASK_BYTES_MAX, max(TASK_BYTES_MIN, read_so_far // 16))


# ---------------------------------------------------------------------------------------------
# CPU seconds per stage: time.process_time counts this process's CPU (all its threads), so the
# figures hold on a busy machine, where wall-clock ratios do not.
# ---------------------------------------------------------------------------------------------

class StageClock:
    """CPU seconds of this process per named stage."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.seconds[name] += time.process_time() - start

    def timed(self, name: str, items: Iterator) -> Iterator:
        """``items``, with the time spent producing each one counted as ``name``."""
        items = iter(items)
        while True:
            with self.stage(name):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item


class _Timed:
    """A tokenizers backend whose ``encode_batch`` calls count as the "tokenize" stage."""

    def __init__(self, target, clock: StageClock) -> None:
        self._target, self._clock = target, clock

    def encode_batch(self, *args, **kwargs):
        with self._clock.stage("tokenize"):
            return self._target.encode_batch(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._target, name)


# ---------------------------------------------------------------------------------------------
# Worker side: a task's rows -> examples -> windows -> its own shards in the temporary entry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One chunk of source rows, to be written as shards named ``task-<index>-*`` in ``folder``."""

    index: int
    chunk: Chunk
    folder: str                               # the entry's temporary folder
    language: str                             # lower-case, as the reader's filter wants it
    batch_size: int
    rows_per_shard: int
    exclude: frozenset[str] = frozenset()     # ids an earlier task kept: duplicates here


@dataclass
class TaskResult:
    """What a task sends back: counts, the ids it kept, its shard files and CPU seconds."""

    files: dict[str, list[str]]               # split -> shard file names, in row order
    read: ReadStats
    features: FeatureStats
    examples: int                             # example rows written (those with a window)
    claimed: set[str]                         # ids of the examples kept (before windowing)
    cpu: dict[str, float]                     # CPU seconds per stage of this task
    pid: int
    process_cpu: float                        # CPU seconds of the process so far


@dataclass
class _WorkerState:
    builder: FeatureBuilder                   # its backend's encode_batch calls are timed
    clock: StageClock
    schemas: dict[str, pa.Schema]


_worker: _WorkerState | None = None


def _set_worker(builder: FeatureBuilder) -> None:
    """Make this process ready to run tasks with ``builder`` (a forked worker inherits it)."""
    global _worker
    clock = StageClock()
    timed = copy.copy(builder)
    timed.backend = _Timed(builder.backend, clock)
    schemas = {"features": builder.build([])[0].schema, "examples": EXAMPLE_SCHEMA}
    _worker = _WorkerState(timed, clock, schemas)


def _exit_with_parent(parent: int) -> None:
    """A worker whose main process died (SIGKILL) exits instead of waiting for tasks forever."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(model: str, feature_config: FeatureConfig, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the workers
    # a forked worker inherits the main process's builder; a spawned one loads the tokenizer
    if _worker is None or _worker.builder.config != feature_config:
        _set_worker(FeatureBuilder(load_tokenizer(model), feature_config))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _batches(examples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(itertools.islice(examples, size)):
        yield batch


def run_task(task: Task) -> TaskResult:
    """Parse, check, window and write one task (in a worker, or in the main process)."""
    worker = _worker
    clock = worker.clock
    clock.seconds.clear()
    folder = Path(task.folder)
    writers = {name: ShardWriter(folder / name, task.rows_per_shard, worker.schemas[name],
                                 prefix=f"task-{task.index:06d}-") for name in SPLITS}
    read, feature_stats = ReadStats(), FeatureStats()
    seen, notes_by_id = set(task.exclude), {}
    examples = examples_from_rows(task.chunk.rows(), task.language, read, seen, notes_by_id)
    example_rows = 0
    for batch in clock.timed("parse", _batches(examples, task.batch_size)):
        with clock.stage("build"):
            features, stats = worker.builder.build(batch)
        with clock.stage("arrow"):
            kept_ids = set(features.column("example_id").to_pylist())
            kept = pa.RecordBatch.from_pylist([e for e in batch if e["id"] in kept_ids],
                                              schema=EXAMPLE_SCHEMA)
            for example in batch:  # an example no window holds takes its notes along
                notes = notes_by_id.pop(example["id"], None)
                if notes and example["id"] not in kept_ids:
                    read.notes -= notes
        with clock.stage("write"):
            writers["features"].write(features)
            writers["examples"].write(kept)
        feature_stats.add(stats)
        example_rows += kept.num_rows
    with clock.stage("write"):
        for writer in writers.values():
            writer.finish()
    if task.index == 0:  # the splits' dataset_info.json: imports datasets, so not in the main
        with clock.stage("metadata"):
            for name, schema in worker.schemas.items():
                write_split_info(folder / name, schema)
    cpu = dict(clock.seconds)
    cpu["window"] = cpu.pop("build", 0.0) - cpu.get("tokenize", 0.0)
    return TaskResult({name: [p.name for p in w.files] for name, w in writers.items()}, read,
                      feature_stats, example_rows, seen - task.exclude, cpu, os.getpid(),
                      time.process_time())


# ---------------------------------------------------------------------------------------------
# Main side: read chunks, hand them out, take the results back in input order
# ---------------------------------------------------------------------------------------------

def _tasks(source: ExampleSource, config: PreprocessConfig, folder: Path, clock: StageClock,
           progress: dict[str, int]) -> Iterator[Task]:
    """The source's chunks as tasks; reading them counts as the main process's "read" stage."""
    language = config.language.lower()
    for index, chunk in enumerate(clock.timed("read", source.chunks(task_bytes))):
        progress["rows read"] += len(chunk)
        yield Task(index, chunk, str(folder), language, config.batch_size, config.rows_per_shard)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (they may be mid-task); a broken or finished pool has none."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


@contextmanager
def _worker_pool(config: PreprocessConfig, builder: FeatureBuilder) -> Iterator:
    """``num_proc`` worker processes, forked where possible (they inherit the tokenizer)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    # set before forking: workers must not spawn thread pools (nor warn that they cannot)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pool = ProcessPoolExecutor(config.num_proc, multiprocessing.get_context(method),
                               initializer=_init_worker,
                               initargs=(config.model, builder.config, os.getpid()))
    try:
        yield pool
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _parallel_results(tasks: Iterator[Task], config: PreprocessConfig,
                      builder: FeatureBuilder) -> Iterator[tuple[Task, TaskResult]]:
    """Results in input order, the tasks run by ``num_proc`` workers.

    At most ``2 * num_proc`` tasks are read and not yet handed back. A failure (of a task, or
    of reading) is raised when its turn in input order comes, so the first problem in the
    source is the one reported, as with one process.
    """
    ahead: deque[tuple[Task | None, Future | Exception]] = deque()
    reading = True
    with _worker_pool(config, builder) as pool:
        try:
            while True:
                while reading and len(ahead) < 2 * config.num_proc:
                    try:
                        task = next(tasks)
                    except StopIteration:
                        reading = False
                    except Exception as err:  # raised in its turn, after the tasks before it
                        ahead.append((None, err))
                        reading = False
                    else:
                        ahead.append((task, pool.submit(run_task, task)))
                if not ahead:
                    return
                task, outcome = ahead.popleft()
                if task is None:
                    raise outcome
                yield task, outcome.result()
        except BrokenProcessPool:
            raise PreprocessWorkerError(
                "a preprocessing worker process died (killed, or out of memory?); nothing was "
                "cached: run again, with a lower --num_proc if memory is short") from None


@dataclass
class _Totals:
    """The merged results, in input order."""

    read: ReadStats = field(default_factory=ReadStats)
    features: FeatureStats = field(default_factory=FeatureStats)
    examples: int = 0
    seen: set[str] = field(default_factory=set)
    cpu: Counter = field(default_factory=Counter)
    worker_cpu: dict[int, float] = field(default_factory=dict)
    redone: int = 0

    def add_cpu(self, result: TaskResult) -> None:
        self.cpu.update(result.cpu)
        if result.pid != os.getpid():
            self.worker_cpu[result.pid] = max(self.worker_cpu.get(result.pid, 0.0),
                                              result.process_cpu)

    def add(self, result: TaskResult) -> None:
        self.read.add(result.read)
        self.features.add(result.features)
        self.examples += result.examples
        self.seen |= result.claimed


def _merge(task: Task, result: TaskResult, totals: _Totals, writer: CacheEntryWriter) -> None:
    """Add one task's result (the tasks before it are merged) and hand its shards to ``writer``.

    An id that an earlier task already kept makes its rows here duplicates: the task is run
    again in this process without them, so counts and rows are those of one sequential pass.
    """
    totals.add_cpu(result)
    duplicates = result.claimed & totals.seen
    if duplicates:
        for name, files in result.files.items():
            for file in files:
                (writer.tmp / name / file).unlink()
        result = run_task(replace(task, exclude=frozenset(duplicates)))
        totals.add_cpu(result)
        totals.redone += 1
    totals.add(result)
    for name, files in result.files.items():
        writer.shards[name] += [writer.tmp / name / file for file in files]


def _build(writer: CacheEntryWriter, source: ExampleSource, config: PreprocessConfig,
           builder: FeatureBuilder, clock: StageClock) -> _Totals:
    """Run every task of ``source`` (in workers when ``num_proc`` > 1) and merge the results."""
    from tqdm import tqdm

    totals = _Totals()
    with clock.stage("setup"):  # forked workers inherit what this imports and builds
        _set_worker(builder)
    progress = {"rows read": 0, "features": 0}
    tasks = _tasks(source, config, writer.tmp, clock, progress)
    results = (((task, run_task(task)) for task in tasks) if config.num_proc <= 1
               else _parallel_results(tasks, config, builder))
    # a bar only on a terminal: none in CI, pipes or log files
    bar = tqdm(desc="preprocessing", unit=" examples", file=sys.stderr, dynamic_ncols=True,
               disable=sys.stderr is None or not sys.stderr.isatty())
    try:
        for task, result in results:
            _merge(task, result, totals, writer)
            progress["features"] += result.features.features
            bar.set_postfix(progress, refresh=False)
            bar.update(result.examples)
    finally:
        results.close()  # stops the workers now if merging failed
        bar.close()
    return totals


def cpu_breakdown(main_cpu: float, stage_cpu: dict[str, float],
                  worker_cpu: dict[int, float]) -> dict:
    """CPU seconds per stage (:data:`STAGES`, summed over processes), of the main process and
    of the workers. ``read`` and ``setup``/``commit`` run in the main process, the rest in the
    tasks; ``other`` is what no stage holds (handing tasks and results between processes).

    ``workers_max``: the busiest worker's CPU seconds. ``main_share``: the main process's part
    of all the CPU time. ``serial_share``: the same without the once-per-entry stages, i.e. the
    data-sized work only the main process does; the speed-up with N workers is at most
    1 / (s + (1 - s) / N).
    """
    stages = {name: round(stage_cpu.get(name, 0.0), 3) for name in STAGES}
    workers = sum(worker_cpu.values())
    total = main_cpu + workers
    staged = sum(stage_cpu.get(name, 0.0) for name in STAGES)
    stages["other"] = round(max(total - staged, 0.0), 3)
    fixed = sum(stage_cpu.get(name, 0.0) for name in FIXED_STAGES)
    per_data = total - fixed
    return {**stages, "main": round(main_cpu, 3), "workers": round(workers, 3),
            "workers_max": round(max(worker_cpu.values(), default=0.0), 3),
            "total": round(total, 3), "num_workers": len(worker_cpu),
            "main_share": round(main_cpu / total, 4) if total > 0 else None,
            "serial_share": round(max(main_cpu - fixed, 0.0) / per_data, 4)
            if per_data > 0 else None}


def prepare(config: PreprocessConfig, tokenizer=None) -> PrepareResult:
    """Build (or reuse) the cache entry for ``config``; returns its folder and summary.

    ``tokenizer``: ``config.model``'s tokenizer when the caller has already loaded it
    (a training run does), so it is not loaded a second time. Settings and the cache folder
    are checked before anything is read. Every run removes what killed runs left in the cache
    folder; a finished entry is reused only when its files are whole, else it is rebuilt and
    the summary's ``cache_rebuilt`` says why.
    """
    started = time.perf_counter()
    check_preprocess_settings(config.max_length, config.doc_stride, config.num_proc,
                              config.batch_size, config.rows_per_shard, config.language)
    cache_root = Path(config.cache_dir)
    check_writable_folder(cache_root)
    source = open_source(SourceSpec(config.data, config.split, config.language, config.hub_config))
    feature_config = config.feature_config()
    tokenizer_fp, tokenizer = tokenizer_key(config.model, tokenizer)
    key = cache_key(source, tokenizer_fp, config)
    leftovers = len(remove_leftovers(cache_root))

    entry, problem = cache_root / key, None
    if entry.exists() and not config.overwrite_cache:
        problem = entry_problem(entry)
        if problem is None:
            return PrepareResult(entry, _hit_summary(entry, started, leftovers, source,
                                                     config))

    tokenizer = tokenizer or load_tokenizer(config.model)
    builder = FeatureBuilder(tokenizer, feature_config)  # validates the tokenizer before any work
    writer = CacheEntryWriter(cache_root, key)
    try:
        cpu_start, clock = time.process_time(), StageClock()
        totals = _build(writer, source, config, builder, clock)
        summary = _summary(writer, source, config, totals)
        summary.update(cache_rebuilt=problem, leftovers_removed=leftovers)
        with clock.stage("commit"):
            writer.finish()
        totals.cpu.update(clock.seconds)
        summary["cpu_seconds"] = cpu_breakdown(time.process_time() - cpu_start, totals.cpu,
                                               totals.worker_cpu)
        seconds = time.perf_counter() - started
        summary.update(seconds=round(seconds, 3),
                       examples_per_s=round(summary["examples"] / seconds, 1) if seconds else None)
        entry = writer.commit(summary, overwrite=config.overwrite_cache,
                              damaged=problem is not None)
    except BaseException as err:
        writer.abort()
        full = no_space_error(cache_root, err)  # in this process or in a worker
        if full is not None:
            raise full from None
        raise
    return PrepareResult(entry, summary)


def _hit_summary(entry: Path, started: float, leftovers: int, source: ExampleSource,
                 config: PreprocessConfig) -> dict:
    """The stored summary of a reused entry, with this run's figures, source and settings (the
    same data, perhaps at another path)."""
    summary = read_json(entry / SUMMARY_FILE)  # entry_problem checked it
    summary["source"] = source.description
    # this run's settings: those the key covers are the build's, the others (the file's path,
    # --num_proc, --batch_size, --rows_per_shard, the model folder's path) may differ
    summary["settings"] = run_settings(config)
    # seconds and examples_per_s describe this run; the build's own figures keep a build_ prefix
    summary.update(build_seconds=summary.pop("seconds"),
                   build_examples_per_s=summary.pop("examples_per_s"),
                   build_cpu_seconds=summary.pop("cpu_seconds"))
    summary.update(cache_hit=True, seconds=round(time.perf_counter() - started, 3),
                   cache_dir=str(entry), cache_rebuilt=None, leftovers_removed=leftovers)
    summary["examples_per_s"] = (round(summary["examples"] / summary["seconds"], 1)
                                 if summary["seconds"] else None)
    return summary


def run_settings(config: PreprocessConfig) -> dict:
    """The summary's ``settings``: this run's, as given (the cache folder aside)."""
    return {k: v for k, v in asdict(config).items() if k not in ("cache_dir", "overwrite_cache")}


def _summary(writer: CacheEntryWriter, source: ExampleSource, config: PreprocessConfig,
             totals: _Totals) -> dict:
    """The summary's counts (merged over the tasks).

    A source that yields no example (every row skipped, filtered out or without a window) is
    an error naming the source and the counts, not an empty entry.
    """
    skipped = dict(sorted((Counter(totals.read.skipped)
                           + Counter(totals.features.skipped)).items()))
    read = totals.read
    if totals.examples == 0:
        raise DataSourceError(empty_result_message(source.description, read, skipped))
    return {
        "cache_dir": str(writer.cache_root / writer.key),
        "cache_hit": False,
        "key": writer.key,
        "source": source.description,
        "source_kind": source.kind,
        "examples": totals.examples,
        "answerable": totals.features.answerable,
        "features": totals.features.features,
        "features_with_answer": totals.features.features_with_answer,
        "answers_covered": totals.features.answers_covered,
        "skipped": skipped,
        "notes": dict(sorted((read.notes + totals.features.notes).items())),
        "formats": dict(sorted(read.formats.items())),
        "settings": run_settings(config),
        "tasks_redone": totals.redone,
    }


def counts_text(counts: dict[str, int]) -> str:
    """Counts by reason as text: ``question_too_long 2, duplicate_id 1``."""
    return ", ".join(f"{reason} {count}" for reason, count in counts.items())


def empty_result_message(source: str, read: ReadStats, skipped: dict) -> str:
    """One line: why ``source`` gave no example (rows read, skips and notes by reason)."""
    other_language = read.notes["other_language"]
    rows = sum(read.formats.values()) + other_language
    parts = [f"{source}: no usable examples: {rows} rows read"]
    if skipped:
        parts.append("skipped " + counts_text(skipped))
    if other_language:
        parts.append(f"{other_language} rows of another language than the one kept (--language)")
    if "question_too_long" in skipped:
        parts.append("raise --max_length or lower --doc_stride")
    return "; ".join(parts)
