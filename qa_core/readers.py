"""Every supported source -> one example schema, with counted skips.

Example schema (one dict per question; also the ``examples`` split of the cache):
    id: str                      stable: the source's ``id``/``example_id`` or derived from its position
    question: str
    context: str
    answers: {"text": [str], "answer_start": [int]}   every annotator's span, *character* offsets
    title: str, language: str
    yes_no_answer: str           "YES"/"NO" when an annotator said so (TyDi), else "NONE"
    passage_answer_start / passage_answer_end: int   char span of the gold TyDi passage, or -1

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
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from qa_core.cache import file_sha256
from qa_core.offsets import ByteCharMap, OffsetError

TYDI_HUB_CONFIG = "primary_task"
EXAMPLE_COLUMNS = (
    "id", "question", "context", "answers", "title", "language",
    "yes_no_answer", "passage_answer_start", "passage_answer_end",
)


class DataSourceError(ValueError):
    """Input that cannot be read; the message names the file, line or example id and the field."""


@dataclass
class ReadStats:
    """What the reader kept, skipped (by reason) and noted (labelling choices)."""

    examples: int = 0
    answerable: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)   # rows read per schema: "tydi", "primeqa", "squad"

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "answerable": self.answerable,
            "skipped": dict(sorted(self.skipped.items())),
            "notes": dict(sorted(self.notes.items())),
            "formats": dict(sorted(self.formats.items())),
        }


@dataclass(frozen=True)
class SourceSpec:
    data: str                     # local path or hub name
    split: str = "train"          # hub / load_from_disk split; ignored for single files
    language: str = "english"     # TyDi language filter; "all" keeps every language
    hub_config: str | None = None


# ---------------------------------------------------------------------------------------------
# Row converters: one raw record -> Example, or None for a counted skip
# ---------------------------------------------------------------------------------------------

def _require(record: dict, name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise DataSourceError(f"{where}: missing required field '{name}'")
    return record[name]


def _record_id(record: dict, fallback: str) -> str:
    for key in ("id", "example_id"):
        if record.get(key) is not None:
            return str(record[key])
    return fallback


def _base_example(example_id: str, question: str, context: str, **extra: Any) -> dict:
    return {
        "id": example_id,
        "question": question,
        "context": context,
        "answers": {"text": [], "answer_start": []},
        "title": extra.get("title") or "",
        "language": extra.get("language") or "",
        "yes_no_answer": "NONE",
        "passage_answer_start": -1,
        "passage_answer_end": -1,
    }


def _has_text(stats: ReadStats, question: Any, context: Any) -> bool:
    if not isinstance(question, str) or not question.strip():
        stats.skipped["empty_question"] += 1
        return False
    if not isinstance(context, str) or not context.strip():
        stats.skipped["empty_context"] += 1
        return False
    return True


def raw_tydi_to_hf(record: dict, where: str) -> dict:
    """Official TyDi jsonl record -> the HF ``primary_task`` schema (same mapping as HF's loader)."""
    annotations = _require(record, "annotations", where)
    candidates = record.get("passage_answer_candidates") or []
    try:
        hf = {
            "annotations": {
                "passage_answer_candidate_index": [a["passage_answer"]["candidate_index"] for a in annotations],
                "minimal_answers_start_byte": [a["minimal_answer"]["plaintext_start_byte"] for a in annotations],
                "minimal_answers_end_byte": [a["minimal_answer"]["plaintext_end_byte"] for a in annotations],
                "yes_no_answer": [a.get("yes_no_answer", "NONE") for a in annotations],
            },
            "passage_answer_candidates": {
                "plaintext_start_byte": [c["plaintext_start_byte"] for c in candidates],
                "plaintext_end_byte": [c["plaintext_end_byte"] for c in candidates],
            },
        }
    except (KeyError, TypeError) as err:
        raise DataSourceError(f"{where}: malformed field 'annotations' or 'passage_answer_candidates' ({err!r})") from None
    for key in ("question_text", "document_plaintext", "document_title", "language", "id", "example_id"):
        if key in record:
            hf[key] = record[key]
    return hf


def tydi_hf_to_example(record: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """HF ``tydiqa/primary_task`` row -> Example. Byte offsets become exact character offsets."""
    example_id = _record_id(record, fallback_id)
    where = f"{where} (example id {example_id})"
    question = _require(record, "question_text", where)
    context = _require(record, "document_plaintext", where)
    annotations = _require(record, "annotations", where)
    if not _has_text(stats, question, context):
        return None
    example = _base_example(example_id, question, context,
                            title=record.get("document_title"), language=record.get("language"))
    try:
        starts = annotations["minimal_answers_start_byte"]
        ends = annotations["minimal_answers_end_byte"]
        passages = annotations.get("passage_answer_candidate_index") or [-1] * len(starts)
        yes_no = annotations.get("yes_no_answer") or ["NONE"] * len(starts)
    except (KeyError, TypeError):
        raise DataSourceError(f"{where}: field 'annotations' lacks 'minimal_answers_start_byte'/'minimal_answers_end_byte'") from None

    byte_map = ByteCharMap.for_text(context)
    had_span = False
    for start_byte, end_byte in zip(starts, ends):
        if start_byte is None or start_byte < 0:
            continue
        had_span = True
        try:
            start, end = byte_map.span_to_chars(int(start_byte), int(end_byte))
        except OffsetError as err:
            stats.skipped[f"answer_{err.reason}"] += 1
            continue
        example["answers"]["text"].append(context[start:end])
        example["answers"]["answer_start"].append(start)

    example["yes_no_answer"] = next((v for v in yes_no if v and v != "NONE"), "NONE")
    gold_passage = next((int(p) for p in passages if p is not None and p >= 0), -1)
    candidates = record.get("passage_answer_candidates") or {}
    if gold_passage >= 0:
        try:
            example["passage_answer_start"], example["passage_answer_end"] = byte_map.span_to_chars(
                int(candidates["plaintext_start_byte"][gold_passage]),
                int(candidates["plaintext_end_byte"][gold_passage]),
            )
        except (KeyError, IndexError, TypeError, OffsetError):
            stats.notes["passage_candidate_unusable"] += 1

    return _finish_annotated(example, had_span, gold_passage >= 0, stats)


def _finish_annotated(example: dict, had_span: bool, had_passage: bool, stats: ReadStats) -> dict | None:
    """Shared end of TyDi-style rows: unusable spans skip, span-less labels are counted."""
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


def primeqa_to_example(record: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """PrimeQA "base" row -> Example.

    Layout: ``question``, ``context`` (a list holding the one document), ``language`` and
    ``target`` {``start_positions``, ``end_positions``: *character* offsets into the
    document, end exclusive, -1 = no span; ``passage_indices``; ``yes_no_answer``}, one entry
    per annotator.  ``example_id`` is PrimeQA's own id (a UUID for TyDi, not TyDi's id).
    """
    example_id = _record_id(record, fallback_id)
    where = f"{where} (example id {example_id})"
    question = _require(record, "question", where)
    documents = _require(record, "context", where)
    target = _require(record, "target", where)
    if not isinstance(documents, list) or len(documents) != 1:
        count = len(documents) if isinstance(documents, list) else type(documents).__name__
        raise DataSourceError(f"{where}: field 'context' must be a list holding one document "
                              f"(PrimeQA single-context layout), got {count}")
    context = documents[0]
    try:
        starts, ends = list(target["start_positions"]), list(target["end_positions"])
        passages = target.get("passage_indices") or [-1] * len(starts)
        yes_no = target.get("yes_no_answer") or ["NONE"] * len(starts)
    except (KeyError, TypeError):
        raise DataSourceError(f"{where}: field 'target' lacks 'start_positions'/'end_positions'") from None
    if len(starts) != len(ends):
        raise DataSourceError(f"{where}: field 'target' has {len(starts)} start_positions "
                              f"but {len(ends)} end_positions")
    if not _has_text(stats, question, context):
        return None
    example = _base_example(example_id, question, context, language=record.get("language"))
    had_span = False
    for start, end in zip(starts, ends):
        if start is None or start < 0:
            continue
        had_span = True
        if end is None or not 0 <= start < end <= len(context):
            stats.skipped["answer_char_offset_out_of_range"] += 1
            continue
        example["answers"]["text"].append(context[start:end])
        example["answers"]["answer_start"].append(start)
    example["yes_no_answer"] = next((v for v in yes_no if v and v != "NONE"), "NONE")
    # Passage candidates are not in the layout: the gold passage index is kept only as a count.
    had_passage = any(p is not None and p >= 0 for p in passages)
    return _finish_annotated(example, had_span, had_passage, stats)


def squad_qa_to_example(qa: dict, context: Any, title: str, fallback_id: str, where: str,
                        stats: ReadStats) -> dict | None:
    """One SQuAD question (v1.1 or v2.0) -> Example; answers are checked against the context."""
    example_id = _record_id(qa, fallback_id)
    where = f"{where} (example id {example_id})"
    question = _require(qa, "question", where)
    answers = qa.get("answers")
    if answers is None and not qa.get("is_impossible"):
        raise DataSourceError(f"{where}: missing required field 'answers'")
    if not _has_text(stats, question, context):
        return None
    example = _base_example(example_id, question, context, title=title)
    if isinstance(answers, dict):  # flat HF layout: {"text": [...], "answer_start": [...]}
        answers = [{"text": t, "answer_start": s} for t, s in zip(answers["text"], answers["answer_start"])]
    for answer in answers or []:
        try:
            text, start = answer["text"], int(answer["answer_start"])
        except (KeyError, TypeError, ValueError):
            raise DataSourceError(f"{where}: malformed field 'answers' ({answer!r})") from None
        if not text or context[start:start + len(text)] != text:
            stats.skipped["answer_text_mismatch"] += 1
            continue
        example["answers"]["text"].append(text)
        example["answers"]["answer_start"].append(start)
    if answers and not example["answers"]["text"] and not qa.get("is_impossible"):
        stats.skipped["all_answer_spans_invalid"] += 1
        return None
    if not example["answers"]["text"]:
        stats.notes["no_answer"] += 1
    return example


def flat_row_to_example(row: dict, fallback_id: str, where: str, stats: ReadStats) -> dict | None:
    """A row that is already flat (TyDi HF schema, PrimeQA base, or SQuAD-style
    id/question/context/answers)."""
    if isinstance(row.get("target"), dict) and isinstance(row.get("context"), list):
        stats.formats["primeqa"] += 1
        return primeqa_to_example(row, fallback_id, where, stats)
    if "document_plaintext" in row or "annotations" in row:
        stats.formats["tydi"] += 1
        if isinstance(row.get("annotations"), list):
            row = raw_tydi_to_hf(row, where)
        return tydi_hf_to_example(row, fallback_id, where, stats)
    stats.formats["squad"] += 1
    context = _require(row, "context", f"{where} (example id {_record_id(row, fallback_id)})")
    return squad_qa_to_example(row, context, row.get("title") or "", fallback_id, where, stats)


# ---------------------------------------------------------------------------------------------
# Sources: validate up front, then stream examples
# ---------------------------------------------------------------------------------------------

def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


@dataclass
class ExampleSource:
    """A validated source: ``kind``, a content ``fingerprint`` and a streaming ``rows`` iterator."""

    kind: str                 # "jsonl", "squad_json", "load_from_disk", "hub"
    description: str
    fingerprint: str
    rows: Callable[[], Iterator[tuple[dict, str, str]]]  # (record, fallback_id, where)
    spec: SourceSpec

    def iter_examples(self, stats: ReadStats) -> Iterator[dict]:
        """Examples that pass the language filter, with unique ids; skips counted in ``stats``."""
        language = self.spec.language.lower()
        seen_ids: set[str] = set()
        for record, fallback_id, where in self.rows():
            example = flat_row_to_example(record, fallback_id, where, stats)
            if example is None:
                continue
            if language != "all" and example["language"] and example["language"].lower() != language:
                stats.notes["other_language"] += 1
                continue
            if example["id"] in seen_ids:
                stats.skipped["duplicate_id"] += 1
                continue
            seen_ids.add(example["id"])
            stats.examples += 1
            stats.answerable += bool(example["answers"]["text"])
            yield example


def _jsonl_rows(path: Path) -> Iterator[tuple[dict, str, str]]:
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataSourceError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataSourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield record, f"{path.name}:{line_number}", where


def _load_squad_json(path: Path) -> dict:
    try:
        with _open_text(path) as handle:
            document = json.load(handle)
    except json.JSONDecodeError as err:
        raise DataSourceError(f"{path}: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataSourceError(f"{path}: unknown format: a .json file must be SQuAD JSON with a top-level 'data' list")
    return document


def _squad_rows(path: Path) -> Iterator[tuple[dict, str, str]]:
    document = _load_squad_json(path)
    for a, article in enumerate(document["data"]):
        title = article.get("title") or ""
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _require(paragraph, "context", where)
            for q, qa in enumerate(_require(paragraph, "qas", where)):
                row = dict(qa, context=context, title=title)
                yield row, f"{path.name}:{a}:{p}:{q}", f"{where}.qas[{q}]"


def _dataset_rows(dataset, tag: str) -> Iterator[tuple[dict, str, str]]:
    for index, row in enumerate(dataset):
        yield row, f"{tag}:{index}", f"{tag} row {index}"


def _pick_split(loaded, spec: SourceSpec, where: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if spec.split not in loaded:
            raise DataSourceError(f"{where}: no split '{spec.split}' (has: {', '.join(loaded)})")
        return loaded[spec.split]
    return loaded


def _check_columns(dataset, where: str) -> None:
    columns = set(dataset.column_names)
    if not ({"document_plaintext", "annotations"} <= columns or {"question", "context"} <= columns):
        raise DataSourceError(
            f"{where}: unknown format: columns {sorted(columns)} are neither TyDi primary_task "
            "(document_plaintext, annotations, ...) nor SQuAD-style (question, context, answers)"
        )


def open_source(spec: SourceSpec) -> ExampleSource:
    """Validate ``spec`` (path exists, format known, hub reachable) before any work starts."""
    path = Path(spec.data).expanduser()
    if path.is_dir():
        return _open_disk_dataset(path, spec)
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise DataSourceError(f"{path}: not readable")
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz")):
            first = next(_jsonl_rows(path), None)
            if first is None:
                raise DataSourceError(f"{path}: no records")
            if not ({"document_plaintext", "annotations"} & set(first[0]) or {"question", "context"} <= set(first[0])):
                raise DataSourceError(f"{first[2]}: unknown format: expected TyDi (document_plaintext, annotations), "
                                      f"PrimeQA (question, context, target) or SQuAD-style "
                                      f"(question, context, answers) fields, got {sorted(first[0])}")
            return ExampleSource("jsonl", str(path), file_sha256(path), lambda: _jsonl_rows(path), spec)
        if name.endswith((".json", ".json.gz")):
            _load_squad_json(path)  # fail on an unknown layout now, not mid-run
            return ExampleSource("squad_json", str(path), file_sha256(path), lambda: _squad_rows(path), spec)
        raise DataSourceError(f"{path}: unknown format: expected .jsonl, .jsonl.gz, .json, .json.gz or a load_from_disk folder")
    looks_local = spec.data.startswith((".", "/", "~")) or os.sep in spec.data.rstrip("/").split("/", 1)[0] \
        or spec.data.count("/") > 1 or spec.data.endswith((".json", ".jsonl", ".gz"))
    if looks_local:
        raise DataSourceError(f"{spec.data}: no such file or folder")
    return _open_hub_dataset(spec)


def _open_disk_dataset(path: Path, spec: SourceSpec) -> ExampleSource:
    import datasets

    if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        raise DataSourceError(f"{path}: unknown format: a folder must be a datasets.save_to_disk folder")
    dataset = _pick_split(datasets.load_from_disk(str(path)), spec, str(path))
    _check_columns(dataset, str(path))
    # Each saved dataset carries a content fingerprint; hashing gigabytes of Arrow again is not needed.
    digest = hashlib.sha256(f"{dataset._fingerprint}|{spec.split}|{len(dataset)}".encode()).hexdigest()
    return ExampleSource("load_from_disk", f"{path} [{spec.split}]", digest,
                         lambda: _dataset_rows(dataset, f"{path.name}/{spec.split}"), spec)


def _open_hub_dataset(spec: SourceSpec) -> ExampleSource:
    import datasets

    config = spec.hub_config or (TYDI_HUB_CONFIG if "tydiqa" in spec.data.lower() else None)
    try:
        dataset = datasets.load_dataset(spec.data, config, split=spec.split)
    except Exception as err:  # the hub client raises many types; all mean "could not get it"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        reason = "offline mode is set" if offline else f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        raise DataSourceError(
            f"{spec.data}: not a local path, and the hub dataset could not be loaded ({reason}); "
            "download it where there is network and pass the saved folder or a .jsonl(.gz) file"
        ) from None
    _check_columns(dataset, spec.data)
    digest = hashlib.sha256(f"{spec.data}|{config}|{spec.split}|{dataset._fingerprint}".encode()).hexdigest()
    return ExampleSource("hub", f"{spec.data} [{config}/{spec.split}]", digest,
                         lambda: _dataset_rows(dataset, f"{spec.data}/{spec.split}"), spec)
