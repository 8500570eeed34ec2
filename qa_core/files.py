"""File plumbing shared by the checkpoints, the preprocessing cache and the output folder: atomic
writes, sha256, JSON reads that fail in one line naming the file, manifests and PID checks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from qa_core.errors import QAError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or folder to the device (a folder: the names in it, after a rename)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, content: str | Callable[[BinaryIO], None]) -> None:
    """``path`` holds its old content or the new one, never a part: ``content`` (text, or a
    function writing to a binary handle) goes to a hidden temporary file beside it, flushed to
    the device and renamed over it, and the rename is flushed too."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent)


def read_json(path: Path, error: type[QAError] = QAError) -> Any:
    """Parse a JSON file; a file that is not UTF-8 JSON is ``error``, one line naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column "
                    f"{err.colno}); truncated or damaged") from None


def manifest_entry(path: Path, hash_limit: int | None = None, sync: bool = False) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file (no sha256 above ``hash_limit`` bytes);
    ``sync``: flush the file to the device first."""
    size = Path(path).stat().st_size
    if sync:
        fsync_path(path)
    if hash_limit is not None and size > hash_limit:
        return {"bytes": size}
    return {"bytes": size, "sha256": sha256_file(path)}


def entry_problem(path: Path, recorded: dict, manifest: str = "manifest.json") -> str | None:
    """Why ``path`` is not the file a :func:`manifest_entry` in ``manifest`` recorded (None when
    it is): missing, another size, or (where recorded) another sha256. ``size`` is the cache's
    older name for ``bytes``."""
    if not path.is_file():
        return f"missing (listed in {manifest})"
    size, expected = path.stat().st_size, recorded.get("bytes", recorded.get("size"))
    if size != expected:
        return f"{size} bytes, {manifest} records {expected}: truncated or replaced"
    if "sha256" in recorded and sha256_file(path) != recorded["sha256"]:
        return f"content differs from {manifest} (sha256): altered or replaced"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's; no pid this machine can have
        return True
    return True
