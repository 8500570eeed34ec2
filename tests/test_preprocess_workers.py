"""prepare() with workers that write their own shards: same key, rows, order and counts for every
num_proc; failures and kills leave nothing behind; CPU seconds per stage; the progress bar."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from conftest import raw_tydi_record, tydi_raw_records, write_jsonl

import preprocess
from qa_core import pipeline
from qa_core.features import FeatureBuilder
from qa_core.pipeline import PreprocessConfig, PreprocessWorkerError, prepare
from qa_core.readers import ReadStats, SourceSpec, open_source

REPO = Path(__file__).resolve().parents[1]
COUNTS = ("key", "examples", "answerable", "features", "features_with_answer", "answers_covered",
          "skipped", "notes", "formats", "num_shards")


@pytest.fixture
def one_row_per_task(monkeypatch):
    """Every source row becomes its own task, so a handful of rows makes many tasks."""
    monkeypatch.setattr(pipeline, "TASK_BYTES_MIN", 1)


@pytest.fixture
def config(tmp_path, bert_tok_dir) -> PreprocessConfig:
    data = write_jsonl(tmp_path / "tydi.jsonl.gz", tydi_raw_records())
    return PreprocessConfig(data=str(data), model=bert_tok_dir, cache_dir=str(tmp_path / "cache"),
                            language="all", max_length=48, doc_stride=16, batch_size=2,
                            rows_per_shard=4)


def tables(entry: Path) -> dict:
    loaded = datasets.load_from_disk(str(entry))
    return {name: loaded[name].data.table.combine_chunks() for name in ("features", "examples")}


def shard_names(entry: Path) -> dict:
    return {name: json.loads((entry / name / "state.json").read_text())["_data_files"]
            for name in ("features", "examples")}


def leftovers(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.iterdir()) if cache_root.exists() else []


def test_every_num_proc_gives_the_same_entry(config, tmp_path, monkeypatch, one_row_per_task):
    runs = {n: prepare(replace(config, cache_dir=str(tmp_path / f"np{n}"), num_proc=n))
            for n in (1, 2, 3)}
    one = runs[1]
    assert one.summary["num_shards"]["examples"] > 3  # several tasks, each with its own shards
    for n, run in runs.items():
        assert {k: run.summary[k] for k in COUNTS} == {k: one.summary[k] for k in COUNTS}, n
        for name, table in tables(run.entry).items():
            assert table.equals(tables(one.entry)[name]), (n, name)  # same rows, same order
        assert shard_names(run.entry) == shard_names(one.entry)
    # and the same rows as one task holding everything
    monkeypatch.setattr(pipeline, "TASK_BYTES_MIN", pipeline.TASK_BYTES_MAX)
    whole = prepare(replace(config, cache_dir=str(tmp_path / "whole"), num_proc=2,
                            rows_per_shard=10_000))
    assert whole.summary["num_shards"] == {"features": 1, "examples": 1}
    for name, table in tables(whole.entry).items():
        assert table.equals(tables(one.entry)[name])
    assert whole.summary["key"] == one.summary["key"]


def test_task_sizes_grow_and_depend_only_on_the_source():
    assert pipeline.task_bytes(0) == pipeline.TASK_BYTES_MIN
    assert pipeline.task_bytes(64 * pipeline.TASK_BYTES_MIN) == 4 * pipeline.TASK_BYTES_MIN
    assert pipeline.task_bytes(1 << 40) == pipeline.TASK_BYTES_MAX


@pytest.mark.parametrize("num_proc", [1, 2])
def test_duplicate_ids_across_tasks_are_skipped_as_in_one_pass(config, tmp_path, num_proc,
                                                               monkeypatch, one_row_per_task):
    records = tydi_raw_records()
    records.insert(3, raw_tydi_record(101, "A second question under id 101?", "Some text here."))
    records.append(raw_tydi_record(106, "Yet another 106?", "Short text."))
    data = write_jsonl(tmp_path / "dups.jsonl", records)
    cfg = replace(config, data=str(data), num_proc=num_proc)
    expected = [e["id"] for e in open_source(SourceSpec(str(data), language="all"))
                .iter_examples(ReadStats())]
    result = prepare(cfg)
    assert result.summary["skipped"]["duplicate_id"] == 2
    assert result.summary["tasks_redone"] == 2
    assert tables(result.entry)["examples"].column("id").to_pylist() == expected
    rows = datasets.load_from_disk(str(result.entry))["examples"]
    assert rows[0]["question"] == "When was the Higgs boson discovered?"  # the first one kept
    files = {p.name for split in ("features", "examples") for p in (result.entry / split).iterdir()}
    assert not [name for name in files if name.startswith("task-")]  # the redone tasks' shards
    # counts equal those of one task holding every row (duplicates found without a redo)
    monkeypatch.setattr(pipeline, "TASK_BYTES_MIN", pipeline.TASK_BYTES_MAX)
    whole = prepare(replace(cfg, cache_dir=str(tmp_path / "whole")))
    assert whole.summary["tasks_redone"] == 0
    assert {k: whole.summary[k] for k in COUNTS if k != "num_shards"} == {
        k: result.summary[k] for k in COUNTS if k != "num_shards"}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_notes_count_only_the_examples_kept(config, tmp_path, num_proc, one_row_per_task):
    """A row's labelling note (no_answer, yes/no-only, passage-only) was counted when the row was
    read, also for a duplicate id and for an example no window holds (question_too_long), so
    the summary said e.g. examples 1, answerable 1 beside notes no_answer 1 (the shared TyDi
    small_gold_annotation file at --max_length 64: notes no_answer 1, every example answerable)."""
    from conftest import DOC, P1, P2, P3

    long_question = " ".join(["Which"] * 40) + "?"
    records = [
        raw_tydi_record(201, "What is in Zürich?", DOC, passages=[P1, P2, P3], answers=[None]),
        raw_tydi_record(201, "The same id again?", DOC, passages=[P1, P2, P3], answers=[None]),
        raw_tydi_record(202, long_question, DOC, passages=[P1, P2, P3], answers=[("YES", 1)]),
        raw_tydi_record(203, "When was it found?", DOC, passages=[P1, P2, P3], answers=["2012"]),
        raw_tydi_record(204, "Where is CERN?", DOC, passages=[P1, P2, P3],
                        answers=[("PASSAGE", 1)]),
        raw_tydi_record(205, long_question, DOC, passages=[P1, P2, P3], answers=[None]),
    ]
    data = write_jsonl(tmp_path / "notes.jsonl", records)
    summary = prepare(replace(config, data=str(data), num_proc=num_proc)).summary
    assert summary["skipped"] == {"duplicate_id": 1, "question_too_long": 2}
    assert (summary["examples"], summary["answerable"]) == (3, 1)
    assert summary["notes"] == {"no_answer": 1, "passage_only_labelled_no_answer": 1}


def in_worker(main_pid: int, examples) -> bool:
    return os.getpid() != main_pid and bool(examples)


def test_exception_in_a_worker_leaves_nothing(config, monkeypatch, one_row_per_task):
    main_pid, original = os.getpid(), FeatureBuilder.build

    def failing(self, examples):
        if in_worker(main_pid, examples) and any(e["id"] == "103" for e in examples):
            raise RuntimeError("boom in a worker")
        return original(self, examples)

    monkeypatch.setattr(FeatureBuilder, "build", failing)
    cache_root = Path(config.cache_dir)
    with pytest.raises(RuntimeError, match="boom in a worker"):
        prepare(replace(config, num_proc=2))
    assert leftovers(cache_root) == []
    monkeypatch.setattr(FeatureBuilder, "build", original)
    assert prepare(replace(config, num_proc=2)).summary["examples"] == 6


def test_killed_worker_is_a_one_line_error_and_leaves_nothing(config, monkeypatch, capsys,
                                                              one_row_per_task):
    main_pid, original = os.getpid(), FeatureBuilder.build

    def dying(self, examples):
        if in_worker(main_pid, examples):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, examples)

    monkeypatch.setattr(FeatureBuilder, "build", dying)
    cache_root = Path(config.cache_dir)
    with pytest.raises(PreprocessWorkerError, match="worker process died"):
        prepare(replace(config, num_proc=2))
    assert leftovers(cache_root) == []
    code = preprocess.main(["--data", config.data, "--model", config.model, "--cache_dir",
                            config.cache_dir, "--language", "all", "--max_length", "48",
                            "--doc_stride", "16", "--num_proc", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "worker process died" in err[0]
    assert leftovers(cache_root) == []
    monkeypatch.setattr(FeatureBuilder, "build", original)
    result = prepare(replace(config, num_proc=2))
    assert result.summary["examples"] == 6 and leftovers(cache_root) == [result.summary["key"]]


def test_first_error_in_input_order_is_reported(config, tmp_path, monkeypatch, one_row_per_task):
    """Line 2's error is reported although line 5's task fails first."""
    lines = [json.dumps(r) for r in tydi_raw_records()]
    lines[1], lines[4] = "{not json", "[1, 2]"
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    from qa_core import readers

    original = readers._jsonl_row

    def slow_line_2(path, line_number, line):
        if line_number == 2:
            time.sleep(1.0)
        return original(path, line_number, line)

    monkeypatch.setattr(readers, "_jsonl_row", slow_line_2)
    with pytest.raises(readers.DataSourceError, match=r"bad\.jsonl:2: malformed JSON"):
        prepare(replace(config, data=str(data), num_proc=2))
    assert leftovers(Path(config.cache_dir)) == []


def test_unreadable_tail_after_a_bad_line_reports_the_line(config, tmp_path, one_row_per_task):
    """Reading (main process) fails at the end, a worker at line 1: line 1 wins, as in one pass."""
    good = "\n".join(json.dumps(r) for r in tydi_raw_records()[1:]).encode()
    data = tmp_path / "tail.jsonl"
    data.write_bytes(b"{broken\n" + good + b"\n")
    for num_proc in (1, 2):
        with pytest.raises(Exception, match=r"tail\.jsonl:1: malformed JSON"):
            prepare(replace(config, data=str(data), num_proc=num_proc))
    assert leftovers(Path(config.cache_dir)) == []


KILL_MAIN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from qa_core import pipeline
    from qa_core.features import FeatureBuilder
    from qa_core.pipeline import PreprocessConfig, prepare

    data, model, cache_dir, markers = sys.argv[1:5]
    main, original = os.getpid(), FeatureBuilder.build
    pipeline.TASK_BYTES_MIN = 1

    def stuck(self, examples):
        if os.getpid() != main and examples:
            Path(markers, str(os.getpid())).write_text("")
            time.sleep(120)
        return original(self, examples)

    FeatureBuilder.build = stuck
    prepare(PreprocessConfig(data=data, model=model, cache_dir=cache_dir, language="all",
                             max_length=48, doc_stride=16, batch_size=1, num_proc=2))
""")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # an exited orphan whose new parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")
def test_killed_main_process_takes_its_workers_along(config, tmp_path):
    script, markers = tmp_path / "main.py", tmp_path / "markers"
    script.write_text(KILL_MAIN)
    markers.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(script), config.data, config.model,
                             config.cache_dir, str(markers)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list(markers.iterdir())) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        workers = [int(p.name) for p in markers.iterdir()]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers are still running"
        time.sleep(0.1)
    assert [p.name for p in Path(config.cache_dir).iterdir()][0].startswith(".tmp-")
    result = prepare(config)  # the dead run's temporary goes; the entry is built
    assert leftovers(Path(config.cache_dir)) == [result.summary["key"]]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cpu_seconds_per_stage(config, num_proc, one_row_per_task):
    cpu = prepare(replace(config, num_proc=num_proc)).summary["cpu_seconds"]
    assert set(pipeline.STAGES) | {"other", "main", "workers", "workers_max", "total",
                                   "num_workers", "main_share", "serial_share"} == set(cpu)
    assert all(cpu[stage] >= 0 for stage in pipeline.STAGES)
    for stage in ("parse", "tokenize", "window", "write"):  # read: 6 rows take < 0.5 ms
        assert cpu[stage] > 0, stage
    assert cpu["total"] == pytest.approx(cpu["main"] + cpu["workers"], abs=0.002)
    if num_proc == 1:
        assert cpu["num_workers"] == 0 and cpu["main_share"] == 1.0
    else:
        assert cpu["num_workers"] == 2 and 0 < cpu["workers_max"] < cpu["workers"]
        assert 0 < cpu["serial_share"] < cpu["main_share"] < 1
    hit = prepare(replace(config, num_proc=num_proc)).summary
    assert hit["cache_hit"] is True and hit["build_cpu_seconds"] == cpu


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(config, monkeypatch, tty, one_row_per_task):
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    result = prepare(replace(config, num_proc=2))
    shown = stream.getvalue()
    if tty:
        assert "preprocessing" in shown and "examples" in shown
        assert f"features={result.summary['features']}" in shown and "rows read" in shown
        assert f"{result.summary['examples']} examples" in shown
    else:
        assert shown == ""


def squad_row(i: int, context: str) -> dict:
    return {"id": f"q{i}", "question": f"Question {i}?", "context": context,
            "answers": {"text": [], "answer_start": []}}


@pytest.mark.parametrize("ascii_only", [True, False])
def test_chunks_keep_the_rows_of_a_document_together(tmp_path, ascii_only):
    a, b, c = (f"Ünïcode “document” {name}. " * 40 for name in "ABC")  # one length
    rows = [squad_row(i, text) for i, text in enumerate([a, a, a, b, c, c], start=1)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=ascii_only) for r in rows) + "\n")
    source = open_source(SourceSpec(str(path), language="all"))
    line = len(path.read_bytes().splitlines(keepends=True)[0])  # all lines are about this long
    chunks = list(source.chunks(lambda read: 2 * line))
    assert [[n for n, _ in chunk.items] for chunk in chunks] == [[1, 2, 3], [4, 5, 6]]
    assert [row for chunk in chunks for row in chunk.rows()] == list(source.rows())
    # a chunk takes at most twice its size of the same document
    chunks = list(source.chunks(lambda read: line))
    assert [[n for n, _ in chunk.items] for chunk in chunks] == [[1, 2], [3], [4], [5, 6]]
    assert [row for chunk in chunks for row in chunk.rows()] == list(source.rows())


def test_parsed_rows_are_chunked_by_context_too(tmp_path):
    contexts = ["First paragraph. " * 20, "Second paragraph. " * 20]
    document = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": text, "qas": [{"id": f"{p}-{q}", "question": f"Q{q}?", "answers": []}
                                  for q in range(3)]} for p, text in enumerate(contexts)]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document))
    source = open_source(SourceSpec(str(path), language="all"))
    row = len(contexts[0]) + 80  # about what one parsed row holds
    chunks = list(source.chunks(lambda read: 2 * row))
    assert [[row[0]["id"] for row in chunk.rows()] for chunk in chunks] == [
        ["0-0", "0-1", "0-2"], ["1-0", "1-1", "1-2"]]


def test_bench_projects_the_speed_up_from_the_run_with_most_workers():
    from bench.preprocess import amdahl, scaling

    def run(rate: float, **cpu) -> dict:
        cpu = {"setup": 0.2, "commit": 0.01, "main": 1.0, "workers": 0.0, **cpu}
        return {"examples_per_s": rate, "prepare_examples_per_s": 2 * rate, "cpu_seconds": cpu}

    ours = {"num_proc_1": run(100, main_share=1.0, serial_share=1.0),
            "num_proc_2": run(150, main=0.4, workers=2.0, main_share=0.1667, serial_share=0.1)}
    projected = amdahl(ours)
    assert projected["from"] == "num_proc_2" and projected["serial_share"] == 0.1
    assert projected["speedup"] == {"4": 3.08, "8": 4.71, "16": 6.4} and projected["limit"] == 10
    assert projected["fixed_cpu_s"] == 0.21
    assert scaling(ours) == {"num_proc_2": {"examples_per_s": 1.5, "prepare_examples_per_s": 1.5}}
    assert amdahl({"num_proc_1": ours["num_proc_1"]}) is None
