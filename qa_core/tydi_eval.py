"""TyDi QA's primary-task metric (passage answer F1 and minimal answer F1, per language).

Follows the official scorer, ``tydi_eval.py`` and ``eval_utils.py`` of
google-research-datasets/tydiqa at commit cf288a7672aa2684d8c3a30d5966cf5cb9ac23dc, rule for
rule. Standard library only, so that ``qa-tydi-eval`` starts without loading torch, pyarrow or
numpy.

The rules, per language (a language is scored only when it has predictions):

* Gold has a passage (minimal) answer when at least ``passage_non_null_threshold``
  (``minimal_non_null_threshold``) annotators give a non-null one, 2 by default; a YES/NO
  answer counts as a minimal answer.
* Passage credit 1 when the predicted candidate index equals any non-null annotator's; minimal
  credit = the best byte-overlap F1 over the annotators' non-null spans, or, for a YES/NO
  prediction, 1 when any annotator gave the same answer. Credit needs both sides non-null.
* Each gold example gives one row (has gold, has prediction, credit, score); the rows are
  sorted by score, high first, and precision = credit / predicted and recall = credit / gold
  are taken after every distinct score; the best F1 over those thresholds is reported with its
  precision, recall and threshold, and the best recall at precision >= 0.5, 0.75 and 0.9.

Official quirks matched on purpose (each is what cf288a7 computes):

* A gold example with no prediction is a row with score 0 that counts as *predicted* exactly
  when its gold is null (``not gold_has_answer``), with no credit: a missing prediction of a
  null example lowers precision at every threshold at or below 0.
* Tied scores: precision and recall at a score are taken after every row of that score, so a
  tie is all in or all out; among thresholds with the same F1 the highest score wins, and the
  reported threshold is 0.0 when no threshold gives an F1 above 0.
* Predictions are grouped by *their own* ``language`` field, gold by the gold's: a prediction
  labelled with another language than its gold is missing in the gold's language and
  unexpected in its own.
* A language with predictions but no gold examples gets a row of zeros (and enters the mean).
* The non-English mean is the plain mean of the per-language F1, precision and recall over the
  scored languages other than English.

Where this module differs, it refuses input the official code would crash on or misread
rather than scoring it differently: duplicate ids, a YES/NO prediction with a span, a
prediction without ``minimal_answer``, non-finite scores, float ids (which lose digits above
2**53) and malformed offsets are errors naming the file, line and field. Two small extensions:
languages outside TyDi's eleven are scored too (the official loop skips them; on TyDi data
nothing changes), listed after the eleven; and an example with no annotations at all counts as
null gold (the official code fails adding an empty list to a count).

Byte offsets index ``document_plaintext.encode("utf-8")``, end exclusive, in gold and
predictions alike; the scorer never needs the document itself.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from qa_core.errors import QAError, exit_interrupted, exit_with_error
from qa_core.files import write_atomic

# The official scorer's language order; its table lists languages in this order.
TYDI_LANGUAGES = ("english", "arabic", "bengali", "finnish", "indonesian", "japanese",
                  "swahili", "korean", "russian", "telugu", "thai")
PRECISION_TARGETS = (0.5, 0.75, 0.9)
_TARGET_KEYS = ("p50", "p75", "p90")
YES_NO = ("NONE", "YES", "NO")
_DECIMAL_ID = re.compile(r"-?[0-9]{1,40}")
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


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
    language: str               # lower-cased, as TyDi writes it: "english", "arabic", ...
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


ROW_KEYS = ("passage_f1", "passage_precision", "passage_recall", "passage_threshold",
            "minimal_f1", "minimal_precision", "minimal_recall", "minimal_threshold",
            "passage_recall_at_p50", "passage_recall_at_p75", "passage_recall_at_p90",
            "minimal_recall_at_p50", "minimal_recall_at_p75", "minimal_recall_at_p90",
            "examples", "predicted")


@dataclass
class TydiScores:
    """Per-language scores (``metrics.json["tydi"]``), their non-English mean, and how many
    prediction ids the gold lacks.

    F1, precision, recall and recall-at-precision are in % (like ``exact_match``); thresholds
    are on the predictions' own score scale. ``non_english_mean`` has the same keys (means;
    thresholds None, ``examples``/``predicted`` summed) and is None unless more than one
    language was scored and one of them is not English.
    """

    languages: dict[str, dict]
    non_english_mean: dict | None
    unexpected_predictions: int
    # beyond the shared interface, for the table: gold languages left out for want of
    # predictions (-> their example counts), and predictions whose language is not their gold's
    skipped_languages: dict[str, int] = field(default_factory=dict)
    language_mismatches: int = 0

    def table(self) -> str:
        """The human-readable per-language table (and the non-English mean row)."""
        head = (f"{'language':<22}{'examples':>9}{'predicted':>10}  "
                f"{'passage F1':>10}{'P':>8}{'R':>8}  {'minimal F1':>10}{'P':>8}{'R':>8}")
        lines = [head, "-" * len(head)]
        rows = list(self.languages.items())
        if self.non_english_mean is not None:
            count = sum(language != "english" for language in self.languages)
            rows.append((f"non-English mean ({count})", self.non_english_mean))
        for name, row in rows:
            lines.append(
                f"{name:<22}{row['examples']:>9}{row['predicted']:>10}  "
                f"{row['passage_f1']:>10.2f}{row['passage_precision']:>8.2f}"
                f"{row['passage_recall']:>8.2f}  {row['minimal_f1']:>10.2f}"
                f"{row['minimal_precision']:>8.2f}{row['minimal_recall']:>8.2f}")
        if not self.languages:
            lines.append("(no language has predictions)")
        if self.skipped_languages:
            skipped = ", ".join(f"{k} ({v})" for k, v in self.skipped_languages.items())
            lines.append(f"languages skipped (no predictions; gold examples): {skipped}")
        lines.append(f"unexpected predictions (ids not in the gold): "
                     f"{self.unexpected_predictions}")
        if self.language_mismatches:
            lines.append(f"predictions labelled with another language than their gold: "
                         f"{self.language_mismatches} (scored as missing in the gold's language)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

class _Row(NamedTuple):
    """One gold example's entry in the official answer_stats lists."""

    has_gold: bool
    has_pred: bool
    credit: float   # passage: 1 or 0; minimal: the best overlap F1
    score: float


def _null_span(start: int, end: int) -> bool:
    return start < 0 and end < 0


def span_f1(gold_start: int, gold_end: int, pred_start: int, pred_end: int) -> float:
    """Byte-overlap F1 of two non-null spans (end exclusive).

    Precision = overlap / predicted bytes, recall = overlap / gold bytes, computed with the
    same float operations as the official ``compute_partial_match_scores``. Spans that only
    touch, or an empty span, overlap in no byte and score 0 (the official code asserts on an
    empty span lying inside the other).
    """
    overlap = min(gold_end, pred_end) - max(gold_start, pred_start)
    if overlap <= 0:
        return 0.0
    precision = overlap / (pred_end - pred_start)
    recall = overlap / (gold_end - gold_start)
    return 2 * precision * recall / (precision + recall)


def _passage_answered(a: TydiAnnotation) -> bool:
    return a.passage_index >= 0


def _minimal_answered(a: TydiAnnotation | TydiPrediction) -> bool:
    """A minimal span or a YES/NO answer."""
    return not _null_span(a.minimal_start_byte, a.minimal_end_byte) or a.yes_no_answer != "NONE"


def _passage_row(gold: TydiGold, pred: TydiPrediction, has_gold: bool) -> _Row:
    has_pred = pred.passage_answer_index >= 0
    correct = has_gold and has_pred and any(
        a.passage_index == pred.passage_answer_index for a in gold.annotations)
    return _Row(has_gold, has_pred, float(correct), pred.passage_answer_score)


def _minimal_row(gold: TydiGold, pred: TydiPrediction, has_gold: bool) -> _Row:
    has_pred = _minimal_answered(pred)
    credit = 0.0
    if has_gold and has_pred and pred.yes_no_answer != "NONE":
        # any annotator's same YES/NO, whatever that annotator's span or passage
        credit = float(any(a.yes_no_answer == pred.yes_no_answer for a in gold.annotations))
    elif has_gold and has_pred:
        credit = max((span_f1(a.minimal_start_byte, a.minimal_end_byte, pred.minimal_start_byte,
                              pred.minimal_end_byte)
                      for a in gold.annotations
                      if not _null_span(a.minimal_start_byte, a.minimal_end_byte)), default=0.0)
    return _Row(has_gold, has_pred, credit, pred.minimal_answer_score)


def _safe_divide(x: float, y: float) -> float:
    return x / y if y else 0.0


def _task_scores(task: str, rows: list[_Row]) -> dict[str, float]:
    """``task``'s entries of a language's row: precision and recall after every distinct score
    (rows sorted high first, ties taken together), then the best F1 with its precision, recall
    and threshold, and the best recall at each precision target (0 when none reaches it).

    As the official ``compute_pr_curves``: the stable sort keeps tied rows together, the point
    for a score is the one after its last row, and strict ``>`` keeps the highest threshold
    among equal F1s (and equal recalls).
    """
    total_gold = sum(row.has_gold for row in rows)
    points: dict[float, tuple[float, float]] = {}   # score -> (precision, recall), high first
    credit = predicted = 0.0
    for row in sorted(rows, key=lambda r: r.score, reverse=True):
        credit += row.credit
        predicted += row.has_pred
        points[row.score] = (_safe_divide(credit, predicted), _safe_divide(credit, total_gold))
    best = (0.0, 0.0, 0.0, 0.0)
    recall_at = [0.0] * len(PRECISION_TARGETS)
    for score, (precision, recall) in points.items():
        for t, target in enumerate(PRECISION_TARGETS):
            if precision >= target and recall > recall_at[t]:
                recall_at[t] = recall
        f1 = _safe_divide(2 * precision * recall, precision + recall)
        if f1 > best[0]:
            best = (f1, precision, recall, float(score))
    f1, precision, recall, threshold = best
    return {f"{task}_f1": 100 * f1, f"{task}_precision": 100 * precision,
            f"{task}_recall": 100 * recall, f"{task}_threshold": threshold,
            **{f"{task}_recall_at_{key}": 100 * value
               for key, value in zip(_TARGET_KEYS, recall_at)}}


def _language_row(gold: list[TydiGold], predictions: Mapping[str, TydiPrediction],
                  passage_threshold: int, minimal_threshold: int) -> dict:
    preds = [predictions.get(g.example_id) for g in gold]
    row: dict[str, Any] = {}
    for task, answered, make, threshold in (
            ("passage", _passage_answered, _passage_row, passage_threshold),
            ("minimal", _minimal_answered, _minimal_row, minimal_threshold)):
        rows = []
        for g, p in zip(gold, preds):
            # gold has an answer when `threshold` annotators gave one (none without annotators)
            has_gold = bool(g.annotations) and sum(map(answered, g.annotations)) >= threshold
            # official quirk: a missing prediction is "predicted" when the gold is null, score 0
            rows.append(_Row(has_gold, not has_gold, 0.0, 0.0) if p is None
                        else make(g, p, has_gold))
        row.update(_task_scores(task, rows))
    row["examples"] = len(gold)
    row["predicted"] = sum(p is not None for p in preds)
    return {key: row[key] for key in ROW_KEYS}


def _non_english_mean(languages: dict[str, dict]) -> dict | None:
    others = [row for language, row in languages.items() if language != "english"]
    if len(languages) < 2 or not others:
        return None
    mean: dict[str, Any] = {}
    for key in ROW_KEYS:
        if key.endswith("_threshold"):
            mean[key] = None   # thresholds of different languages do not average
        elif key in ("examples", "predicted"):
            mean[key] = sum(row[key] for row in others)
        else:
            mean[key] = sum(row[key] for row in others) / len(others)
    return mean


def _check_prediction(p: TydiPrediction) -> None:
    for name in ("passage_answer_score", "minimal_answer_score"):
        if not math.isfinite(getattr(p, name)):
            raise QAError(f"prediction for example id {p.example_id}: field '{name}' is "
                          f"{getattr(p, name)}; scores must be finite to be ranked")


def score_tydi(gold: Mapping[str, TydiGold], predictions: Mapping[str, TydiPrediction],
               passage_non_null_threshold: int = 2,
               minimal_non_null_threshold: int = 2) -> TydiScores:
    """The official primary-task scores, per language (see the module docstring)."""
    gold_by_language: dict[str, list[TydiGold]] = {}
    for example in gold.values():
        gold_by_language.setdefault(example.language, []).append(example)
    predictions_by_language: dict[str, dict[str, TydiPrediction]] = {}
    for example_id, p in predictions.items():
        _check_prediction(p)
        predictions_by_language.setdefault(p.language, {})[example_id] = p
    extra = sorted(set(predictions_by_language) - set(TYDI_LANGUAGES))
    languages = {}
    for language in (*TYDI_LANGUAGES, *extra):
        if language in predictions_by_language:
            languages[language] = _language_row(
                gold_by_language.get(language, []), predictions_by_language[language],
                passage_non_null_threshold, minimal_non_null_threshold)
    skipped = {language: len(examples) for language, examples in gold_by_language.items()
               if language not in languages}
    mismatched = sum(example_id in gold and gold[example_id].language != p.language
                     for example_id, p in predictions.items())
    return TydiScores(
        languages=languages, non_english_mean=_non_english_mean(languages),
        unexpected_predictions=sum(example_id not in gold for example_id in predictions),
        skipped_languages=skipped, language_mismatches=mismatched)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _json_type(value) != "object" else "{...}"
    return f"{_json_type(value)} {text if len(text) <= 40 else text[:37] + '...'}"


def _records(path: str | os.PathLike) -> Iterator[tuple[dict, str, int]]:
    """(record, where, line number) per non-blank line of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    try:
        handle = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as err:
        raise TydiInputError(f"{path}: cannot open ({err.strerror or err})") from None
    line_number = 0
    try:
        with handle:
            for line_number, raw in enumerate(handle, 1):
                where = f"{path}:{line_number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise TydiInputError(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} "
                                         f"at column {err.start + 1})") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:  # big ints stay exact Python ints here
                    raise TydiInputError(f"{where}: malformed JSON ({err.msg} at column "
                                         f"{err.colno})") from None
                except RecursionError:
                    raise TydiInputError(f"{where}: malformed JSON (nested too deeply)") from None
                if not isinstance(record, dict):
                    raise TydiInputError(f"{where}: expected a JSON object, got "
                                         f"{_json_type(record)}")
                yield record, where, line_number
    except _GZIP_ERRORS as err:  # the line that could not be read is the next one
        raise TydiInputError(f"{path}:{line_number + 1}: damaged or not gzip data "
                             f"({err})") from None
    except OSError as err:
        raise TydiInputError(f"{path}: cannot read ({err.strerror or err})") from None


def _require(record: dict, name: str, where: str) -> Any:
    if record.get(name) is None:
        raise TydiInputError(f"{where}: missing required field '{name}'")
    return record[name]


def _object(value: Any, what: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise TydiInputError(f"{where}: field '{what}' must be an object, got {_shown(value)}")
    return value


def _int(value: Any, what: str, where: str) -> int:
    """An integer field; an integral float (``5.0``) is accepted, as the official code would
    compare it equal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TydiInputError(f"{where}: field '{what}' must be an integer, got {_shown(value)}")


def _score(value: Any, what: str, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    raise TydiInputError(f"{where}: field '{what}' must be a finite number, got {_shown(value)}")


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise TydiInputError(f"{where}: field '{what}' must be a string, got {_shown(value)}")
    return value


def _example_id(value: Any, what: str, where: str) -> str:
    """An id as text: an integer's exact decimal digits (JSON integers parse exactly; a float
    has already lost digits above 2**53, so it is refused), or a string as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise TydiInputError(f"{where}: field '{what}' must be an integer or a non-empty string, "
                         f"got {_shown(value)}")


def _yes_no(value: Any, what: str, where: str) -> str:
    if value is None:
        return "NONE"
    answer = _text(value, what, where).upper()   # the official reader lower-cases it
    if answer not in YES_NO:
        raise TydiInputError(f"{where}: field '{what}' must be YES, NO or NONE, got "
                             f"{_shown(value)}")
    return answer


def _span(start: Any, end: Any, names: tuple[str, str], what: str,
          where: str) -> tuple[int, int]:
    """(start, end) byte span, (-1, -1) when null; the official ``Span`` checks. ``names``
    are the two offsets' field names, ``what`` the span's."""
    start, end = _int(start, names[0], where), _int(end, names[1], where)
    if (start < 0) != (end < 0):
        raise TydiInputError(f"{where}: field '{what}' is half null (start {start}, end {end}): "
                             "both offsets are -1 or neither is")
    if start < 0:
        return -1, -1
    if start > end:
        raise TydiInputError(f"{where}: field '{what}' starts after it ends "
                             f"(start {start}, end {end})")
    return start, end


def _gold_id(record: dict, path: Path, line_number: int, where: str) -> str:
    """The id the project's reader (``readers._identified``) gives this row: its ``id``, else
    its ``example_id``, else ``<file name>:<line>`` (HF primary_task rows carry neither), so
    that predictions written by the training run find their gold."""
    for key in ("id", "example_id"):
        if record.get(key) is not None:
            return _example_id(record[key], key, where)
    return f"{path.name}:{line_number}"


def _raw_annotations(annotations: list, where: str) -> tuple[TydiAnnotation, ...]:
    """The official raw layout: a list of {passage_answer{candidate_index},
    minimal_answer{plaintext_start_byte, plaintext_end_byte}, yes_no_answer}."""
    result = []
    for i, entry in enumerate(annotations):
        name = f"annotations[{i}]"
        entry = _object(entry, name, where)
        passage = _object(_require(entry, "passage_answer", where), f"{name}.passage_answer",
                          where)
        minimal = _object(_require(entry, "minimal_answer", where), f"{name}.minimal_answer",
                          where)
        index = _int(passage.get("candidate_index"), f"{name}.passage_answer.candidate_index",
                     where)
        start, end = _span(minimal.get("plaintext_start_byte"),
                           minimal.get("plaintext_end_byte"),
                           (f"{name}.minimal_answer.plaintext_start_byte",
                            f"{name}.minimal_answer.plaintext_end_byte"),
                           f"{name}.minimal_answer", where)
        result.append(TydiAnnotation(max(index, -1), start, end,
                                     _yes_no(entry.get("yes_no_answer"),
                                             f"{name}.yes_no_answer", where)))
    return tuple(result)


def _hf_annotations(annotations: dict, where: str) -> tuple[TydiAnnotation, ...]:
    """The HF primary_task layout: parallel lists, one entry per annotator; passage indices
    and yes/no answers may be absent (as the project's reader allows)."""
    lists = {}
    for name in ("minimal_answers_start_byte", "minimal_answers_end_byte",
                 "passage_answer_candidate_index", "yes_no_answer"):
        value = annotations.get(name)
        if value is None and name in ("passage_answer_candidate_index", "yes_no_answer"):
            value = []
        if not isinstance(value, list):
            raise TydiInputError(f"{where}: field 'annotations.{name}' must be an array, got "
                                 f"{_shown(value)}")
        lists[name] = value
    count = len(lists["minimal_answers_start_byte"])
    for name, values in lists.items():
        if len(values) != count and (values or name.startswith("minimal")):
            raise TydiInputError(f"{where}: field 'annotations' has {count} "
                                 f"minimal_answers_start_byte but {len(values)} {name} "
                                 "(one entry per annotator in each)")
    passages = lists["passage_answer_candidate_index"] or [-1] * count
    yes_no = lists["yes_no_answer"] or ["NONE"] * count
    result = []
    for i in range(count):
        index = _int(passages[i], f"annotations.passage_answer_candidate_index[{i}]", where)
        start, end = _span(lists["minimal_answers_start_byte"][i],
                           lists["minimal_answers_end_byte"][i],
                           (f"annotations.minimal_answers_start_byte[{i}]",
                            f"annotations.minimal_answers_end_byte[{i}]"),
                           f"annotations.minimal_answers_*_byte[{i}]", where)
        result.append(TydiAnnotation(max(index, -1), start, end,
                                     _yes_no(yes_no[i], f"annotations.yes_no_answer[{i}]",
                                             where)))
    return tuple(result)


def read_gold(path: str | os.PathLike) -> dict[str, TydiGold]:
    """Gold ``.jsonl``/``.jsonl.gz`` in the official raw layout or the HF ``primary_task``
    layout -> {example_id: gold}, in file order; bad input, a repeated id included (the
    official reader keeps the last), is a :class:`TydiInputError` naming file:line and field."""
    path = Path(path)
    gold: dict[str, TydiGold] = {}
    lines: dict[str, int] = {}
    for record, where, line_number in _records(path):
        example_id = _gold_id(record, path, line_number, where)
        if example_id in gold:
            raise TydiInputError(f"{where}: field 'example_id': {example_id} repeats line "
                                 f"{lines[example_id]}")
        language = _text(_require(record, "language", where), "language", where).lower()
        annotations = _require(record, "annotations", where)
        if isinstance(annotations, list):
            parsed = _raw_annotations(annotations, where)
        elif isinstance(annotations, dict):
            parsed = _hf_annotations(annotations, where)
        else:
            raise TydiInputError(f"{where}: field 'annotations' must be an array (official "
                                 f"layout) or an object (HF layout), got {_shown(annotations)}")
        gold[example_id] = TydiGold(example_id, language, parsed)
        lines[example_id] = line_number
    if not gold:
        raise TydiInputError(f"{path}: no gold records")
    return gold


def read_predictions(path: str | os.PathLike) -> dict[str, TydiPrediction]:
    """Official prediction JSONL (``.gz`` too) -> {example_id: prediction}; bad input is a
    :class:`TydiInputError` naming file:line and field (see the module docstring for where
    this is stricter than the official reader). As the official reader: ``passage_answer_index``
    defaults to -1 and ``yes_no_answer`` to NONE (any case). More lenient: an id may be the
    string of the gold's integer (the official dict lookup needs the same JSON type)."""
    predictions: dict[str, TydiPrediction] = {}
    lines: dict[str, int] = {}
    for record, where, line_number in _records(path):
        example_id = _example_id(_require(record, "example_id", where), "example_id", where)
        if example_id in predictions:
            raise TydiInputError(f"{where}: field 'example_id': {example_id} repeats line "
                                 f"{lines[example_id]}")
        minimal = _object(_require(record, "minimal_answer", where), "minimal_answer", where)
        start, end = _span(_require(minimal, "start_byte_offset", where),
                           _require(minimal, "end_byte_offset", where),
                           ("minimal_answer.start_byte_offset",
                            "minimal_answer.end_byte_offset"), "minimal_answer", where)
        yes_no = _yes_no(record.get("yes_no_answer"), "yes_no_answer", where)
        if yes_no != "NONE" and start >= 0:
            raise TydiInputError(f"{where}: field 'yes_no_answer' is {yes_no} but "
                                 "'minimal_answer' holds a span; a yes/no prediction has none")
        index = record.get("passage_answer_index")
        predictions[example_id] = TydiPrediction(
            example_id=example_id,
            language=_text(_require(record, "language", where), "language", where).lower(),
            passage_answer_index=-1 if index is None else max(
                _int(index, "passage_answer_index", where), -1),
            passage_answer_score=_score(_require(record, "passage_answer_score", where),
                                        "passage_answer_score", where),
            minimal_start_byte=start, minimal_end_byte=end,
            minimal_answer_score=_score(_require(record, "minimal_answer_score", where),
                                        "minimal_answer_score", where),
            yes_no_answer=yes_no)
        lines[example_id] = line_number
    return predictions


def prediction_record(p: TydiPrediction) -> dict:
    """One official prediction JSONL record (``example_id`` an int when it is decimal digits,
    as the official reader matches it against the gold's integer ids)."""
    example_id: int | str = p.example_id
    if _DECIMAL_ID.fullmatch(p.example_id) and str(int(p.example_id)) == p.example_id:
        example_id = int(p.example_id)
    return {
        "example_id": example_id,
        "language": p.language,
        "passage_answer_index": p.passage_answer_index,
        "passage_answer_score": p.passage_answer_score,
        "minimal_answer": {"start_byte_offset": p.minimal_start_byte,
                           "end_byte_offset": p.minimal_end_byte},
        "minimal_answer_score": p.minimal_answer_score,
        "yes_no_answer": p.yes_no_answer,
    }


def write_predictions(path: str | os.PathLike, predictions: Iterable[TydiPrediction]) -> None:
    """Write the official prediction JSONL (gzipped when the name ends in .gz) atomically: a
    temporary file beside it, then a rename, so a reader never sees half a file."""
    lines = []
    for p in predictions:
        _check_prediction(p)
        lines.append(json.dumps(prediction_record(p), ensure_ascii=False, allow_nan=False) + "\n")
    data = "".join(lines).encode("utf-8")
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_atomic(path, lambda handle: handle.write(data))


# ---------------------------------------------------------------------------------------------
# qa-tydi-eval
# ---------------------------------------------------------------------------------------------

def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``qa-tydi-eval``: the table, then ``json.dumps(scores.languages)`` as the last line."""
    parser = argparse.ArgumentParser(
        prog="qa-tydi-eval",
        description="Score TyDi QA primary-task predictions (passage and minimal answer F1 per "
                    "language) with the rules of TyDi's official tydi_eval.py (cf288a7). The "
                    "last line printed is JSON: {language: scores}.")
    parser.add_argument("--gold", required=True,
                        help="gold .jsonl or .jsonl.gz: TyDi's official layout or the HF "
                             "tydiqa/primary_task layout")
    parser.add_argument("--predictions", required=True,
                        help="predictions .jsonl: one official prediction object per line "
                             "(e.g. a training run's tydi_predictions.jsonl)")
    parser.add_argument("--passage_non_null_threshold", type=_non_negative, default=2,
                        help="annotators needed for gold to have a passage answer (default 2)")
    parser.add_argument("--minimal_non_null_threshold", type=_non_negative, default=2,
                        help="annotators needed for gold to have a minimal answer (default 2)")
    args = parser.parse_args(argv)
    try:
        gold = read_gold(args.gold)
        predictions = read_predictions(args.predictions)
        scores = score_tydi(gold, predictions, args.passage_non_null_threshold,
                            args.minimal_non_null_threshold)
    except QAError as err:
        return exit_with_error("qa-tydi-eval", err)
    except KeyboardInterrupt:
        return exit_interrupted("qa-tydi-eval")
    print(scores.table())
    print(json.dumps(scores.languages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
