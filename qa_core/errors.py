"""The project's one error type: what a user did or gave that cannot work, said in one line.

Scripts catch :class:`QAError` at their edge and print ``<prog>: error: <message>`` with exit
code 2 (no traceback). Each message names where the problem is: the flag, the file (and line,
record id or field), or the checkpoint file. Anything else that escapes is a bug and keeps its
traceback.
"""
from __future__ import annotations

import os
import sys


class QAError(ValueError):
    """Bad input, settings or saved state; the message names the flag, file, line, id or field."""


class SettingsError(QAError):
    """A flag's value cannot work (checked before any data or model is touched)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first message line (or its type), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def launch_rank() -> int:
    """This process's global rank as the launcher set it (before any Accelerator exists)."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def exit_with_error(prog: str, err: Exception) -> int:
    """Print the one-line error to stderr (once per launch: on global rank 0, as every rank
    meets the same error) and return the exit code (2)."""
    if launch_rank() == 0:
        print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def exit_interrupted(prog: str, what_is_left: str = "") -> int:
    """Ctrl-C (KeyboardInterrupt): one line instead of a traceback, saying what is left on
    disk, and the exit code a shell gives a process ended by SIGINT (130)."""
    if launch_rank() == 0:
        print(f"{prog}: interrupted{': ' + what_is_left if what_is_left else ''}",
              file=sys.stderr)
    return 130
