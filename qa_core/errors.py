"""The project's one error type: what a user did or gave that cannot work, said in one line.

Scripts catch :class:`QAError` at their edge and print ``<prog>: error: <message>`` with exit
code 2 (no traceback). Each message names where the problem is: the flag, the file (and line,
record id or field), or the checkpoint file. Anything else that escapes is a bug and keeps its
traceback.
"""
from __future__ import annotations

import sys


class QAError(ValueError):
    """Bad input, settings or saved state; the message names the flag, file, line, id or field."""


class SettingsError(QAError):
    """A flag's value cannot work (checked before any data or model is touched)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first message line (or its type), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def exit_with_error(prog: str, err: Exception) -> int:
    """Print the one-line error to stderr and return the exit code (2)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2
