"""Content-addressed cache of tokenized Arrow shards, written atomically.

Layout of one entry (``<cache_root>/<key>/``), a folder ``datasets.load_from_disk`` opens:
    dataset_dict.json           {"splits": ["features", "examples"]}
    features/data-0000i-of-0000n.arrow, state.json, dataset_info.json
    examples/...                (same)
    summary.json                what preprocessing counted; present only in finished entries

Entries are built in ``<cache_root>/.tmp-<key>-<pid>-<rand>`` and renamed into place, so a
run killed half-way leaves only a hidden temporary folder that is never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

SUMMARY_FILE = "summary.json"
SPLITS = ("features", "examples")


def fingerprint(parts: dict[str, Any]) -> str:
    """Stable short hash of JSON-serialisable parts (sorted keys, so dict order never matters)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


# Files that define a Hugging Face tokenizer; hashing them keys the cache without loading it.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_files_fingerprint(model: str) -> str | None:
    """Hash of a local model folder's tokenizer files; None when ``model`` is not such a folder.

    This keeps a cache hit cheap: loading a tokenizer costs seconds, hashing its files milliseconds.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    digests = {name: file_sha256(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    return fingerprint({"files": digests}) if digests else None


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the serialized fast tokenizer and its special-token setup."""
    parts = {
        "class": type(tokenizer).__name__,
        "backend": tokenizer.backend_tokenizer.to_str(),
        "model_input_names": list(tokenizer.model_input_names),
        "padding_side": tokenizer.padding_side,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }
    return fingerprint(parts)


def finished_entry(cache_root: Path, key: str) -> Path | None:
    entry = cache_root / key
    return entry if (entry / SUMMARY_FILE).is_file() else None


def read_summary(entry: Path) -> dict:
    return json.loads((entry / SUMMARY_FILE).read_text())


class ShardWriter:
    """Streams record batches of one split into Arrow shard files, rolling every ``rows_per_shard``."""

    def __init__(self, folder: Path, rows_per_shard: int) -> None:
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.files: list[Path] = []
        self.schema: pa.Schema | None = None
        self.rows = 0
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink = None
        self._rows_in_shard = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self.schema is None:
            self.schema = batch.schema
        elif batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
            self._roll()
        self._writer.write_batch(batch)
        self._rows_in_shard += batch.num_rows
        self.rows += batch.num_rows

    def _roll(self) -> None:
        self._close_shard()
        path = self.folder / f"part-{len(self.files):05d}.arrow"
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self.files.append(path)
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self, empty_schema: pa.Schema) -> None:
        """Finish the split: name shards as ``datasets`` does and write its metadata files."""
        import datasets

        if self.schema is None:  # nothing was written: one empty shard keeps the split loadable
            self.schema = empty_schema
            self._roll()
        self._close_shard()
        count = len(self.files)
        names = []
        for index, path in enumerate(self.files):
            name = f"data-{index:05d}-of-{count:05d}.arrow"
            path.rename(self.folder / name)
            names.append({"filename": name})
        state = {
            "_data_files": names, "_fingerprint": uuid.uuid4().hex[:16], "_format_columns": None,
            "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2))
        info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(self.schema))
        info.write_to_directory(str(self.folder))


class CacheEntryWriter:
    """A temporary entry folder that becomes ``<cache_root>/<key>`` only when :meth:`commit` runs."""

    def __init__(self, cache_root: Path, key: str, rows_per_shard: int) -> None:
        self.cache_root = cache_root
        self.key = key
        cache_root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_temporaries(cache_root, key)
        self.tmp = cache_root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.splits = {name: ShardWriter(self.tmp / name, rows_per_shard) for name in SPLITS}

    def commit(self, summary: dict, schemas: dict[str, pa.Schema], overwrite: bool) -> Path:
        for name, writer in self.splits.items():
            writer.close(schemas[name])
        (self.tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
        (self.tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # marks the entry finished
        final = self.cache_root / self.key
        if final.exists() and overwrite:
            trash = self.cache_root / f".trash-{self.key}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            self.tmp.rename(final)
        except OSError:
            # Another process finished the same key first: its entry is equally valid.
            if finished_entry(self.cache_root, self.key) is None:
                raise
            self.abort()
        return final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _remove_abandoned_temporaries(cache_root: Path, key: str) -> None:
    """Delete temporaries of this key left by processes that no longer exist (killed runs)."""
    for tmp in cache_root.glob(f".tmp-{key}-*"):
        try:
            pid = int(tmp.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
