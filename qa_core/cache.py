"""Content-addressed cache of tokenized Arrow shards, written atomically and checked on reuse.

Layout of one entry (``<cache_root>/<key>/``), a folder ``datasets.load_from_disk`` opens:
    dataset_dict.json           {"splits": ["features", "examples"]}
    features/data-0000i-of-0000n.arrow, state.json, dataset_info.json
    examples/...                (same)
    manifest.json               bytes of every file above (and sha256 of the small ones)
    summary.json                what preprocessing counted, with the manifest's sha256 and
                                its own; written last, so present only in finished entries

Entries are built in ``<cache_root>/.tmp-<key>-<pid>-<host><rand>`` and renamed into place, so
a run killed half-way leaves only a hidden temporary folder that is never read; a replaced
entry is renamed to ``.trash-<key>-<rand>`` before it is deleted. :func:`remove_leftovers`
deletes temporaries whose writer is gone and every ``.trash-*`` folder. A finished entry is
reused only when :func:`entry_problem` finds its summary and manifest as their recorded
sha256 say and every file of the manifest whole. A device that fills up while an entry is
written is a :class:`CacheDirError` (:func:`no_space_error`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from qa_core.errors import QAError
from qa_core.files import entry_problem as file_problem
from qa_core.files import manifest_entry, pid_alive, sha256_file

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
SPLITS = ("features", "examples")
HASHED_FILE_LIMIT = 1 << 20   # files up to 1 MiB (metadata, small shards) are also hashed
# Temporaries carry a tag of the machine that writes them: on a cache folder shared between
# machines, another machine's process id says nothing about whether its writer is alive.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class CacheDirError(QAError):
    """A ``--cache_dir`` that cannot hold the cache; the message names the flag and the path."""


def no_space_error(cache_root: Path, err: BaseException) -> CacheDirError | None:
    """The one-line error for writing an entry into a full device (or over the disk quota);
    None for any other error, which keeps its behaviour."""
    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return CacheDirError(f"--cache_dir {cache_root}: no space left on the device while writing "
                         f"a cache entry ({errno.errorcode[err.errno]}: {os.strerror(err.errno)}); "
                         "free space or choose another --cache_dir")


def fingerprint(parts: dict[str, Any]) -> str:
    """Stable short hash of JSON-serialisable parts (sorted keys, so dict order never matters)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


# Files that define a Hugging Face tokenizer; hashing them keys the cache without loading it.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model",
)


def tokenizer_files_fingerprint(model: str) -> str | None:
    """Hash of a local model folder's tokenizer files; None when ``model`` is not such a folder.

    This keeps a cache hit cheap: loading a tokenizer costs seconds, hashing its files milliseconds.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    digests = {name: sha256_file(folder / name) for name in TOKENIZER_FILES
               if (folder / name).is_file()}
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


# ---------------------------------------------------------------------------------------------
# The cache folder, its entries' integrity, and what killed runs leave behind
# ---------------------------------------------------------------------------------------------

def check_writable_folder(cache_root: Path, flag: str = "--cache_dir") -> None:
    """Refuse a folder flag (``--cache_dir``, ``--output_dir``) that is a file or cannot be
    created, before any work starts.

    An existing cache folder that is read-only passes: it can still serve cache hits, and
    :class:`CacheEntryWriter` refuses it when an entry has to be written.
    """
    if cache_root.exists():
        if not cache_root.is_dir():
            raise CacheDirError(f"{flag} {cache_root}: is a file, not a folder")
        return
    parent = cache_root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CacheDirError(f"{flag} {cache_root}: cannot be created: {parent} is a file, "
                            "not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CacheDirError(f"{flag} {cache_root}: cannot be created: {parent} is not writable")


def build_manifest(folder: Path) -> dict:
    """Size of every file under ``folder`` (sha256 too for files up to ``HASHED_FILE_LIMIT``)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in (SUMMARY_FILE, MANIFEST_FILE):
            continue
        files[name] = manifest_entry(path, HASHED_FILE_LIMIT)
    return {"version": 1, "files": files}


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, why it could not be read)."""
    try:
        return json.loads(path.read_bytes()), None
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not valid JSON (truncated?)"


def summary_sha256(summary: dict) -> str:
    """The sha256 of a summary's content (its keys sorted, ``summary_sha256`` itself left out),
    recorded in it: the manifest covers the shards, this covers the counts a hit reports."""
    content = {k: v for k, v in summary.items() if k != "summary_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def entry_problem(entry: Path) -> str | None:
    """None when a cache entry is whole; else ``"<file>: <why>"`` for the first damage found.

    ``summary.json`` must parse, name this entry's key and the manifest's sha256, and hold the
    sha256 of its own content (the counts a hit reports); ``manifest.json`` must have the
    recorded hash, and every file it lists its recorded size (and sha256, where recorded); then
    the summary's fields are trusted as the build wrote them. An entry without a manifest
    (written before manifests existed) is not trusted either.
    """
    summary, why = _read_json(entry / SUMMARY_FILE)
    if why or not isinstance(summary, dict):
        return f"{SUMMARY_FILE}: {why or 'not a JSON object'}"
    expected = summary.get("manifest_sha256")
    if not expected:
        return (f"{SUMMARY_FILE}: no manifest_sha256 "
                "(written by a version that recorded no file sizes)")
    if summary.get("key") != entry.name:
        return f"{SUMMARY_FILE}: key is {summary.get('key')!r}, not the entry's folder name"
    if summary.get("summary_sha256") != summary_sha256(summary):
        return f"{SUMMARY_FILE}: its content does not match its summary_sha256"
    try:
        blob = (entry / MANIFEST_FILE).read_bytes()
    except OSError:
        return f"{MANIFEST_FILE}: missing or unreadable"
    if hashlib.sha256(blob).hexdigest() != expected:
        return f"{MANIFEST_FILE}: does not match the sha256 recorded in {SUMMARY_FILE}"
    for name, recorded in json.loads(blob)["files"].items():  # "size": entries before "bytes"
        problem = file_problem(entry / name, recorded, MANIFEST_FILE)
        if problem:
            return f"{name}: {problem}"
    return None


def _writer_alive(name: str) -> bool:
    """Whether the process that named temporary ``name`` may still be writing it.

    Only a writer on this machine whose process is gone counts as dead; a name this code did
    not make, or one from another machine, is left alone.
    """
    parts = name.split("-")
    if len(parts) != 4 or not parts[2].isdigit():
        return True
    tag = parts[3]
    return (len(tag) == 16 and tag[:8] != HOST_TAG) or pid_alive(int(parts[2]))


def _remove(folder: Path) -> bool:
    """Delete a folder; errors are ignored, as another run may be deleting it too."""
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def remove_leftovers(cache_root: Path) -> list[str]:
    """Delete what killed runs left in ``cache_root``; returns the names removed.

    ``.tmp-*`` folders go when their writer's process is gone (a live writer's stays);
    ``.trash-*`` folders always go: once renamed aside, an entry is used by no one.
    """
    try:
        names = [p.name for p in cache_root.iterdir()]
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        stale = name.startswith(".trash-") or (name.startswith(".tmp-") and not _writer_alive(name))
        if stale and _remove(cache_root / name):
            removed.append(name)
    return removed


class ShardWriter:
    """Streams record batches of one split into Arrow shards ``<prefix>NNNNN.arrow`` in ``folder``
    (which must exist), rolling every ``rows_per_shard`` rows.

    A cache entry's shards are written by several of these (one per worker task, each with its
    own prefix) and named in order when the entry is committed (:func:`finish_split`).
    """

    def __init__(self, folder: Path, rows_per_shard: int, schema: pa.Schema, prefix: str) -> None:
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.files: list[Path] = []
        self.schema = schema
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._rows_in_shard = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
            self._roll()
        self._writer.write_batch(batch)
        self._rows_in_shard += batch.num_rows

    def _roll(self) -> None:
        self.finish()
        path = self.folder / f"{self.prefix}{len(self.files):05d}.arrow"
        self._writer = pa.ipc.new_stream(str(path), self.schema)  # closes the file with it
        self.files.append(path)
        self._rows_in_shard = 0

    def finish(self) -> None:
        """Close the shard being written (the writer can go on with a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_split_info(folder: Path, schema: pa.Schema) -> None:
    """``dataset_info.json`` of a split, as ``datasets`` writes it (importing it costs ~0.4 s)."""
    import datasets

    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(schema))
    info.write_to_directory(str(folder))


def finish_split(folder: Path, files: list[Path]) -> int:
    """Name a split's shards in order as ``datasets`` does and write its ``state.json``.

    ``files`` are the split's shards in row order (the first task wrote ``dataset_info.json``).
    Returns the number of shards.
    """
    count = len(files)
    names = []
    for index, path in enumerate(files):
        name = f"data-{index:05d}-of-{count:05d}.arrow"
        path.rename(folder / name)
        names.append({"filename": name})
    state = {
        "_data_files": names, "_fingerprint": uuid.uuid4().hex[:16], "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    return count


class CacheEntryWriter:
    """A temporary entry folder; it becomes ``<cache_root>/<key>`` only when :meth:`commit` runs.

    Shards are written into ``<tmp>/<split>/`` (by this process or by workers) and appended to
    ``shards[split]`` in row order.
    """

    def __init__(self, cache_root: Path, key: str) -> None:
        self.cache_root = cache_root
        self.key = key
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheDirError(f"--cache_dir {cache_root}: cannot be created "
                                f"({err.strerror or err})") from None
        if not os.access(cache_root, os.W_OK | os.X_OK):
            raise CacheDirError(f"--cache_dir {cache_root}: not writable "
                                "(a new cache entry has to be written)")
        # who writes it, so a later run can judge it stale (:func:`_writer_alive`)
        self.tmp = cache_root / f".tmp-{key}-{os.getpid()}-{HOST_TAG}{uuid.uuid4().hex[:8]}"
        try:
            for name in SPLITS:
                (self.tmp / name).mkdir(parents=True)
        except OSError as err:
            raise CacheDirError(f"--cache_dir {cache_root}: cannot write there "
                                f"({err.strerror or err})") from None
        self.shards: dict[str, list[Path]] = {name: [] for name in SPLITS}
        self.num_shards: dict[str, int] = {}

    def finish(self) -> None:
        """Name the shards in order and write the splits' metadata."""
        self.num_shards = {name: finish_split(self.tmp / name, self.shards[name])
                           for name in SPLITS}
        (self.tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))

    def commit(self, summary: dict, overwrite: bool, damaged: bool = False) -> Path:
        """Write the manifest and then the summary of the finished splits, and move the entry in.

        ``overwrite`` replaces a finished entry of the same key; ``damaged`` replaces one only
        while it is still damaged (another run may have rebuilt it in the meantime).
        ``summary`` gains ``num_shards`` and ``manifest_sha256``.
        """
        summary["num_shards"] = dict(self.num_shards)
        manifest = json.dumps(build_manifest(self.tmp), indent=1).encode()
        (self.tmp / MANIFEST_FILE).write_bytes(manifest)
        summary["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
        summary["summary_sha256"] = summary_sha256(summary)
        # summary.json comes last: it marks the entry finished
        (self.tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        final = self.cache_root / self.key
        replace = overwrite or (damaged and entry_problem(final) is not None)
        if final.exists() and replace:
            trash = self.cache_root / f".trash-{self.key}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            _remove(trash)  # a kill here leaves .trash-*, which remove_leftovers deletes later
        try:
            self.tmp.rename(final)
        except OSError:
            # Another process finished the same key first: its entry is equally valid.
            if not (final / SUMMARY_FILE).is_file():
                raise
            self.abort()
        return final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
