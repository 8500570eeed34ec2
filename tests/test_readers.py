"""Every supported source -> one example schema, with counted skips (qa_core.readers)."""
from __future__ import annotations

import gzip
import json
import random

import pytest
from conftest import (
    DOC,
    P1,
    P2,
    P3,
    SQUAD_V1,
    byte_span,
    raw_to_hf,
    raw_tydi_record,
    tydi_raw_records,
    write_json,
    write_jsonl,
)

from qa_core.pipeline import EXAMPLE_SCHEMA
from qa_core.readers import DataSourceError, ReadStats, SourceSpec, open_source


def read(path, **spec) -> tuple[list[dict], ReadStats]:
    stats = ReadStats()
    source = open_source(SourceSpec(str(path), **spec))
    return list(source.iter_examples(stats)), stats


def check_answers_match_bytes(examples: list[dict], records_by_question: dict[str, dict]) -> int:
    """Each answer decoded from char offsets equals the byte slice of the raw record's span."""
    checked = 0
    for example in examples:
        record = records_by_question[example["question"]]
        data = record["document_plaintext"].encode("utf-8")
        spans = [(a["minimal_answer"]["plaintext_start_byte"],
                  a["minimal_answer"]["plaintext_end_byte"])
                 for a in record["annotations"] if a["minimal_answer"]["plaintext_start_byte"] >= 0]
        assert len(spans) == len(example["answers"]["text"])
        for (bs, be), text, start in zip(spans, example["answers"]["text"],
                                         example["answers"]["answer_start"]):
            assert (example["context"][start:start + len(text)] == text
                    == data[bs:be].decode("utf-8"))
            checked += 1
    return checked


# ---------------------------------------------------------------------------------------------
# Source kinds
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tydi_hf", "tydi_hf_ids", "tydi_raw", "tydi_raw_gz"])
def test_tydi_files(qa_files, kind):
    raw = {r["question_text"]: r for r in tydi_raw_records()}
    examples, stats = read(qa_files[kind])
    # default language filter: english only (the Japanese record is noted, not kept)
    assert [e["language"] for e in examples] == ["english"] * 5
    assert stats.notes["other_language"] == 1
    assert stats.examples == 5 and stats.answerable == 2
    assert all(set(e) == set(EXAMPLE_SCHEMA.names) for e in examples)
    assert check_answers_match_bytes(examples, raw) == 3
    # multi-byte text precedes the answers: byte offsets != char offsets
    first = examples[0]
    assert first["answers"] == {"text": ["2012", "in 2012"],
                                "answer_start": [DOC.index("2012"), DOC.index("in 2012")]}
    assert len(DOC[:DOC.index("2012")].encode("utf-8")) != DOC.index("2012")
    # YES/NO-only and passage-only annotations: labelled no-answer, counted
    assert stats.notes["yes_no_only_labelled_no_answer"] == 1
    assert stats.notes["passage_only_labelled_no_answer"] == 1
    assert stats.notes["no_answer"] == 1
    by_q = {e["question"]: e for e in examples}
    assert by_q["Is the Higgs boson a particle?"]["yes_no_answer"] == "YES"
    passage = by_q["What did the ATLAS team do?"]
    assert passage["context"][passage["passage_answer_start"]:passage["passage_answer_end"]] == P2
    assert not stats.skipped


def test_tydi_language_all(qa_files):
    raw = {r["question_text"]: r for r in tydi_raw_records()}
    examples, stats = read(qa_files["tydi_raw_gz"], language="all")
    assert len(examples) == 6 and stats.answerable == 3
    assert "other_language" not in stats.notes
    ja = [e for e in examples if e["language"] == "japanese"]
    assert ja[0]["answers"]["text"] == ["東京"]
    check_answers_match_bytes(examples, raw)
    only_ja, _ = read(qa_files["tydi_raw"], language="Japanese")
    assert [e["language"] for e in only_ja] == ["japanese"]


def test_ids_from_source_or_derived_and_stable(qa_files):
    raw, _ = read(qa_files["tydi_raw"])
    assert [e["id"] for e in raw] == ["101", "102", "103", "104", "106"]
    with_ids, _ = read(qa_files["tydi_hf_ids"])
    assert [e["id"] for e in with_ids] == ["101", "102", "103", "104", "106"]
    derived1, _ = read(qa_files["tydi_hf"])
    derived2, _ = read(qa_files["tydi_hf"])
    ids = [e["id"] for e in derived1]
    assert ids == [e["id"] for e in derived2]
    assert len(set(ids)) == len(ids) and all(ids)


@pytest.mark.parametrize("kind", ["squad_v1", "squad_v1_gz"])
def test_squad_v1(qa_files, kind):
    examples, stats = read(qa_files[kind])
    assert [e["id"] for e in examples] == ["s1", "s2", "s3"]
    assert stats.examples == stats.answerable == 3
    # every crowd answer kept, in order
    assert examples[0]["answers"]["text"] == ["CERN", "at CERN"]
    for e in examples:
        for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]):
            assert e["context"][start:start + len(text)] == text
    assert examples[2]["context"].startswith("🤗🤗")
    assert examples[0]["title"] == "Higgs"


def test_squad_v2_is_impossible(qa_files):
    examples, stats = read(qa_files["squad_v2"])
    assert [e["id"] for e in examples] == ["v1", "v2"]
    assert examples[0]["answers"]["text"] == ["2012"]
    # plausible_answers are not answers
    assert examples[1]["answers"] == {"text": [], "answer_start": []}
    assert stats.answerable == 1 and stats.notes["no_answer"] == 1


def test_save_to_disk_tydi_with_split(tmp_path):
    import datasets

    rows = [raw_to_hf(r) for r in tydi_raw_records()]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "ds"))
    raw = {r["question_text"]: r for r in tydi_raw_records()}
    examples, stats = read(tmp_path / "ds", split="validation", language="all")
    assert len(examples) == 6 and stats.answerable == 3
    check_answers_match_bytes(examples, raw)
    again, _ = read(tmp_path / "ds", split="validation", language="all")
    assert [e["id"] for e in again] == [e["id"] for e in examples]
    with pytest.raises(DataSourceError, match="no split 'train'"):
        open_source(SourceSpec(str(tmp_path / "ds"), split="train"))


def test_save_to_disk_flat_squad(tmp_path):
    import datasets

    context = "é中🤗 " + P2
    rows = [
        {"id": "q1", "title": "t", "context": context, "question": "When?",
         "answers": {"text": ["2012"], "answer_start": [context.index("2012")]}},
        {"id": "q2", "title": "t", "context": context, "question": "Who?",
         "answers": {"text": ["ATLAS", "ATLAS and CMS"],
                     "answer_start": [context.index("ATLAS")] * 2}},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "flat"))
    examples, stats = read(tmp_path / "flat")
    assert [e["id"] for e in examples] == ["q1", "q2"]
    assert examples[1]["answers"]["text"] == ["ATLAS", "ATLAS and CMS"]
    assert stats.answerable == 2
    # one Dataset has no splits: like a file, --split does not apply, and it is neither shown
    # nor keyed (it was, so training and evaluating on the folder looked like two sources)
    train, evaluation = (open_source(SourceSpec(str(tmp_path / "flat"), split=name))
                         for name in ("train", "validation"))
    assert train.description == evaluation.description == str(tmp_path / "flat")
    assert train.fingerprint == evaluation.fingerprint and not train.has_splits


def test_flat_squad_style_jsonl(tmp_path):
    context = "🤗 " + P2
    path = write_jsonl(tmp_path / "flat.jsonl", [
        {"id": "j1", "question": "When?", "context": context,
         "answers": {"text": ["2012"], "answer_start": [context.index("2012")]}},
    ])
    examples, _ = read(path)
    assert examples[0]["answers"]["text"] == ["2012"]


def primeqa_row(example_id: str, question: str, spans: list[tuple[int, int]], document: str = DOC,
                yes_no: list[str] | None = None, passages: list[int] | None = None,
                language: str = "english") -> dict:
    """A PrimeQA "base" row: character offsets (end exclusive), -1 for "no span"."""
    spans = spans or [(-1, -1)]
    return {"example_id": example_id, "question": question, "language": language,
            "context": [document],
            "target": {"start_positions": [s for s, _ in spans],
                       "end_positions": [e for _, e in spans],
                       "passage_indices": passages or [-1] * len(spans),
                       "yes_no_answer": yes_no or ["NONE"] * len(spans)}}


def test_primeqa_base_jsonl(tmp_path):
    start = DOC.index("2012")  # after multi-byte characters: a character offset, not a byte one
    path = write_jsonl(tmp_path / "primeqa.jsonl", [
        primeqa_row("u1", "When?", [(start, start + 4), (-1, -1), (start - 3, start + 4)]),
        primeqa_row("u2", "Is it a particle?", [], yes_no=["YES"]),
        primeqa_row("u3", "What did ATLAS do?", [], passages=[1]),
        primeqa_row("u4", "Nothing?", []),
        primeqa_row("u5", "Out of range?", [(start, len(DOC) + 5)]),
        primeqa_row("u6", "Japanese?", [], language="japanese"),
    ])
    examples, stats = read(path)
    assert [e["id"] for e in examples] == ["u1", "u2", "u3", "u4"]
    assert examples[0]["answers"] == {"text": ["2012", "in 2012"],
                                      "answer_start": [start, start - 3]}
    assert examples[1]["yes_no_answer"] == "YES" and not examples[1]["answers"]["text"]
    assert stats.formats == {"primeqa": 5}
    assert stats.answerable == 1
    # the language filter comes first: u6 (also a no-answer row) counts only as other_language
    assert stats.notes == {"yes_no_only_labelled_no_answer": 1,
                           "passage_only_labelled_no_answer": 1, "no_answer": 1,
                           "other_language": 1}
    assert stats.skipped == {"answer_char_offset_out_of_range": 1, "all_answer_spans_invalid": 1}


@pytest.mark.parametrize("row, message", [
    ({"example_id": "m1", "question": "Q?", "context": [DOC, DOC], "target": {}}, "one document"),
    ({"example_id": "m2", "question": "Q?", "context": [DOC], "target": {"start_positions": [0]}},
     "'target' lacks"),
    ({"example_id": "m3", "question": "Q?", "context": [DOC],
      "target": {"start_positions": [0], "end_positions": [1, 2]}}, "1 start_positions but 2"),
    ({"example_id": "m4", "context": [DOC], "target": {}}, "'question'"),
])
def test_primeqa_bad_rows_name_line_id_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [primeqa_row("ok", "When?", []), row])
    with pytest.raises(DataSourceError, match=message) as info:
        read(path)
    assert f"{path}:2 (example id {row['example_id']})" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps(raw_tydi_record(1, "Q?", DOC, answers=["2012"]))
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + good.replace("1", "2", 1)[:-5] + "\n")
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert f"{path}:2" in str(info.value) and "malformed JSON" in str(info.value)


def test_malformed_squad_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [')
    with pytest.raises(DataSourceError, match="malformed JSON"):
        read(path)
    path.write_text('{"rows": []}')
    with pytest.raises(DataSourceError, match="unknown format"):
        read(path)
    # datasets' to_json writes JSON Lines by default, whatever the name
    path.write_text('{"question": "a?"}\n{"question": "b?"}\n')
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert str(info.value) == (f"{path}: malformed JSON (Extra data at line 2 column 1); it "
                               "looks like JSON Lines (one object per line): name it .jsonl")


@pytest.mark.parametrize("field", ["question_text", "document_plaintext", "annotations"])
def test_missing_required_field_names_field_and_id(tmp_path, field):
    rows = [raw_to_hf(r, keep_id=True) for r in tydi_raw_records()[:2]]
    del rows[1][field]
    with pytest.raises(DataSourceError) as info:
        read(write_jsonl(tmp_path / "x.jsonl", rows))
    message = str(info.value)
    assert f"'{field}'" in message and "102" in message and "x.jsonl:2" in message


def test_missing_squad_question_names_id(tmp_path):
    doc = {"data": [{"title": "t", "paragraphs": [
        {"context": "abc 2012",
         "qas": [{"id": "zz9", "answers": [{"text": "2012", "answer_start": 4}]}]}]}]}
    with pytest.raises(DataSourceError) as info:
        read(write_json(tmp_path / "s.json", doc))
    assert "'question'" in str(info.value) and "zz9" in str(info.value)


def test_empty_question_or_context_counted(tmp_path):
    rows = [
        raw_tydi_record(1, "   ", DOC, answers=["2012"]),
        raw_tydi_record(2, "When?", " \n ", passages=[], answers=[None]),
        raw_tydi_record(3, "When?", DOC, answers=["2012"]),
        raw_tydi_record(4, "\u200b\u0301", DOC, answers=["2012"]),  # zero-width, combining
        raw_tydi_record(5, "When?", "\ufeff\u200b", passages=[], answers=[None]),
    ]
    examples, stats = read(write_jsonl(tmp_path / "e.jsonl", rows))
    assert [e["id"] for e in examples] == ["3"]
    assert stats.skipped == {"empty_question": 2, "empty_context": 2}


def test_invalid_offsets_counted_and_all_invalid_skipped(tmp_path):
    doc = "é中🤗 " + P2
    good = raw_tydi_record(1, "When?", doc, answers=["2012"])["annotations"][0]["minimal_answer"]
    g0, g1 = good["plaintext_start_byte"], good["plaintext_end_byte"]
    rows = [
        # one span splits 🤗 (bytes 5..8), another is fine: the example keeps the good one
        raw_tydi_record(1, "When?", doc, answers=[(6, 12), (g0, g1)]),
        # every span unusable: skipped, not turned into a no-answer example
        raw_tydi_record(2, "When?", doc, answers=[(1, 4), (g0, 10_000)]),
        raw_tydi_record(3, "When?", doc, answers=[(g1, g0)]),
    ]
    examples, stats = read(write_jsonl(tmp_path / "o.jsonl", rows))
    assert [e["id"] for e in examples] == ["1"]
    assert examples[0]["answers"]["text"] == ["2012"]
    assert stats.answerable == 1
    assert stats.skipped["answer_byte_offset_splits_character"] == 2
    assert stats.skipped["answer_byte_offset_out_of_range"] == 1
    assert stats.skipped["answer_empty_or_reversed_span"] == 1
    assert stats.skipped["all_answer_spans_invalid"] == 2
    assert "no_answer" not in stats.notes


def test_squad_answer_mismatch(tmp_path):
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "é 2012 x", "qas": [
        # byte offset: wrong
        {"id": "a", "question": "When?", "answers": [{"text": "2012", "answer_start": 3}]},
        {"id": "b", "question": "When?", "answers": [{"text": "2012", "answer_start": 2},
                                                     {"text": "2012", "answer_start": 0}]},
    ]}]}]}
    examples, stats = read(write_json(tmp_path / "m.json", doc))
    assert [e["id"] for e in examples] == ["b"]
    assert stats.skipped == {"answer_text_mismatch": 2, "all_answer_spans_invalid": 1}


def test_duplicate_ids(tmp_path):
    rec = raw_tydi_record(7, "When?", DOC, answers=["2012"])
    examples, stats = read(write_jsonl(tmp_path / "d.jsonl",
                                       [rec, rec, raw_tydi_record(8, "Q?", DOC)]))
    assert [e["id"] for e in examples] == ["7", "8"]
    assert stats.skipped["duplicate_id"] == 1


@pytest.mark.parametrize("name,content", [
    ("data.csv", "a,b\n"),
    ("data.txt", "hello"),
])
def test_unknown_file_format(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataSourceError, match="unknown format"):
        open_source(SourceSpec(str(path)))


def test_unknown_jsonl_record_and_folder(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(DataSourceError, match="unknown format"):
        open_source(SourceSpec(str(path)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataSourceError, match="no records"):
        open_source(SourceSpec(str(empty)))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataSourceError, match="unknown format"):
        open_source(SourceSpec(str(tmp_path / "folder")))


@pytest.mark.parametrize("name", ["./nope.jsonl", "/no/such/dir/x.json", "missing.jsonl.gz",
                                  "a/b/c"])
def test_missing_path(name):
    with pytest.raises(DataSourceError, match="no such file or folder"):
        open_source(SourceSpec(name))


def test_hub_name_offline_is_one_line_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataSourceError) as info:
        open_source(SourceSpec("tydiqa", split="validation"))
    message = str(info.value)
    assert "\n" not in message and "offline" in message and "tydiqa" in message


# ---------------------------------------------------------------------------------------------
# Issue 8: wrong offsets, inconsistent annotations, damaged files (see docs/robustness.md)
# ---------------------------------------------------------------------------------------------

def squad_doc(qas: list[dict], context: str = "é " + P2) -> dict:
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_squad_negative_or_past_the_end_start_is_a_counted_skip(tmp_path):
    context = "é " + P2
    from_end = context.index("2012") - len(context)           # context[from_end:] starts "2012"
    assert context[from_end:from_end + 4] == "2012"
    good = {"text": "2012", "answer_start": context.index("2012")}
    path = write_json(tmp_path / "n.json", squad_doc([
        {"id": "neg", "question": "When?", "answers": [{"text": "2012", "answer_start": from_end}]},
        {"id": "past", "question": "When?",
         "answers": [{"text": "x", "answer_start": len(context)}]},
        {"id": "mixed", "question": "When?",
         "answers": [{"text": "2012", "answer_start": from_end}, good]},
    ], context))
    examples, stats = read(path)
    assert [e["id"] for e in examples] == ["mixed"]
    assert examples[0]["answers"] == {"text": ["2012"], "answer_start": [good["answer_start"]]}
    assert stats.skipped == {"answer_start_negative": 2, "answer_start_out_of_range": 1,
                             "all_answer_spans_invalid": 2}


def test_negative_start_in_tydi_and_primeqa_is_counted_not_no_answer(tmp_path):
    g0, g1 = byte_span(DOC, "2012")
    tydi = write_jsonl(tmp_path / "t.jsonl", [
        raw_tydi_record(1, "When?", DOC, answers=[(-14, g1)]),          # -1 alone means "no span"
        raw_tydi_record(2, "When?", DOC, answers=[(-14, g1), (g0, g1)]),
        raw_tydi_record(3, "When?", DOC, answers=[(-1, -1)]),
    ])
    examples, stats = read(tydi)
    assert [e["id"] for e in examples] == ["2", "3"]
    assert examples[0]["answers"]["text"] == ["2012"]
    assert stats.skipped == {"answer_start_negative": 2, "all_answer_spans_invalid": 1}
    assert stats.notes == {"no_answer": 1}
    start = DOC.index("2012")
    prime = write_jsonl(tmp_path / "p.jsonl", [primeqa_row("u1", "When?", [(-14, start + 4)]),
                                               primeqa_row("u2", "When?", [(start, start + 4)])])
    examples, stats = read(prime)
    assert [e["id"] for e in examples] == ["u2"]
    assert stats.skipped == {"answer_start_negative": 1, "all_answer_spans_invalid": 1}


def hf_row(example_id: str, **annotations) -> dict:
    row = raw_to_hf(raw_tydi_record(example_id, "When?", DOC, passages=[P1, P2, P3],
                                    answers=["2012", None]), keep_id=True)
    row["annotations"].update(annotations)
    return row


@pytest.mark.parametrize("annotations, message", [
    ({"minimal_answers_end_byte": [-1]},
     "field 'annotations' has 2 minimal_answers_start_byte but 1 minimal_answers_end_byte"),
    ({"minimal_answers_start_byte": [-1]},
     "field 'annotations' has 1 minimal_answers_start_byte but 2 minimal_answers_end_byte"),
    ({"passage_answer_candidate_index": [1, -1, -1]},
     "field 'annotations' has 2 minimal_answers_start_byte but 3 passage_answer_candidate_index"),
    ({"yes_no_answer": ["NONE"]},
     "field 'annotations' has 2 minimal_answers_start_byte but 1 yes_no_answer"),
    ({"minimal_answers_end_byte": None},
     "field 'annotations.minimal_answers_end_byte' must be an array, got null"),
])
def test_tydi_annotation_lists_of_different_lengths_are_an_error(tmp_path, annotations, message):
    path = write_jsonl(tmp_path / "hf.jsonl", [hf_row("ok"), hf_row("bad", **annotations)])
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert str(info.value) == f"{path}:2 (example id bad): {message}" + (
        " (one entry per annotator in each)" if "has " in message else "")


def test_tydi_candidate_lists_of_different_lengths_are_an_error(tmp_path):
    row = hf_row("c1")
    row["passage_answer_candidates"]["plaintext_end_byte"].pop()
    with pytest.raises(DataSourceError, match=r"c\.jsonl:1 \(example id c1\): field "
                       "'passage_answer_candidates' has 3 plaintext_start_byte but 2 "
                       "plaintext_end_byte"):
        read(write_jsonl(tmp_path / "c.jsonl", [row]))


@pytest.mark.parametrize("value, shown", [(None, "null"), ("x", "string 'x'"), (1.5, "number 1.5")])
def test_tydi_end_byte_not_an_integer_names_the_field(tmp_path, value, shown):
    g0, _ = byte_span(DOC, "2012")
    row = hf_row("e1", minimal_answers_start_byte=[g0, -1], minimal_answers_end_byte=[value, -1])
    path = write_jsonl(tmp_path / "e.jsonl", [row])
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert str(info.value) == (f"{path}:1 (example id e1): field "
                               "'annotations.minimal_answers_end_byte[0]' must be an integer, "
                               f"got {shown}")


def _drop_minimal_answer(row: dict) -> None:
    del row["annotations"][1]["minimal_answer"]


@pytest.mark.parametrize("damage, message", [
    (_drop_minimal_answer, "missing required field 'annotations[1].minimal_answer'"),
    (lambda row: row["annotations"][0].update(minimal_answer=None),
     "field 'annotations[0].minimal_answer' must be an object, got null"),
    (lambda row: row["annotations"][0]["passage_answer"].clear(),
     "missing required field 'annotations[0].passage_answer.candidate_index'"),
    (lambda row: row["annotations"].__setitem__(0, "x"),
     "field 'annotations[0]' must be an object, got string 'x'"),
    (lambda row: row["passage_answer_candidates"][0].pop("plaintext_end_byte"),
     "missing required field 'passage_answer_candidates[0].plaintext_end_byte'"),
    (lambda row: row.update(passage_answer_candidates={"plaintext_start_byte": [0]}),
     "field 'passage_answer_candidates' must be an array, got object"),
])
def test_official_tydi_entry_without_a_field_names_the_field_and_example_id(tmp_path, damage,
                                                                           message):
    """Issue 2: a missing required field names the field and the example id. An official
    (raw) TyDi annotation without ``minimal_answer`` was `<file>:1: malformed field
    'annotations' or 'passage_answer_candidates' (KeyError('minimal_answer'))`: no id, and
    neither field nor entry said."""
    row = raw_tydi_record(77, "When?", DOC, answers=["2012", "2012"])
    damage(row)
    path = write_jsonl(tmp_path / "raw.jsonl", [raw_tydi_record(76, "Q?", DOC), row])
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:2 (example id 77): {message}")


def test_language_filter_before_notes_on_the_packaged_tydi_sample():
    """English-only on the 11-language TyDi sample: the one English row is all the notes count."""
    from qa_core.readers import open_source

    path = "qa_core/data/tydiqa_tiny_dev.jsonl.gz"
    english, stats = read(path)
    every, all_stats = read(path, language="all")
    assert [e["language"] for e in english] == ["english"]
    assert stats.formats == {"tydi": 1} and not stats.skipped
    assert stats.notes == {"other_language": 10, "yes_no_only_labelled_no_answer": 1}
    assert sum(all_stats.notes.values()) == 7 and "other_language" not in all_stats.notes
    assert open_source(SourceSpec(path)).kind == "jsonl" and len(every) == 11


@pytest.mark.parametrize("document, message", [
    ({"data": [1]}, "data[0]: expected an object, got number 1"),
    ({"data": [{"title": "t", "paragraphs": {"context": "c", "qas": []}}]},
     "data[0]: field 'paragraphs' must be an array, got object"),
    ({"data": [{"title": "t"}]}, "data[0]: missing required field 'paragraphs'"),
    ({"data": [{"paragraphs": ["text"]}]},
     "data[0].paragraphs[0]: expected an object, got string 'text'"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": {"id": "x"}}]}]},
     "data[0].paragraphs[0]: field 'qas' must be an array, got object"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [7]}]}]},
     "data[0].paragraphs[0].qas[0]: expected an object, got number 7"),
    (squad_doc([{"id": "i1", "question": "Q?", "answers": [{"text": 2012, "answer_start": 3}]}]),
     "data[0].paragraphs[0].qas[0] (example id i1): field 'answers[0].text' must be a string, "
     "got number 2012"),
    (squad_doc([{"id": "i2", "question": "Q?",
                 "answers": [{"text": "2012", "answer_start": "x"}]}]),
     "(example id i2): field 'answers[0].answer_start' must be an integer, got string 'x'"),
    (squad_doc([{"id": "i3", "question": 5, "answers": []}]),
     "(example id i3): field 'question' must be a string, got number 5"),
    (squad_doc([{"id": "i4", "question": "Q?",
                 "answers": {"text": ["a", "b"], "answer_start": [0]}}]),
     "(example id i4): field 'answers' must hold lists 'text' and 'answer_start' of one length"),
])
def test_squad_structure_errors_name_the_path(tmp_path, document, message):
    path = write_json(tmp_path / "s.json", document)
    with pytest.raises(DataSourceError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def gz_truncated(path, text: str) -> None:
    blob = gzip.compress(text.encode("utf-8"))
    path.write_bytes(blob[:len(blob) // 2])


def test_truncated_gzip_names_file_and_line(tmp_path):
    rows = [json.dumps(raw_tydi_record(i, f"Q{i} {random.Random(i).random()}?", DOC,
                                       answers=["2012"])) for i in range(400)]
    jsonl = tmp_path / "t.jsonl.gz"
    gz_truncated(jsonl, "\n".join(rows) + "\n")
    with pytest.raises(DataSourceError) as info:
        read(jsonl, language="all")
    message = str(info.value)
    assert message.startswith(f"{jsonl}: truncated gzip file: the compressed data ends after line ")
    line = int(message.split("after line ")[1].split()[0])
    assert 0 < line < 400
    squad = tmp_path / "t.json.gz"
    gz_truncated(squad, json.dumps({"data": SQUAD_V1["data"] * 400}, indent=1))  # > 64 KiB
    with pytest.raises(DataSourceError, match=f"{squad}: truncated gzip file: .* ends after line "):
        open_source(SourceSpec(str(squad)))


def test_damaged_gzip_data_is_an_error(tmp_path):
    blob = bytearray(gzip.compress(("\n".join(json.dumps(raw_tydi_record(i, "Q?", DOC))
                                              for i in range(50)) + "\n").encode()))
    blob[len(blob) // 2] ^= 0xFF
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataSourceError, match=f"{path}: (damaged gzip data|.*malformed JSON)"):
        read(path)


@pytest.mark.parametrize("name", ["plain.json.gz", "plain.jsonl.gz"])
def test_plain_text_named_gz(tmp_path, name):
    path = tmp_path / name
    text = json.dumps(SQUAD_V1) if name.endswith(".json.gz") else json.dumps(hf_row("1")) + "\n"
    path.write_text(text)
    with pytest.raises(DataSourceError) as info:
        open_source(SourceSpec(str(path)))
    assert str(info.value) == (f"{path}: not gzip-compressed although the name ends in .gz (it "
                               "starts with b'{\"'); decompress it with the right name or gzip it")


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl.gz"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataSourceError, match="empty file"):
        open_source(SourceSpec(str(tmp_path / name)))


def test_non_utf8_names_file_and_line(tmp_path):
    lines = [json.dumps(hf_row(str(i)), ensure_ascii=False).encode("utf-8") for i in range(4)]
    lines[2] = lines[2].replace("Café".encode(), b"Caf\xe9")        # Latin-1 é
    path = tmp_path / "latin1.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    with pytest.raises(DataSourceError) as info:
        read(path)
    column = lines[2].index(b"\xe9") + 1
    assert str(info.value) == (f"{path}:3: not UTF-8 text (byte 0xe9 at column {column}); "
                               "convert the file to UTF-8")
    text = json.dumps(SQUAD_V1, ensure_ascii=False, indent=1).encode("utf-8")
    bad = text.replace("François".encode(), b"Fran\xe7ois", 1)
    squad = tmp_path / "latin1.json"
    squad.write_bytes(bad)
    line = bad[:bad.index(b"\xe7")].count(b"\n") + 1
    with pytest.raises(DataSourceError,
                       match=rf"latin1\.json:{line}: not UTF-8 text \(byte 0xe7 at column"):
        open_source(SourceSpec(str(squad)))
