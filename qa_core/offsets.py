"""UTF-8 byte offsets <-> Python character offsets, exact for any text.

TyDi QA gives answer spans as UTF-8 *byte* offsets into ``document_plaintext``.
Slicing a Python ``str`` with them (what the 2023 tutorial did) shifts every span
that follows a multi-byte character. Here a byte offset is converted only when it
lies on a character boundary; anything else is reported, never rounded.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np


class OffsetError(ValueError):
    """A byte span that cannot be mapped to characters; ``reason`` is a short counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@functools.cache
def _combining_marks() -> re.Pattern:
    """Runs of Unicode combining marks (categories Mn, Mc, Me; none lies outside U+0300 to
    U+E01EF). Built once per process, on the first text that is not ASCII (about 0.15 s)."""
    ranges, start = [], None
    for code in range(0x300, 0xE01F1):
        is_mark = unicodedata.category(chr(code))[0] == "M"
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            ranges.append(f"{chr(start)}-{chr(code - 1)}")
            start = None
    return re.compile(f"[{''.join(ranges)}]+")


def extend_ends_over_marks(text: str, offsets: np.ndarray) -> np.ndarray:
    """Token character offsets ``[start, end)`` into ``text``, each end moved past the combining
    marks that follow it (the rest of a run of marks it ends inside) and that no token holds.

    A tokenizer that strips accents (uncased BERT, MiniLM) gives "Cafe\u0301" (decomposed, NFD)
    a token ending before the accent, so no span could end with it: a gold answer ending in a
    mark could never be predicted, and its label was one mark short. An end moves only up to
    the next token's start."""
    if len(offsets) == 0 or text.isascii():
        return offsets
    runs = [(m.start(), m.end()) for m in _combining_marks().finditer(text)]
    if not runs:
        return offsets
    run_starts, run_ends = (np.array(column) for column in zip(*runs))
    ends = offsets[:, 1]
    # the run holding the character at each end (one may start inside the token: a spacing
    # mark it holds, then a non-spacing one the tokenizer dropped, as in Bengali "াঁ")
    which = np.maximum(np.searchsorted(run_starts, ends, side="right") - 1, 0)
    follows = (run_starts[which] <= ends) & (ends < run_ends[which])
    next_starts = np.append(offsets[1:, 0], len(text))
    moved = offsets.copy()
    moved[:, 1] = np.where(follows, np.minimum(run_ends[which], np.maximum(next_starts, ends)),
                           ends)
    return moved


def is_blank(text: str) -> bool:
    """Nothing to read: only whitespace, control and format characters (zero-width space, BOM,
    direction marks) and combining marks. ``str.strip`` keeps "\\u200b" and "\\u0301", so such a
    question was read and answered."""
    if not text.strip():
        return True
    if text.isascii():
        return False
    # stops at the first visible character: at once for any real text
    return all(unicodedata.category(c)[0] in "ZM" or unicodedata.category(c) in ("Cc", "Cf")
               for c in text)


def unencodable_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone UTF-16 surrogate, as JSON's
    ``\\ud800`` escape or a non-UTF-8 command-line byte gives), or None: such a text has no
    byte offsets, and the tokenizer and Arrow fail on it."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")  # faster than searching for U+D800..U+DFFF
    except UnicodeEncodeError as err:
        return err.start
    return None


@dataclass(frozen=True)
class ByteCharMap:
    """Byte -> char lookup for one text, built once and reused for all its spans."""

    num_bytes: int
    # char_before[b] = number of characters that start before byte b (length num_bytes + 1)
    char_before: np.ndarray
    # is_boundary[b] = True where byte b starts a character, or b == num_bytes
    is_boundary: np.ndarray

    @classmethod
    def for_text(cls, text: str) -> "ByteCharMap":
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        # A UTF-8 continuation byte looks like 0b10xxxxxx; every other byte starts a character.
        starts = (data & 0xC0) != 0x80
        is_boundary = np.append(starts, True)
        char_before = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum(starts, out=char_before[1:])
        return cls(num_bytes=len(data), char_before=char_before, is_boundary=is_boundary)

    def to_char(self, byte_offset: int) -> int:
        """Character offset of a byte offset that lies on a character boundary."""
        if not 0 <= byte_offset <= self.num_bytes:
            raise OffsetError(
                "byte_offset_out_of_range",
                f"byte offset {byte_offset} is outside the text (0..{self.num_bytes})",
            )
        if not self.is_boundary[byte_offset]:
            raise OffsetError(
                "byte_offset_splits_character",
                f"byte offset {byte_offset} falls inside a multi-byte UTF-8 character",
            )
        return int(self.char_before[byte_offset])

    def span_to_chars(self, start_byte: int, end_byte: int) -> tuple[int, int]:
        """Half-open byte span [start, end) -> half-open char span; empty or reversed spans fail."""
        if end_byte <= start_byte:
            raise OffsetError("empty_or_reversed_span",
                              f"byte span [{start_byte}, {end_byte}) is empty or reversed")
        return self.to_char(start_byte), self.to_char(end_byte)


def char_span_to_byte_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Half-open character span of ``text`` -> half-open UTF-8 *byte* span (the inverse of
    :meth:`ByteCharMap.span_to_chars`); both ends land on character boundaries by construction.
    Encodes only the text up to ``end``."""
    if not 0 <= start <= end <= len(text):
        raise OffsetError("char_offset_out_of_range",
                          f"char span [{start}, {end}) is outside the text (0..{len(text)})")
    start_byte = len(text[:start].encode("utf-8"))
    return start_byte, start_byte + len(text[start:end].encode("utf-8"))
