"""Every supported source -> one example schema, with counted skips.

Example schema (one dict per question; also the ``examples`` split of the cache):
    id: str                      stable: the source's ``id``/``example_id``, else from its position
    question: str
    context: str
    answers: {"text": [str], "answer_start": [int]}   every annotator's span, *character* offsets
    title: str, language: str
    yes_no_answer: str           "YES"/"NO" when an annotator said so (TyDi), else "NONE"
    passage_answer_start / passage_answer_end: int   char span of the gold TyDi passage, or -1
    tydi_annotations: [{passage_index, minimal_start_byte, minimal_end_byte, yes_no_answer}]
                                 TyDi (official raw or HF primary_task layout) only, else None:
                                 every annotator in file order, nulls included (-1), the
                                 offsets as given, UTF-8 *bytes* into ``context``, end exclusive
    passage_candidates: [{start_byte, end_byte}]   TyDi's passage candidates, UTF-8 *bytes* into
                                 ``context`` (end exclusive); [] for other layouts

TyDi's ``example_id`` (a signed 64-bit integer) becomes ``id`` as its exact decimal text (JSON
integers are read as Python ints, never through a float; a float id is refused). HF
``primary_task`` rows have no id: theirs is the row's position (``file.jsonl:LINE``).

Sources: TyDi primary task (hub, ``save_to_disk`` folder, raw or HF-schema jsonl with byte
offsets; PrimeQA "base" jsonl with character offsets) and SQuAD (v1.1/v2.0 JSON, flat jsonl).

Training labels use the first answer (TyDi: the first non-null minimal answer); evaluation
uses all of them. A TyDi example whose annotators marked only YES/NO or only a passage has
no span, so it is labelled no-answer; those choices are counted (``notes``), not hidden.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import numbers
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from qa_core.errors import QAError, first_line
from qa_core.files import sha256_file
from qa_core.offsets import ByteCharMap, OffsetError, is_blank, unencodable_at

TYDI_HUB_CONFIG = "primary_task"


class DataSourceError(QAError):
    """Input that cannot be read; the message names the file, line or example id and the field."""


@dataclass
class ReadStats:
    """What the reader kept, skipped (by reason) and noted (labelling choices)."""

    examples: int = 0
    answerable: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    # rows of the kept language(s) per schema: "tydi", "primeqa", "squad"
    formats: Counter = field(default_factory=Counter)

    def add(self, other: "ReadStats") -> None:
        """Add another reader's counts (a worker's share of the rows) to these."""
        self.examples += other.examples
        self.answerable += other.answerable
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)
        self.formats.update(other.formats)


@dataclass(frozen=True)
class SourceSpec:
    data: str                     # local path or hub name
    split: str = "train"          # hub / load_from_disk split; ignored for single files
    language: str = "english"     # TyDi language filter; "all" keeps every language
    hub_config: str | None = None


# ---------------------------------------------------------------------------------------------
# Field checks: a wrong type is a one-line error naming the field, never a traceback
# ---------------------------------------------------------------------------------------------

_JSON_TYPES = ((bool, "boolean"), (dict, "object"), ((list, tuple), "array"), (str, "string"),
               (numbers.Number, "number"))


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages ("object", "array", "number", ...)."""
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)),
                type(value).__name__)


def _shown(value: Any) -> str:
    """``value`` for a message: its JSON type and a short repr ("number 2012", "null")."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{json_type(value)} {text if len(text) <= 60 else text[:57] + '...'}"


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string"}


def _expect(value: Any, kind: type, what: str | None, where: str) -> Any:
    """``value`` if it is a ``kind`` (dict, list or str); else an error naming field ``what``
    (None: ``where`` names an element of a JSON array, e.g. ``data[3]``).

    A string must also be valid Unicode text (:func:`_check_unicode`).
    """
    if not isinstance(value, kind):
        expected = f"field '{what}' must be" if what else "expected"
        raise DataSourceError(f"{where}: {expected} {_KIND_NAMES[kind]}, got {_shown(value)}")
    if kind is str:
        _check_unicode(value, what, where)
    return value


def _require(record: dict, name: str, where: str, kind: type | None = None) -> Any:
    """``record[name]``, present and not null (and a ``kind``, when given)."""
    if record.get(name) is None:
        raise DataSourceError(f"{where}: missing required field '{name}'")
    return record[name] if kind is None else _expect(record[name], kind, name, where)


def _check_unicode(text: str, what: str, where: str) -> None:
    """Every text a reader takes passes here: a lone UTF-16 surrogate is an error naming it.
    JSON's ``\\ud800`` escape decodes to one without complaint, but byte offsets, the tokenizer
    and Arrow would each fail on it later."""
    at = unencodable_at(text)
    if at is not None:
        raise DataSourceError(
            f"{where}: field '{what}' holds a lone UTF-16 surrogate "
            f"(\\u{ord(text[at]):04x} at character {at}): not valid Unicode text")


def as_int(value: Any, what: str, where: str) -> int:
    """An integer field (an integral float or a numeric string is accepted, as ``int()`` would)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral) or float(value).is_integer():
            return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise DataSourceError(f"{where}: field '{what}' must be an integer, got {_shown(value)}")


def _optional_str(record: dict, name: str, where: str) -> str:
    value = record.get(name)
    return "" if value is None else _expect(value, str, name, where)


# ---------------------------------------------------------------------------------------------
# Row converters: one raw record -> Example, or None for a counted skip
# ---------------------------------------------------------------------------------------------

def _identified(record: dict, fallback_id: str, where: str) -> tuple[str, str]:
    """(example id, ``where`` naming it): the source's ``id``/``example_id``, else
    ``fallback_id`` (the row's position, not checked: it is built from the file name).

    ``where`` is the one place ids are written into messages: an id holding a newline or another
    unprintable character is shown as its ``repr``, so the error stays on one line.
    """
    key = next((key for key in ("id", "example_id") if record.get(key) is not None), None)
    if key is None:
        example_id = fallback_id
    elif isinstance(record[key], (float, bool)):
        # a 64-bit id does not survive a float (2**53 + 1 reads as 2**53): refused, not rounded
        # into another example's id
        raise DataSourceError(f"{where}: field '{key}' must be an integer or a string, got "
                              f"{_shown(record[key])} (a float cannot hold a 64-bit id exactly)")
    else:
        example_id = str(record[key])
    where = f"{where} (example id {example_id if example_id.isprintable() else repr(example_id)})"
    if key is not None:
        _check_unicode(example_id, key, where)
    return example_id, where


def _base_example(example_id: str, question: str, context: str, title: str = "",
                  language: str = "") -> dict:
    return {
        "id": example_id,
        "question": question,
        "context": context,
        "answers": {"text": [], "answer_start": []},
        "title": title,
        "language": language,
        "yes_no_answer": "NONE",
        "passage_answer_start": -1,
        "passage_answer_end": -1,
        "tydi_annotations": None,
        "passage_candidates": [],
    }


def _has_text(stats: ReadStats, question: str, context: str, names: tuple[str, str],
              where: str) -> bool:
    """False (a counted skip) for a blank question or context; a non-string one is an error."""
    _expect(question, str, names[0], where)
    _expect(context, str, names[1], where)
    if is_blank(question):
        stats.skipped["empty_question"] += 1
        return False
    if is_blank(context):
        stats.skipped["empty_context"] += 1
        return False
    return True


def _raw_field(entry: Any, keys: tuple[str, ...], name: str, where: str) -> Any:
    """``entry[k1][k2]...`` of an official TyDi record's list entry ``name`` (``annotations[0]``):
    a level that is not an object, or a missing key, is an error naming the field's path."""
    for key in keys:
        _expect(entry, dict, name, where)
        name = f"{name}.{key}"
        if key not in entry:
            raise DataSourceError(f"{where}: missing required field '{name}'")
        entry = entry[key]
    return entry


# HF primary_task list -> its path in each entry of the official record's list
_RAW_TYDI_PATHS = {
    "annotations": {"passage_answer_candidate_index": ("passage_answer", "candidate_index"),
                    "minimal_answers_start_byte": ("minimal_answer", "plaintext_start_byte"),
                    "minimal_answers_end_byte": ("minimal_answer", "plaintext_end_byte")},
    "passage_answer_candidates": {"plaintext_start_byte": ("plaintext_start_byte",),
                                  "plaintext_end_byte": ("plaintext_end_byte",)},
}


def raw_tydi_to_hf(record: dict, where: str) -> dict:
    """Official TyDi jsonl record -> the HF ``primary_task`` schema (HF's loader's mapping).

    A malformed entry is an error naming the record's id and the field's path
    (``annotations[0].minimal_answer``)."""
    if any(record.get(key) is not None for key in ("id", "example_id")):
        where = _identified(record, "", where)[1]
    entries = {"annotations": _require(record, "annotations", where, list),
               "passage_answer_candidates": _expect(record.get("passage_answer_candidates") or [],
                                                    list, "passage_answer_candidates", where)}
    hf = {group: {name: [_raw_field(entry, path, f"{group}[{i}]", where)
                         for i, entry in enumerate(entries[group])]
                  for name, path in fields.items()}
          for group, fields in _RAW_TYDI_PATHS.items()}
    hf["annotations"]["yes_no_answer"] = [entry.get("yes_no_answer", "NONE")
                                          for entry in entries["annotations"]]
    for key in ("question_text", "document_plaintext", "document_title", "language", "id",
                "example_id"):
        if key in record:
            hf[key] = record[key]
    return hf


# The HF schema's annotation lists, one entry per annotator. The last two may be missing or
# empty: every annotator then gets this default.
TYDI_ANNOTATION_LISTS = {"minimal_answers_start_byte": None, "minimal_answers_end_byte": None,
                         "passage_answer_candidate_index": -1, "yes_no_answer": "NONE"}


def _tydi_annotation_lists(annotations: Any, where: str) -> tuple[list, list, list, list]:
    """(starts, ends, passage indices, yes/no) of the HF schema: one entry per annotator in each.

    Lists of different lengths would pair annotators wrongly (``zip`` drops the tail), so they
    are an error naming the field, as in the PrimeQA layout.
    """
    _expect(annotations, dict, "annotations", where)
    if not {"minimal_answers_start_byte", "minimal_answers_end_byte"} <= set(annotations):
        raise DataSourceError(f"{where}: field 'annotations' lacks "
                              "'minimal_answers_start_byte'/'minimal_answers_end_byte'")
    lists = [list(_expect([] if default is not None and annotations.get(name) is None
                          else annotations.get(name), list, f"annotations.{name}", where))
             for name, default in TYDI_ANNOTATION_LISTS.items()]
    count = len(lists[0])
    for (name, default), values in zip(TYDI_ANNOTATION_LISTS.items(), lists):
        if default is not None and not values:
            values.extend([default] * count)
        elif len(values) != count:
            raise DataSourceError(
                f"{where}: field 'annotations' has {count} minimal_answers_start_byte but "
                f"{len(values)} {name} (one entry per annotator in each)")
    return tuple(lists)


def _add_spans(example: dict, starts: list, ends: list, names: tuple[str, str],
               to_chars: Callable[[int, int], tuple[int, int]], where: str,
               stats: ReadStats) -> bool:
    """Append every usable annotator span (``to_chars``: the offsets as given -> character
    offsets, or an OffsetError whose reason counts the skip); True when any span was
    annotated. ``names``: the two offset lists' field names, for messages.

    A start of null or -1 is "no span". Any other negative start is not an offset: the span is
    a counted skip (``answer_start_negative``), but one was annotated.
    """
    had_span = False
    context = example["context"]
    for i, (start_value, end_value) in enumerate(zip(starts, ends)):
        start = -1 if start_value is None else as_int(start_value, f"{names[0]}[{i}]", where)
        if start == -1:
            continue
        had_span = True
        end = as_int(end_value, f"{names[1]}[{i}]", where)
        if start < 0:
            stats.skipped["answer_start_negative"] += 1
            continue
        try:
            start, end = to_chars(start, end)
        except OffsetError as err:
            stats.skipped[f"answer_{err.reason}"] += 1
            continue
        example["answers"]["text"].append(context[start:end])
        example["answers"]["answer_start"].append(start)
    return had_span


def _yes_no(values: list, what: str, where: str) -> str:
    for i, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataSourceError(f"{where}: field '{what}' must hold strings (YES/NO/NONE), "
                                  f"got {_shown(value)}")
        _check_unicode(value, f"{what}[{i}]", where)
    return next((v for v in values if v and v != "NONE"), "NONE")


def _offset_or_null(value: Any, what: str, where: str) -> int:
    """A TyDi gold number as the official scorer reads it: null is -1, else the integer."""
    return -1 if value is None else as_int(value, what, where)


def tydi_gold_fields(lists: tuple[list, list, list, list], record: dict,
                     where: str) -> tuple[list[dict], list[dict]]:
    """(every annotator's answer, the passage candidates of ``record``) as the metric needs them.

    Annotators keep their file order, nulls included (-1, "NONE"); offsets are kept as given
    (UTF-8 bytes into the document, end exclusive): the scorer, not the reader, judges them.
    """
    starts, ends, passages, yes_no = lists
    candidates = _expect(record.get("passage_answer_candidates") or {}, dict,
                         "passage_answer_candidates", where)
    candidate_lists = [_expect(candidates.get(name) or [], list,
                               f"passage_answer_candidates.{name}", where)
                       for name in ("plaintext_start_byte", "plaintext_end_byte")]
    if len(candidate_lists[0]) != len(candidate_lists[1]):
        raise DataSourceError(f"{where}: field 'passage_answer_candidates' has "
                              f"{len(candidate_lists[0])} plaintext_start_byte but "
                              f"{len(candidate_lists[1])} plaintext_end_byte")
    annotations = [{
        "passage_index": _offset_or_null(
            passage, f"annotations.passage_answer_candidate_index[{i}]", where),
        "minimal_start_byte": _offset_or_null(
            start, f"annotations.minimal_answers_start_byte[{i}]", where),
        "minimal_end_byte": _offset_or_null(
            end, f"annotations.minimal_answers_end_byte[{i}]", where),
        "yes_no_answer": (answer or "NONE").upper(),
    } for i, (start, end, passage, answer) in enumerate(zip(starts, ends, passages, yes_no))]
    spans = [{
        "start_byte": as_int(start, f"passage_answer_candidates.plaintext_start_byte[{i}]", where),
        "end_byte": as_int(end, f"passage_answer_candidates.plaintext_end_byte[{i}]", where),
    } for i, (start, end) in enumerate(zip(*candidate_lists))]
    return annotations, spans


def tydi_hf_to_example(record: dict, fallback_id: str, where: str,
                       stats: ReadStats) -> dict | None:
    """HF ``tydiqa/primary_task`` row -> Example. Byte offsets become exact character offsets."""
    example_id, where = _identified(record, fallback_id, where)
    question = _require(record, "question_text", where)
    context = _require(record, "document_plaintext", where)
    annotations = _require(record, "annotations", where)
    if not _has_text(stats, question, context, ("question_text", "document_plaintext"), where):
        return None
    starts, ends, passages, yes_no = _tydi_annotation_lists(annotations, where)
    example = _base_example(example_id, question, context,
                            title=_optional_str(record, "document_title", where),
                            language=_optional_str(record, "language", where))
    byte_map = ByteCharMap.for_text(context)
    had_span = _add_spans(example, starts, ends, ("annotations.minimal_answers_start_byte",
                                                  "annotations.minimal_answers_end_byte"),
                          byte_map.span_to_chars, where, stats)
    example["yes_no_answer"] = _yes_no(yes_no, "annotations.yes_no_answer", where)
    example["tydi_annotations"], example["passage_candidates"] = tydi_gold_fields(
        (starts, ends, passages, yes_no), record, where)
    gold = next((a["passage_index"] for a in example["tydi_annotations"]
                 if a["passage_index"] >= 0), -1)
    if gold >= 0:
        try:
            passage = example["passage_candidates"][gold]
            example["passage_answer_start"], example["passage_answer_end"] = (
                byte_map.span_to_chars(passage["start_byte"], passage["end_byte"]))
        except (IndexError, OffsetError):
            stats.notes["passage_candidate_unusable"] += 1
    return _finish_annotated(example, had_span, gold >= 0, stats)


def _finish_annotated(example: dict, had_span: bool, had_passage: bool,
                      stats: ReadStats) -> dict | None:
    """Shared end of every layout: unusable spans skip, span-less labels are counted."""
    if had_span and not example["answers"]["text"]:
        # Every annotated span was unusable: labelling this no-answer would be a silent mislabel.
        stats.skipped["all_answer_spans_invalid"] += 1
        return None
    if not example["answers"]["text"]:
        if example["yes_no_answer"] != "NONE":
            stats.notes["yes_no_only_labelled_no_answer"] += 1
        elif had_passage:
            stats.notes["passage_only_labelled_no_answer"] += 1
        else:
            stats.notes["no_answer"] += 1
    return example


def _primeqa_target(target: Any, where: str) -> tuple[list, list, list, list]:
    _expect(target, dict, "target", where)
    try:
        starts, ends = list(target["start_positions"]), list(target["end_positions"])
        passages = list(target.get("passage_indices") or [-1] * len(starts))
        yes_no = list(target.get("yes_no_answer") or ["NONE"] * len(starts))
    except (KeyError, TypeError):
        raise DataSourceError(f"{where}: field 'target' lacks "
                              "'start_positions'/'end_positions'") from None
    if len(starts) != len(ends):
        raise DataSourceError(f"{where}: field 'target' has {len(starts)} start_positions "
                              f"but {len(ends)} end_positions")
    return starts, ends, passages, yes_no


def primeqa_to_example(record: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """PrimeQA "base" row -> Example.

    Layout: ``question``, ``context`` (a list holding the one document), ``language`` and
    ``target`` {``start_positions``, ``end_positions``: *character* offsets into the
    document, end exclusive, -1 = no span; ``passage_indices``; ``yes_no_answer``}, one entry
    per annotator.  ``example_id`` is PrimeQA's own id (a UUID for TyDi, not TyDi's id).
    """
    example_id, where = _identified(record, fallback_id, where)
    question = _require(record, "question", where)
    documents = _require(record, "context", where)
    target = _require(record, "target", where)
    if not isinstance(documents, list) or len(documents) != 1:
        count = len(documents) if isinstance(documents, list) else type(documents).__name__
        raise DataSourceError(f"{where}: field 'context' must be a list holding one document "
                              f"(PrimeQA single-context layout), got {count}")
    context = documents[0]
    starts, ends, passages, yes_no = _primeqa_target(target, where)
    if not _has_text(stats, question, context, ("question", "context[0]"), where):
        return None
    example = _base_example(example_id, question, context,
                            language=_optional_str(record, "language", where))

    def char_span(start: int, end: int) -> tuple[int, int]:
        if not start < end <= len(context):
            raise OffsetError("char_offset_out_of_range", f"[{start}, {end}) outside the context")
        return start, end

    had_span = _add_spans(example, starts, ends, ("target.start_positions", "target.end_positions"),
                          char_span, where, stats)
    example["yes_no_answer"] = _yes_no(yes_no, "target.yes_no_answer", where)
    # Passage candidates are not in the layout: the gold passage index is kept only as a count.
    had_passage = any(as_int(p, "target.passage_indices", where) >= 0
                      for p in passages if p is not None)
    return _finish_annotated(example, had_span, had_passage, stats)


def _squad_answers(answers: Any, where: str) -> list[tuple[Any, Any]]:
    """(text, answer_start) per annotator from the list layout or HF's flat dict layout."""
    if isinstance(answers, dict):  # flat HF layout: {"text": [...], "answer_start": [...]}
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataSourceError(f"{where}: field 'answers' must hold lists 'text' and "
                                  f"'answer_start' of one length, got {_shown(answers)}")
        return list(zip(texts, starts))
    pairs = []
    for answer in _expect(answers, list, "answers", where):
        if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
            raise DataSourceError(f"{where}: malformed field 'answers' ({_shown(answer)})")
        pairs.append((answer["text"], answer["answer_start"]))
    return pairs


def squad_to_example(qa: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """One SQuAD question (v1.1 or v2.0, flat: with its ``context`` and ``title``) -> Example;
    answers are checked against the context.

    A start must index the context from its beginning: a negative one (which Python's slicing
    would read from the end) and one past the context's end are counted skips.
    """
    example_id, where = _identified(qa, fallback_id, where)
    context = _require(qa, "context", where)
    question = _require(qa, "question", where)
    answers = qa.get("answers")
    impossible = qa.get("is_impossible")
    if impossible not in (None, True, False):  # "false" is truthy: it read as impossible
        raise DataSourceError(f"{where}: field 'is_impossible' must be true or false, got "
                              f"{_shown(impossible)}")
    if answers is None and not impossible:
        raise DataSourceError(f"{where}: missing required field 'answers'")
    if not _has_text(stats, question, context, ("question", "context"), where):
        return None
    example = _base_example(example_id, question, context,
                            title=_expect(qa.get("title") or "", str, "title", where))
    pairs = _squad_answers(answers, where) if answers is not None else []
    if pairs and impossible:
        # SQuAD v2 gives an impossible question `answers: []` (its spans go to
        # `plausible_answers`); answers as well contradict that, and either label may be wrong.
        stats.skipped["impossible_with_answers"] += 1
        return None
    for i, (text, start_value) in enumerate(pairs):
        _expect(text, str, f"answers[{i}].text", where)
        start = as_int(start_value, f"answers[{i}].answer_start", where)
        if start < 0:
            stats.skipped["answer_start_negative"] += 1
        elif start >= len(context):
            stats.skipped["answer_start_out_of_range"] += 1
        elif not text or context[start:start + len(text)] != text:
            stats.skipped["answer_text_mismatch"] += 1
        else:
            example["answers"]["text"].append(text)
            example["answers"]["answer_start"].append(start)
    return _finish_annotated(example, bool(pairs), False, stats)


def row_format(row: dict) -> str:
    """Which layout a flat row is in: "primeqa", "tydi" or "squad"."""
    if isinstance(row.get("target"), dict) and isinstance(row.get("context"), list):
        return "primeqa"
    if "document_plaintext" in row or "annotations" in row:
        return "tydi"
    return "squad"


def flat_row_to_example(row: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """A row that is already flat (TyDi HF schema, PrimeQA base, or SQuAD-style
    id/question/context/answers)."""
    kind = row_format(row)
    stats.formats[kind] += 1
    if kind == "primeqa":
        return primeqa_to_example(row, fallback_id, where, stats)
    if kind == "tydi":
        if isinstance(row.get("annotations"), list):
            row = raw_tydi_to_hf(row, where)
        return tydi_hf_to_example(row, fallback_id, where, stats)
    return squad_to_example(row, fallback_id, where, stats)


def language_kept(row: dict, language: str) -> bool:
    """The language filter, applied to a raw row before it is converted or counted.

    SQuAD-style rows carry no language and are always kept; ``language`` "all" keeps every row.
    """
    if language == "all" or row_format(row) == "squad":
        return True
    value = row.get("language")
    return not value or str(value).lower() == language


# ---------------------------------------------------------------------------------------------
# Files: bytes -> lines of UTF-8 text; damage is named with the file and the line reached
# ---------------------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _gzip_damage(path: Path, lines_read: int, err: Exception) -> DataSourceError:
    after = f"after line {lines_read}" if lines_read else "within line 1"
    if isinstance(err, EOFError):
        return DataSourceError(f"{path}: truncated gzip file: the compressed data ends {after} "
                               "(an interrupted download or copy?); fetch or compress it again")
    return DataSourceError(f"{path}: damaged gzip data {after} ({err})")


def _not_utf8(where: str, data: bytes, position: int) -> DataSourceError:
    return DataSourceError(f"{where}: not UTF-8 text (byte 0x{data[position]:02x} at column "
                           f"{position + 1}); convert the file to UTF-8")


def check_file_header(path: Path) -> None:
    """An empty file, or a ``.gz`` name on content that is not gzip, is refused up front."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not head:
        raise DataSourceError(f"{path}: empty file")
    if _is_gz(path) and head != GZIP_MAGIC:
        raise DataSourceError(f"{path}: not gzip-compressed although the name ends in .gz (it "
                              f"starts with {head!r}); decompress it with the right name or "
                              "gzip it")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, undecoded line) of a file, gzipped or not; gzip damage -> DataSourceError."""
    line_number = 0
    with gzip.open(path, "rb") if _is_gz(path) else open(path, "rb") as handle:
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except GZIP_ERRORS as err:
                raise _gzip_damage(path, line_number, err) from None
            line_number += 1
            yield line_number, raw


def _read_text(path: Path) -> str:
    """The whole UTF-8 text of a file, gzipped or not; damage -> DataSourceError with the line."""
    data = b"".join(raw for _, raw in _raw_lines(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        raise _not_utf8(f"{path}:{line}", data[line_start:], err.start - line_start) from None


# ---------------------------------------------------------------------------------------------
# Sources: validate up front, then stream examples
# ---------------------------------------------------------------------------------------------

Row = tuple[dict, str, str]   # (record, fallback id, where: file and line or row, for messages)


def examples_from_rows(rows: Iterator[Row], language: str, stats: ReadStats,
                       seen_ids: set[str],
                       notes_by_id: dict[str, Counter] | None = None) -> Iterator[dict]:
    """Examples of ``rows`` that pass the language filter, with unique ids; skips in ``stats``.

    The language filter comes first: a row of another language is counted once
    (``notes.other_language``) and adds nothing to ``formats``, ``skipped`` or the other notes.
    An id already in ``seen_ids`` is a ``duplicate_id`` skip; kept ids are added to it.
    ``language`` is lower-case ("all" keeps every row). The other notes (labelling choices)
    count the examples yielded only, not a row skipped or a duplicate; ``notes_by_id`` gets
    each yielded example's notes, for a later stage that drops the example to take back.
    """
    for record, fallback_id, where in rows:
        if not language_kept(record, language):
            stats.notes["other_language"] += 1
            continue
        row = ReadStats()
        example = flat_row_to_example(record, fallback_id, where, row)
        stats.skipped.update(row.skipped)
        stats.formats.update(row.formats)
        if example is None:
            continue
        if example["id"] in seen_ids:
            stats.skipped["duplicate_id"] += 1
            continue
        seen_ids.add(example["id"])
        stats.notes.update(row.notes)
        if notes_by_id is not None and row.notes:
            notes_by_id[example["id"]] = row.notes
        stats.examples += 1
        stats.answerable += bool(example["answers"]["text"])
        yield example


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of a source, for another process to turn into examples. A .jsonl(.gz)
    file's are its undecoded lines: that process, not the reading one, decodes, parses and
    checks them. Other sources' are rows the reading process parsed (SQuAD JSON, datasets)."""

    items: list                 # (line number, raw line) of the file at ``path``; else rows
    path: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def rows(self) -> Iterator[Row]:
        return iter(self.items) if self.path is None else _jsonl_rows(Path(self.path), self.items)


def _row_bytes(record: dict) -> int:
    """About how much text a parsed row holds (its strings and lists of strings)."""
    size = 64
    for value in record.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(item) for item in value if isinstance(item, str))
    return size


def _shared_text(record: Any) -> str | None:
    """The text that rows of one document share (TyDi document, SQuAD context), if any."""
    if not isinstance(record, dict):
        return None
    value = record.get("document_plaintext")
    value = record.get("context") if value is None else value
    return value if isinstance(value, str) else None


def _line_key(line: tuple[int, bytes]) -> bytes | None:
    """The document or context of a raw .jsonl line as it is spelled in the line (JSON-encoded),
    so that the lines after it can be compared without parsing them; None when the line does
    not parse (its task reports that, in its turn) or has no such text."""
    raw = line[1]
    try:
        text = _shared_text(json.loads(raw))
    except (ValueError, RecursionError):
        return None
    if text is None:
        return None
    for ascii_only in (False, True):
        # surrogatepass: a text holding a lone surrogate is an error, but it is reported where
        # the line is turned into a row (with its line and id), not here
        spelled = json.dumps(text, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        if spelled in raw:
            return spelled
    return None


def _chunked(items: Iterator[Any], path: str | None, target: Callable[[int], int],
             size_of: Callable[[Any], int], key_of: Callable[[Any], Any],
             same: Callable[[Any, Any], bool]) -> Iterator[Chunk]:
    """Group ``items`` into chunks of about ``target(bytes before it)`` bytes.

    A full chunk also takes the items that follow it about the same document or context
    (``key_of`` its last item, then ``same(key, item)``), up to twice its size: a document
    split between two chunks would be tokenized by both, which many questions on one long
    document make costly. Where chunks end changes no row and no row's order.
    """
    group, size, total = [], 0, 0
    goal, key = target(0), None
    for item in items:
        if key is not None and (size >= 2 * goal or not same(key, item)):
            yield Chunk(group, path)
            total, group, size = total + size, [], 0
            goal, key = target(total), None
        group.append(item)
        size += size_of(item)
        if key is None and size >= goal:
            key = key_of(item)
            if key is None:  # nothing to keep together: the chunk is done now
                yield Chunk(group, path)
                total, group, size = total + size, [], 0
                goal = target(total)
    if group:
        yield Chunk(group, path)


@dataclass
class ExampleSource:
    """A validated source: ``kind``, a content ``fingerprint`` and a streaming ``rows`` iterator."""

    kind: str                 # "jsonl", "squad_json", "load_from_disk", "hub"
    description: str
    fingerprint: str
    rows: Callable[[], Iterator[Row]]  # (record, fallback_id, where)
    spec: SourceSpec
    path: Path | None = None  # the .jsonl(.gz) file, whose lines are chunked undecoded
    has_splits: bool = False  # a hub dataset or a DatasetDict folder: --split picks one

    def iter_examples(self, stats: ReadStats) -> Iterator[dict]:
        """Examples that pass the language filter, with unique ids; skips counted in ``stats``
        (see :func:`examples_from_rows`)."""
        return examples_from_rows(self.rows(), self.spec.language.lower(), stats, set())

    def chunks(self, target: Callable[[int], int]) -> Iterator[Chunk]:
        """The source's rows in order, as chunks of about ``target(bytes before it)`` bytes
        (:func:`_chunked`) for other processes to turn into examples (:class:`Chunk`). Damage
        met while reading raises :class:`DataSourceError`."""
        if self.path is not None:
            return _chunked(_raw_lines(self.path), str(self.path), target,
                            lambda line: len(line[1]), _line_key, lambda key, line: key in line[1])
        return _chunked(self.rows(), None, target, lambda row: _row_bytes(row[0]),
                        lambda row: _shared_text(row[0]),
                        lambda key, row: _shared_text(row[0]) == key)


# A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _deepest_nesting(text: str) -> tuple[int, int]:
    """(depth, position) of the first deepest opening bracket of JSON ``text``."""
    depth = deepest = deepest_at = 0
    for token in _JSON_STRING_OR_BRACKET.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, deepest_at = depth, token.start()
        elif token.group() in ("]", "}"):
            depth -= 1
    return deepest, deepest_at


def _parse_json(text: str, where: str, whole_file: bool) -> Any:
    """``json.loads(text)``; bad JSON is a DataSourceError at ``where`` naming the column (and
    the line, for a ``whole_file``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        reason, position = err.msg, err.pos
    except RecursionError:
        # The parser recurses once per level: thousands of nested arrays or objects exhaust
        # Python's stack. Name the deepest point instead, as for any other malformed JSON.
        depth, position = _deepest_nesting(text)
        reason = f"nested too deeply: {depth} levels of arrays and objects"
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    at = f"line {line} column {column}" if whole_file else f"column {column}"
    hint = ""
    if whole_file and reason == "Extra data" and column == 1 and text[position] == "{":
        # what datasets' to_json writes by default: one object per line, named .json
        hint = "; it looks like JSON Lines (one object per line): name it .jsonl"
    raise DataSourceError(f"{where}: malformed JSON ({reason} at {at}){hint}")


def _jsonl_row(path: Path, line_number: int, raw: bytes) -> Row | None:
    """One undecoded line of a .jsonl file as a row; None for a blank line."""
    where = f"{path}:{line_number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(where, raw, err.start) from None
    if not line.strip():
        return None
    record = _parse_json(line, where, whole_file=False)
    if not isinstance(record, dict):
        raise DataSourceError(f"{where}: expected a JSON object, got {json_type(record)}")
    return record, f"{path.name}:{line_number}", where


def _jsonl_rows(path: Path, lines: Iterable[tuple[int, bytes]] | None = None) -> Iterator[Row]:
    """The rows of a .jsonl(.gz) file, or of some of its undecoded ``lines``."""
    for line_number, raw in _raw_lines(path) if lines is None else lines:
        row = _jsonl_row(path, line_number, raw)
        if row is not None:
            yield row


def _load_squad_json(path: Path) -> dict:
    document = _parse_json(_read_text(path), str(path), whole_file=True)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataSourceError(f"{path}: unknown format: a .json file must be SQuAD JSON with a "
                              "top-level 'data' list")
    return document


def _squad_rows(path: Path) -> Iterator[tuple[dict, str, str]]:
    document = _load_squad_json(path)
    for a, article in enumerate(document["data"]):
        where_article = f"{path}: data[{a}]"
        _expect(article, dict, None, where_article)
        for p, paragraph in enumerate(_require(article, "paragraphs", where_article, list)):
            where = f"{where_article}.paragraphs[{p}]"
            _expect(paragraph, dict, None, where)
            context = _require(paragraph, "context", where)
            for q, qa in enumerate(_require(paragraph, "qas", where, list)):
                _expect(qa, dict, None, f"{where}.qas[{q}]")
                row = dict(qa, context=context, title=article.get("title"))
                yield row, f"{path.name}:{a}:{p}:{q}", f"{where}.qas[{q}]"


def _dataset_rows(dataset, tag: str) -> Iterator[tuple[dict, str, str]]:
    for index, row in enumerate(dataset):
        yield row, f"{tag}:{index}", f"{tag} row {index}"


def _check_fields(fields: set[str], where: str) -> None:
    """A source's first record or columns must be in a layout the readers know."""
    if not ({"document_plaintext", "annotations"} & fields or {"question", "context"} <= fields):
        raise DataSourceError(
            f"{where}: unknown format: expected TyDi (document_plaintext, annotations), "
            "PrimeQA (question, context, target) or SQuAD-style (question, context, answers) "
            f"fields, got {sorted(fields)}")


def open_source(spec: SourceSpec) -> ExampleSource:
    """Validate ``spec`` (path exists, format known, hub reachable) before any work starts."""
    path = Path(spec.data).expanduser()
    if path.is_dir():
        return _open_disk_dataset(path, spec)
    if path.is_file():
        return _open_file(path, spec)
    if path.exists():  # a FIFO, a device such as /dev/null, a socket
        raise DataSourceError(f"{spec.data}: not a regular file or folder")
    data = spec.data
    looks_local = (data.startswith((".", "/", "~")) or os.sep in data.rstrip("/").split("/", 1)[0]
                   or data.count("/") > 1 or data.endswith((".json", ".jsonl", ".gz")))
    if looks_local:
        raise DataSourceError(f"{data}: no such file or folder")
    return _open_hub_dataset(spec)


def _open_file(path: Path, spec: SourceSpec) -> ExampleSource:
    """A local .jsonl(.gz) or .json(.gz) file: readable, and its first record in a known layout."""
    if not os.access(path, os.R_OK):
        raise DataSourceError(f"{path}: not readable")
    check_file_header(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        first = next(_jsonl_rows(path), None)
        if first is None:
            raise DataSourceError(f"{path}: no records")
        _check_fields(set(first[0]), first[2])
        return ExampleSource("jsonl", str(path), sha256_file(path), lambda: _jsonl_rows(path), spec,
                             path=path)
    if name.endswith((".json", ".json.gz")):
        _load_squad_json(path)  # fail on an unknown layout now, not mid-run
        return ExampleSource("squad_json", str(path), sha256_file(path),
                             lambda: _squad_rows(path), spec)
    raise DataSourceError(f"{path}: unknown format: expected .jsonl, .jsonl.gz, .json, .json.gz "
                          "or a load_from_disk folder")


def _open_disk_dataset(path: Path, spec: SourceSpec) -> ExampleSource:
    import datasets

    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataSourceError(f"{path}: unknown format: a folder must be a "
                              "datasets.save_to_disk folder")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        # What a damaged folder raises here: a missing file or split (FileNotFoundError), a
        # truncated Arrow shard (ArrowInvalid, OSError), a state.json that is not JSON
        # (ValueError) or not of the expected shape (KeyError, TypeError).
        reason = first_line(err).replace(f"{path}{os.sep}", "").replace(str(path), path.name)
        raise DataSourceError(f"{path}: not a readable datasets folder "
                              f"({type(err).__name__}: {reason})") from None
    # A folder of one Dataset has no splits: like a file, --split does not apply, so it neither
    # names nor keys the source (training and evaluation on one folder are the same data).
    has_splits = isinstance(loaded, datasets.DatasetDict)
    if has_splits and spec.split not in loaded:
        raise DataSourceError(f"{path}: no split '{spec.split}' (has: {', '.join(loaded)})")
    dataset = loaded[spec.split] if has_splits else loaded
    _check_fields(set(dataset.column_names), str(path))
    split = spec.split if has_splits else None
    # Each saved dataset carries a content fingerprint: no need to hash gigabytes of Arrow again.
    digest = hashlib.sha256(f"{dataset._fingerprint}|{split}|{len(dataset)}".encode()).hexdigest()
    return ExampleSource("load_from_disk", f"{path} [{split}]" if has_splits else str(path),
                         digest, lambda: _dataset_rows(dataset, f"{path.name}/{split}"
                                                       if has_splits else path.name),
                         spec, has_splits=has_splits)


def _open_hub_dataset(spec: SourceSpec) -> ExampleSource:
    import datasets

    config = spec.hub_config or (TYDI_HUB_CONFIG if "tydiqa" in spec.data.lower() else None)
    try:
        dataset = datasets.load_dataset(spec.data, config, split=spec.split)
    except Exception as err:  # the hub client raises many types; all mean "could not get it"
        offline = (os.environ.get("HF_HUB_OFFLINE") == "1"
                   or os.environ.get("HF_DATASETS_OFFLINE") == "1")
        reason = "offline mode is set" if offline else f"{type(err).__name__}: {first_line(err)}"
        raise DataSourceError(
            f"{spec.data}: not a local path, and the hub dataset could not be loaded ({reason}); "
            "download it where there is network and pass the saved folder or a .jsonl(.gz) file"
        ) from None
    _check_fields(set(dataset.column_names), spec.data)
    digest = hashlib.sha256(
        f"{spec.data}|{config}|{spec.split}|{dataset._fingerprint}".encode()).hexdigest()
    return ExampleSource("hub", f"{spec.data} [{config}/{spec.split}]", digest,
                         lambda: _dataset_rows(dataset, f"{spec.data}/{spec.split}"), spec,
                         has_splits=True)
