"""preprocess.py / qa_core.pipeline.prepare: summary, cache layout, keys, reuse, atomic writes."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import datasets
import pytest
from conftest import raw_tydi_record, tydi_raw_records, write_jsonl

import preprocess
from qa_core import cache as cache_mod
from qa_core.features import FeatureBuilder
from qa_core.pipeline import PreprocessConfig, cache_key, prepare, tokenizer_key
from qa_core.readers import DataSourceError, SourceSpec, open_source

REPO = Path(__file__).resolve().parents[1]
SUMMARY_FIELDS = {"cache_dir", "cache_hit", "examples", "answerable", "features", "answers_covered",
                  "skipped", "seconds"}


@pytest.fixture
def data_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "tydi.jsonl.gz", tydi_raw_records())


@pytest.fixture
def config(data_file, bert_tok_dir, tmp_path) -> PreprocessConfig:
    return PreprocessConfig(data=str(data_file), model=bert_tok_dir,
                            cache_dir=str(tmp_path / "cache"), language="all", max_length=48,
                            doc_stride=16, batch_size=2)


def features_rows(entry) -> list[dict]:
    return datasets.load_from_disk(str(entry))["features"].to_list()


def finished_keys(cache_root: Path) -> list[str]:
    return (sorted(p.name for p in cache_root.iterdir() if (p / "summary.json").is_file())
            if cache_root.exists() else [])


def temporaries(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.glob(".tmp-*")) if cache_root.exists() else []


def run_main(argv, capsys) -> dict:
    assert preprocess.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_preprocess_main_summary_and_layout(data_file, bert_tok_dir, tmp_path, capsys):
    argv = ["--data", str(data_file), "--model", bert_tok_dir, "--cache_dir", str(tmp_path / "c"),
            "--max_length", "48", "--doc_stride", "16", "--language", "all"]
    summary = run_main(argv, capsys)
    assert SUMMARY_FIELDS <= set(summary)
    assert summary["cache_hit"] is False
    assert summary["examples"] == 6 and summary["answerable"] == 3
    assert summary["answers_covered"] == 3
    assert summary["features"] > 6 and summary["skipped"] == {}
    assert summary["notes"]["yes_no_only_labelled_no_answer"] == 1
    assert Path(summary["cache_dir"]) == tmp_path / "c" / summary["key"]

    loaded = datasets.load_from_disk(summary["cache_dir"])
    assert set(loaded) == {"features", "examples"}
    feats, examples = loaded["features"], loaded["examples"]
    assert {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions",
            "example_id", "offset_mapping"} <= set(feats.column_names)
    assert {"id", "question", "context", "answers"} <= set(examples.column_names)
    assert feats.num_rows == summary["features"] and examples.num_rows == summary["examples"]
    assert set(feats["example_id"]) == set(examples["id"])
    by_id = {e["id"]: e for e in examples}
    assert by_id["101"]["answers"]["text"] == ["2012", "in 2012"]
    assert set(by_id["101"]["answers"]) == {"text", "answer_start"}
    # labels point at the gold answer's first/last characters
    for row in feats:
        if row["start_positions"]:
            ex = by_id[row["example_id"]]
            a0 = ex["answers"]["answer_start"][0]
            a1 = a0 + len(ex["answers"]["text"][0])
            assert row["offset_mapping"][row["start_positions"]][0] <= a0
            assert row["offset_mapping"][row["end_positions"]][1] >= a1

    again = run_main(argv, capsys)
    assert again["cache_hit"] is True
    assert again["key"] == summary["key"] and again["cache_dir"] == summary["cache_dir"]
    assert again["features"] == summary["features"]


def test_main_errors_are_one_line(tmp_path, bert_tok_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    for data in (str(tmp_path / "missing.jsonl"), "tydiqa"):
        code = preprocess.main(["--data", data, "--model", bert_tok_dir,
                                "--cache_dir", str(tmp_path / "c")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("preprocess.py: error:")
    assert "offline" in err
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    code = preprocess.main(["--data",
                            str(write_jsonl(tmp_path / "d.jsonl", tydi_raw_records()[:1])),
                            "--model", str(bad_model), "--cache_dir", str(tmp_path / "c")])
    assert code == 2 and "tokenizer" in capsys.readouterr().err
    assert finished_keys(tmp_path / "c") == []


def test_num_proc_2_same_key_and_rows(config, tmp_path):
    one = prepare(replace(config, cache_dir=str(tmp_path / "p1"), num_proc=1))
    two = prepare(replace(config, cache_dir=str(tmp_path / "p2"), num_proc=2))
    assert one.summary["key"] == two.summary["key"]
    assert one.summary["features"] == two.summary["features"]
    assert features_rows(one.entry) == features_rows(two.entry)
    assert (datasets.load_from_disk(str(one.entry))["examples"].to_list()
            == datasets.load_from_disk(str(two.entry))["examples"].to_list())


def test_key_changes_with_every_output_setting(config, data_file, roberta_tok_dir, tmp_path):
    def key(cfg: PreprocessConfig) -> str:
        source = open_source(SourceSpec(cfg.data, cfg.split, cfg.language, cfg.hub_config))
        return cache_key(source, tokenizer_key(cfg.model)[0], cfg)

    base = key(config)
    assert key(config) == base
    same = [replace(config, num_proc=2), replace(config, batch_size=7),
            replace(config, rows_per_shard=3),
            replace(config, cache_dir=str(tmp_path / "elsewhere")),
            replace(config, overwrite_cache=True)]
    assert {key(c) for c in same} == {base}
    edited = tydi_raw_records()
    edited[0]["question_text"] += " exactly"
    changed = [
        replace(config, max_length=64),
        replace(config, doc_stride=8),
        replace(config, label_answer="consensus"),
        replace(config, model=roberta_tok_dir),
        replace(config, language="english"),
        replace(config, data=str(write_jsonl(tmp_path / "edited.jsonl.gz", edited))),
    ]
    keys = [key(c) for c in changed]
    assert base not in keys and len(set(keys)) == len(keys)
    # the same content under another name is the same entry
    copy = tmp_path / "copy.jsonl.gz"
    copy.write_bytes(data_file.read_bytes())
    assert key(replace(config, data=str(copy))) == base


def test_a_hit_through_a_copy_reports_the_copy(config, tmp_path):
    """The entry is content-addressed, so a copy of the file under another name is a hit; its
    summary named the file the entry was first built from."""
    prepare(config)
    copy = tmp_path / "renamed.jsonl.gz"
    copy.write_bytes(Path(config.data).read_bytes())
    hit = prepare(replace(config, data=str(copy)))
    assert hit.summary["cache_hit"] is True
    assert hit.summary["source"] == str(copy) and hit.summary["settings"]["data"] == str(copy)


def test_a_hit_reports_this_runs_settings(config, tmp_path):
    """A hit's summary said the build's --num_proc, --batch_size, --rows_per_shard and model
    path (settings the key leaves out), beside this run's data path: `num_proc 1, batch_size 2`
    for a run given `--num_proc 2 --batch_size 5`."""
    prepare(config)
    model = tmp_path / "model copy"
    shutil.copytree(config.model, model)
    now = replace(config, model=str(model), num_proc=2, batch_size=5, rows_per_shard=7)
    hit = prepare(now)
    assert hit.summary["cache_hit"] is True
    assert hit.summary["settings"] == {k: v for k, v in asdict(now).items()
                                       if k not in ("cache_dir", "overwrite_cache")}


def test_overwrite_cache_rebuilds(config):
    first = prepare(config)
    stamp = (first.entry / "summary.json").stat().st_mtime_ns
    hit = prepare(config)
    assert (hit.summary["cache_hit"] is True
            and (hit.entry / "summary.json").stat().st_mtime_ns == stamp)
    rebuilt = prepare(replace(config, overwrite_cache=True))
    assert rebuilt.summary["cache_hit"] is False and rebuilt.entry == first.entry
    assert features_rows(rebuilt.entry) == features_rows(first.entry)
    assert finished_keys(Path(config.cache_dir)) == [first.summary["key"]]
    assert not [p for p in Path(config.cache_dir).iterdir() if p.name.startswith(".")]


def test_several_shards(config, tmp_path):
    single = prepare(replace(config, cache_dir=str(tmp_path / "one")))
    sharded = prepare(replace(config, cache_dir=str(tmp_path / "many"), rows_per_shard=5))
    assert single.summary["key"] == sharded.summary["key"]
    assert (sharded.summary["num_shards"]["features"] > 2
            and single.summary["num_shards"]["features"] == 1)
    shard_files = sorted(p.name for p in (sharded.entry / "features").glob("*.arrow"))
    n = len(shard_files)
    assert shard_files == [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
    assert features_rows(sharded.entry) == features_rows(single.entry)


def test_empty_result_is_an_error(bert_tok_dir, tmp_path, capsys):
    path = write_jsonl(tmp_path / "only_ja.jsonl",
                       [raw_tydi_record(1, "東京?", "東京は首都です。", "japanese", ["東京"])])
    config = PreprocessConfig(data=str(path), model=bert_tok_dir, cache_dir=str(tmp_path / "c"),
                              max_length=48, doc_stride=16)
    with pytest.raises(DataSourceError) as info:
        prepare(config)
    assert str(info.value).startswith(f"{path}: no usable examples: 1 rows read")
    assert "another language" in str(info.value)
    assert finished_keys(tmp_path / "c") == [] and temporaries(tmp_path / "c") == []
    # every question longer than a window: the skip counts say why
    code = preprocess.main(["--data", str(write_jsonl(tmp_path / "d.jsonl", tydi_raw_records())),
                            "--model", bert_tok_dir, "--cache_dir", str(tmp_path / "c"),
                            "--language", "all", "--max_length", "8", "--doc_stride", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no usable examples: 6 rows read; skipped question_too_long 6" in err
    assert finished_keys(tmp_path / "c") == []


@pytest.mark.parametrize("where", ["builder", "writer"])
def test_failure_midway_leaves_no_entry(config, monkeypatch, where):
    cache_root = Path(config.cache_dir)
    calls = {"n": 0}
    if where == "builder":
        original = FeatureBuilder.build

        def failing(self, examples):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("boom in builder")
            return original(self, examples)

        monkeypatch.setattr(FeatureBuilder, "build", failing)
    else:
        original = cache_mod.ShardWriter.write

        def failing(self, batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("boom in writer")
            return original(self, batch)

        monkeypatch.setattr(cache_mod.ShardWriter, "write", failing)
    with pytest.raises(RuntimeError, match="boom"):
        prepare(config)
    assert finished_keys(cache_root) == [] and temporaries(cache_root) == []
    assert not any(p for p in cache_root.iterdir() if not p.name.startswith("."))
    monkeypatch.undo()
    result = prepare(config)
    assert result.summary["cache_hit"] is False and result.summary["examples"] == 6
    assert finished_keys(cache_root) == [result.summary["key"]]


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from qa_core.features import FeatureBuilder
    from qa_core.pipeline import PreprocessConfig, prepare

    data, model, cache_dir, marker = sys.argv[1:5]
    original, calls = FeatureBuilder.build, [0]

    def slow(self, examples):
        calls[0] += 1
        if calls[0] == 3:  # two batches are already written to the temporary entry
            Path(marker).write_text("ready")
            time.sleep(60)
        return original(self, examples)

    FeatureBuilder.build = slow
    prepare(PreprocessConfig(data=data, model=model, cache_dir=cache_dir, language="all",
                             max_length=48, doc_stride=16, batch_size=1, rows_per_shard=2))
""")


def test_sigkill_midway_then_rebuild(config, tmp_path):
    cache_root = Path(config.cache_dir)
    script = tmp_path / "killme.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(script), config.data, config.model,
                             config.cache_dir, str(marker)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached the second batch"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = temporaries(cache_root)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0]
    assert any((cache_root / left[0] / "features").glob("*.arrow"))  # it was killed mid-write
    assert finished_keys(cache_root) == []

    # a temporary of a live process (this one) for the same key must survive the cleanup
    key = left[0].split("-")[1]
    live = cache_root / f".tmp-{key}-{os.getpid()}-deadbeef"
    live.mkdir()
    result = prepare(config)
    assert result.summary["cache_hit"] is False and result.summary["key"] == key
    assert finished_keys(cache_root) == [key]
    assert temporaries(cache_root) == [live.name]  # the dead process's folder is gone
    assert features_rows(result.entry) == features_rows(prepare(replace(
        config, cache_dir=str(tmp_path / "fresh"))).entry)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("hit", [False, True])
def test_leftovers_removed_by_the_next_run(config, hit):
    """Stale .tmp-* (writer gone) and every .trash-* go, hit or miss; a live writer's stays."""
    cache_root = Path(config.cache_dir)
    if hit:
        prepare(config)
    source = open_source(SourceSpec(config.data, config.split, config.language))
    key = cache_key(source, tokenizer_key(config.model)[0], config)
    pid = dead_pid()
    cache_root.mkdir(parents=True, exist_ok=True)
    abandoned = cache_root / f".tmp-{key}-{pid}-0badf00d"         # name of the previous version
    (abandoned / "features").mkdir(parents=True)
    (abandoned / "features" / "part-00000.arrow").write_bytes(b"partial")
    other_key = cache_root / f".tmp-ffffffffffffffffffff-{pid}-{cache_mod.HOST_TAG}0badf00d"
    other_key.mkdir()
    trash = cache_root / f".trash-{key}-12345678"                 # killed between rename and delete
    (trash / "features").mkdir(parents=True)
    live = cache_root / f".tmp-{key}-{os.getpid()}-{cache_mod.HOST_TAG}deadbeef"
    live.mkdir()
    elsewhere = cache_root / f".tmp-{key}-{pid}-0123456789abcdef"  # another machine's writer
    elsewhere.mkdir()
    result = prepare(config)
    assert result.summary["cache_hit"] is hit and result.summary["leftovers_removed"] == 3
    assert not abandoned.exists() and not other_key.exists() and not trash.exists()
    assert live.exists() and elsewhere.exists()
    assert (datasets.load_from_disk(str(result.entry))["features"].num_rows
            == result.summary["features"])


def test_trash_delete_ignores_a_racing_run(config, monkeypatch):
    """Two runs deleting the same .trash-* folder: the loser's errors are ignored."""
    cache_root = Path(config.cache_dir)
    trash = cache_root / ".trash-abc-1"
    (trash / "x").mkdir(parents=True)
    real_rmtree = cache_mod.shutil.rmtree

    def racing(path, ignore_errors=False):
        real_rmtree(path)               # the other run wins the race...
        real_rmtree(path, ignore_errors=ignore_errors)  # ...then this one tries

    monkeypatch.setattr(cache_mod.shutil, "rmtree", racing)
    assert cache_mod.remove_leftovers(cache_root) == [".trash-abc-1"]


def entry_of(result) -> Path:
    return Path(result.summary["cache_dir"])


def truncate_shard(entry: Path) -> str:
    shard = sorted((entry / "features").glob("*.arrow"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    return f"features/{shard.name}: 100 bytes"


def flip_byte(entry: Path) -> str:
    shard = sorted((entry / "examples").glob("*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                                   # same size, other content
    shard.write_bytes(bytes(data))
    return f"examples/{shard.name}: content differs"


def drop_file(name: str, why: str):
    return lambda entry: ((entry / name).unlink(), f"{name}: {why}")[1]


def old_version_entry(entry: Path) -> str:
    summary = json.loads((entry / "summary.json").read_text())
    del summary["manifest_sha256"]
    (entry / "summary.json").write_text(json.dumps(summary))
    (entry / "manifest.json").unlink()
    return "summary.json: no manifest_sha256"


def truncated_summary(entry: Path) -> str:
    (entry / "summary.json").write_text('{"examples": 6,')
    return "summary.json: not valid JSON"


def edited_manifest(entry: Path) -> str:
    manifest = json.loads((entry / "manifest.json").read_text())
    for record in manifest["files"].values():
        record["bytes"] += 1
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json: does not match"


SUMMARY_EDITED = "its content does not match its summary_sha256"


def edited_summary(name: str, edit, why: str):
    """summary.json still valid JSON (its manifest_sha256 right), but of another shape."""
    def damage(entry: Path) -> str:
        summary = json.loads((entry / "summary.json").read_text())
        edit(summary)
        (entry / "summary.json").write_text(json.dumps(summary))
        return f"summary.json: {why}"
    return pytest.param(damage, id=name)


def replaced_manifest(name: str, blob: bytes):
    """Another manifest.json, with summary.json's manifest_sha256 updated to match it."""
    def damage(entry: Path) -> str:
        (entry / "manifest.json").write_bytes(blob)
        summary = json.loads((entry / "summary.json").read_text())
        summary["manifest_sha256"] = hashlib.sha256(blob).hexdigest()
        (entry / "summary.json").write_text(json.dumps(summary))
        return f"summary.json: {SUMMARY_EDITED}"
    return pytest.param(damage, id=name)


@pytest.mark.parametrize("damage", [
    truncate_shard, flip_byte, drop_file("features/state.json", "missing"),
    drop_file("manifest.json", "missing"), drop_file("summary.json", "missing"), old_version_entry,
    truncated_summary, edited_manifest,
    # what a build writes, with the summary's own sha256 no longer matching its content
    edited_summary("no_examples", lambda s: s.pop("examples"), SUMMARY_EDITED),
    edited_summary("examples_text", lambda s: s.update(examples="x"), SUMMARY_EDITED),
    edited_summary("features_not_in_shards", lambda s: s.update(features=999999),
                   SUMMARY_EDITED),
    edited_summary("answerable_count", lambda s: s.update(answerable=s["answerable"] + 80),
                   SUMMARY_EDITED),
    edited_summary("notes_count", lambda s: s.update(notes={"no_answer": 0}), SUMMARY_EDITED),
    edited_summary("other_key", lambda s: s.update(key="deadbeef"),
                   "key is 'deadbeef', not the entry's folder name"),
    # summary.json's manifest_sha256 updated to the new manifest: its own sha256 then differs
    replaced_manifest("manifest_not_json", b"not json"),
    replaced_manifest("manifest_lists_nothing", b'{"files": {}}'),
])
def test_damaged_entry_is_rebuilt_not_hit(config, damage):
    first = prepare(config)
    assert set(json.loads((first.entry / "manifest.json").read_text())["files"]) >= {
        "dataset_dict.json", "features/state.json", "examples/dataset_info.json"}
    why = damage(first.entry)
    rebuilt = prepare(config)
    assert rebuilt.summary["cache_hit"] is False and rebuilt.entry == first.entry
    assert rebuilt.summary["cache_rebuilt"].startswith(why)
    assert features_rows(rebuilt.entry) == features_rows(first.entry)
    again = prepare(config)
    assert again.summary["cache_hit"] is True and again.summary["cache_rebuilt"] is None
    assert finished_keys(Path(config.cache_dir)) == [first.summary["key"]]
    assert not [p for p in Path(config.cache_dir).iterdir() if p.name.startswith(".")]


def test_large_shards_are_sized_not_hashed(config, monkeypatch):
    monkeypatch.setattr(cache_mod, "HASHED_FILE_LIMIT", 1000)
    entry = prepare(config).entry
    files = json.loads((entry / "manifest.json").read_text())["files"]
    shard = next(name for name in files if name.startswith("features/data-"))
    assert "sha256" not in files[shard] and files[shard]["bytes"] > 1000
    assert "sha256" in files["features/state.json"]


def test_an_entry_whose_manifest_says_size_is_still_a_hit(config):
    """Entries written before the manifest named a file's size ``bytes`` stay valid."""
    entry = prepare(config).entry
    manifest = json.loads((entry / "manifest.json").read_text())
    for record in manifest["files"].values():
        record["size"] = record.pop("bytes")
    blob = json.dumps(manifest, indent=1).encode()
    (entry / "manifest.json").write_bytes(blob)
    summary = json.loads((entry / "summary.json").read_text())
    summary["manifest_sha256"] = hashlib.sha256(blob).hexdigest()
    summary["summary_sha256"] = cache_mod.summary_sha256(summary)
    (entry / "summary.json").write_text(json.dumps(summary))
    assert prepare(config).summary["cache_hit"] is True


def test_rebuild_keeps_an_entry_another_run_already_repaired(config):
    first = prepare(config)
    writer = cache_mod.CacheEntryWriter(Path(config.cache_dir), first.summary["key"])
    stamp = (first.entry / "summary.json").stat().st_mtime_ns
    # the entry is whole again by the time this (slower) rebuild commits: it is kept
    writer.finish()
    assert writer.commit({}, overwrite=False, damaged=True) == first.entry
    assert (first.entry / "summary.json").stat().st_mtime_ns == stamp
    assert temporaries(Path(config.cache_dir)) == []


def test_cache_dir_errors_name_the_flag(data_file, bert_tok_dir, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = ["--data", str(data_file), "--model", bert_tok_dir, "--language", "all"]
    for cache_dir, message in ((a_file, "is a file, not a folder"),
                               (a_file / "sub",
                                f"cannot be created: {a_file} is a file, not a folder")):
        assert preprocess.main(argv + ["--cache_dir", str(cache_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"preprocess.py: error: --cache_dir {cache_dir}: {message}"
    # unwritable (faked: this suite may run as root, which writes anywhere)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(cache_mod.os, "access",
                        lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    assert preprocess.main(argv + ["--cache_dir", str(read_only)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"preprocess.py: error: --cache_dir {read_only}: not writable "
                   "(a new cache entry has to be written)")
    assert preprocess.main(argv + ["--cache_dir", str(read_only / "new")]) == 2
    assert f"{read_only} is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_full_device_is_a_one_line_error(data_file, bert_tok_dir, tmp_path, capsys, monkeypatch,
                                         num_proc, code):
    """A write into a full device (or over the quota), in this process or a (forked) worker:
    one line naming --cache_dir, exit code 2, and no temporary entry left."""
    def full(self, batch):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cache_mod.ShardWriter, "write", full)
    cache_root = tmp_path / "c"
    argv = ["--data", str(data_file), "--model", bert_tok_dir, "--cache_dir", str(cache_root),
            "--language", "all", "--num_proc", str(num_proc)]
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"preprocess.py: error: --cache_dir {cache_root}: no space left on the device "
                   f"while writing a cache entry ({errno.errorcode[code]}: {os.strerror(code)}); "
                   "free space or choose another --cache_dir")
    assert list(cache_root.iterdir()) == []


def test_other_write_errors_keep_their_exception(config, monkeypatch):
    def broken(self, batch):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cache_mod.ShardWriter, "write", broken)
    with pytest.raises(OSError, match="Input/output error"):
        prepare(config)
    assert list(Path(config.cache_dir).iterdir()) == []


def test_read_only_cache_dir_still_serves_hits(config, monkeypatch):
    first = prepare(config)
    root = Path(config.cache_dir)
    real_access = os.access
    monkeypatch.setattr(cache_mod.os, "access",
                        lambda p, mode: False if Path(p) == root else real_access(p, mode))
    assert prepare(config).summary["cache_hit"] is True
    assert first.summary["key"] in finished_keys(root)


@pytest.mark.parametrize("flag, value, message", [
    ("--num_proc", "0", "--num_proc 0: must be at least 1"),
    ("--num_proc", "-1", "--num_proc -1: must be at least 1"),
    ("--batch_size", "0", "--batch_size 0: must be at least 1"),
    ("--rows_per_shard", "0", "--rows_per_shard 0: must be at least 1"),
    ("--max_length", "0", "--max_length 0: must be at least 1"),
    ("--doc_stride", "-1", "--doc_stride -1: must be at least 0"),
    ("--doc_stride", "48", "--doc_stride 48: must be below --max_length (48)"),
    ("--language", " ", "--language ' ': give a language name"),
])
def test_settings_refused_before_any_work(data_file, bert_tok_dir, tmp_path, capsys, monkeypatch,
                                          flag, value, message):
    def no_work(*args, **kwargs):
        raise AssertionError("the source was opened before the settings were checked")

    monkeypatch.setattr("qa_core.pipeline.open_source", no_work)
    argv = ["--data", str(data_file), "--model", bert_tok_dir, "--cache_dir", str(tmp_path / "c"),
            "--max_length", "48", "--doc_stride", "16", flag, value]
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"preprocess.py: error: {message}") and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_check_preprocess_settings_is_importable():
    from qa_core.pipeline import SettingsError, check_preprocess_settings

    check_preprocess_settings(384, 128, num_proc=2)
    with pytest.raises(SettingsError, match="--num_proc 0"):
        check_preprocess_settings(384, 128, num_proc=0)
    with pytest.raises(SettingsError, match="--max_length True: must be an integer"):
        check_preprocess_settings(True, 0)
