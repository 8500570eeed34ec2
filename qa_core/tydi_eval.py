"""TyDi QA's primary-task metric (passage answer F1 and minimal answer F1, per language).

Follows the official scorer, ``tydi_eval.py`` and ``eval_utils.py`` of
google-research-datasets/tydiqa at commit cf288a7672aa2684d8c3a30d5966cf5cb9ac23dc, rule for
rule (its quirks included, each named where it is matched). Standard library only, so that
``qa-tydi-eval`` starts without loading torch, pyarrow or numpy.

Byte offsets index ``document_plaintext.encode("utf-8")``, end exclusive, in gold and
predictions alike; the scorer never needs the document itself.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qa_core.errors import QAError


class TydiInputError(QAError):
    """A gold or prediction file that cannot be scored; the message names file, line, field.

    A :class:`QAError` defined here rather than ``readers.DataSourceError``: importing
    ``qa_core.readers`` would load pyarrow and numpy, which this module keeps out.
    """


@dataclass(frozen=True)
class TydiAnnotation:
    """One annotator's answer. Byte offsets index document_plaintext.encode('utf-8'); end
    exclusive."""

    passage_index: int          # passage_answer.candidate_index; -1 when null
    minimal_start_byte: int     # -1 when null
    minimal_end_byte: int       # -1 when null
    yes_no_answer: str          # "NONE" | "YES" | "NO"


@dataclass(frozen=True)
class TydiGold:
    """One gold example: every annotator's answer, nulls included, in file order."""

    example_id: str             # exact decimal text of an integer example_id (never via float);
    # rows without one (HF primary_task layout): the project reader's row id
    language: str               # as in the data: "english", "arabic", ...
    annotations: tuple[TydiAnnotation, ...]


@dataclass(frozen=True)
class TydiPrediction:
    """One system prediction, as a line of the official prediction JSONL."""

    example_id: str
    language: str
    passage_answer_index: int
    passage_answer_score: float
    minimal_start_byte: int     # -1 when no span
    minimal_end_byte: int
    minimal_answer_score: float
    yes_no_answer: str = "NONE"


@dataclass
class TydiScores:
    """Per-language scores (``metrics.json["tydi"]``), their non-English mean, and how many
    prediction ids the gold lacks."""

    languages: dict[str, dict]
    non_english_mean: dict | None
    unexpected_predictions: int

    def table(self) -> str:
        """The human-readable per-language table (and the non-English mean row)."""
        raise NotImplementedError


def prediction_record(p: TydiPrediction) -> dict:
    """One official prediction JSONL record (``example_id`` an int when it is decimal digits,
    as the official reader matches it against the gold's integer ids)."""
    raise NotImplementedError


def write_predictions(path, predictions: Iterable[TydiPrediction]) -> None:
    """Write the official prediction JSONL atomically (a temporary file, then a rename)."""
    raise NotImplementedError


def read_predictions(path) -> dict[str, TydiPrediction]:
    """Official prediction JSONL (``.gz`` too) -> {example_id: prediction}; bad input is a
    :class:`TydiInputError` naming file:line and field."""
    raise NotImplementedError


def read_gold(path) -> dict[str, TydiGold]:
    """Gold ``.jsonl``/``.jsonl.gz`` in the official raw layout or the HF ``primary_task``
    layout -> {example_id: gold}, in file order; bad input is a :class:`TydiInputError`."""
    raise NotImplementedError


def score_tydi(gold: Mapping[str, TydiGold], predictions: Mapping[str, TydiPrediction],
               passage_non_null_threshold: int = 2,
               minimal_non_null_threshold: int = 2) -> TydiScores:
    """The official primary-task scores, per language."""
    raise NotImplementedError


def main(argv: list[str] | None = None) -> int:
    """``qa-tydi-eval``: the table, then ``json.dumps(scores.languages)`` as the last line."""
    raise NotImplementedError
