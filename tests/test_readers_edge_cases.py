"""Input that used to escape the readers as a traceback or be kept silently (qa_core.readers).

Each case now gets the project's one-line ``DataSourceError`` naming the file, line or JSON
path, example id and field, or a counted skip (docs/robustness.md, "Input data").
"""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import DOC, P2, raw_to_hf, raw_tydi_record, write_json, write_jsonl

import preprocess
from qa_core.readers import (
    DataSourceError,
    ReadStats,
    SourceSpec,
    examples_from_rows,
    open_source,
)

DEEP = 100_000
LONE = "@LONE@"   # replaced by a lone surrogate escape in the JSON text of a row


def read(path, **spec) -> tuple[list[dict], ReadStats]:
    stats = ReadStats()
    source = open_source(SourceSpec(str(path), **spec))
    return list(source.iter_examples(stats)), stats


def read_error(path, **spec) -> str:
    with pytest.raises(DataSourceError) as info:
        read(path, **spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def squad_row(example_id: str = "x1", question: str = "Where?",
              context: str = "The fox is in Paris.", answer: str = "Paris") -> dict:
    return {"id": example_id, "question": question, "context": context,
            "answers": [{"text": answer, "answer_start": context.find(answer)}]}


def squad_document(qas: list[dict], context: str = "é " + P2, title: str = "t") -> dict:
    return {"data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}]}


# ---------------------------------------------------------------------------------------------
# 1. JSON nested deeper than Python's parser recurses
# ---------------------------------------------------------------------------------------------

def test_deeply_nested_jsonl_line_is_malformed_json(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(squad_row()) + "\n"
                    + '{"a":' * DEEP + "1" + "}" * DEEP + "\n")
    column = 5 * (DEEP - 1) + 1            # where the last '{"a":' opens
    assert read_error(path) == (f"{path}:2: malformed JSON (nested too deeply: {DEEP} levels "
                                f"of arrays and objects at column {column})")
    path.write_text('[{"a": "[[[{{"}, ' + "[" * DEEP + "\n")   # brackets in strings do not count
    assert read_error(path) == (f"{path}:1: malformed JSON (nested too deeply: {DEEP + 1} levels "
                                f"of arrays and objects at column {17 + DEEP})")


def test_deeply_nested_squad_json_is_malformed_json(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"data":\n[' + "[" * DEEP)
    assert read_error(path) == (f"{path}: malformed JSON (nested too deeply: {DEEP + 2} levels "
                                f"of arrays and objects at line 2 column {DEEP + 1})")


# ---------------------------------------------------------------------------------------------
# 2. Lone UTF-16 surrogates: valid JSON escapes, but not Unicode text
# ---------------------------------------------------------------------------------------------

def with_lone_surrogate(path, rows: list[dict], escape: str = "\\ud800"):
    """A .jsonl file whose ``LONE`` markers are written as the JSON escape ``escape``."""
    path.write_text("".join(json.dumps(row).replace(LONE, escape) + "\n" for row in rows))
    return path


def tydi_row(**fields) -> dict:
    row = raw_tydi_record("t1", "When?", DOC, answers=["2012"])
    row.update(fields)
    return row


def hf_tydi_row(**annotations) -> dict:
    row = raw_to_hf(raw_tydi_record("h1", "When?", DOC, answers=["2012"]), keep_id=True)
    row["annotations"].update(annotations)
    return row


def primeqa_row(context: str) -> dict:
    return {"example_id": "p1", "question": "When?", "context": [context], "language": "english",
            "target": {"start_positions": [-1], "end_positions": [-1]}}


@pytest.mark.parametrize("row, where, field, escape, position", [
    # TyDi (official layout): the audit's document; the question; the title; the id
    (raw_tydi_record("t1", "When?", "Caf\u00e9 " + LONE + " in Paris.", answers=["Paris"]),
     "(example id t1)", "document_plaintext", "\\ud83d", 5),
    (tydi_row(question_text="When " + LONE + "?"), "(example id t1)", "question_text",
     "\\udc00", 5),
    (tydi_row(document_title="Hi" + LONE), "(example id t1)", "document_title", "\\ud800", 2),
    (tydi_row(example_id="t" + LONE), "(example id 't\\ud800')", "example_id", "\\ud800", 1),
    # TyDi (HF layout): the id and a yes/no label
    (dict(hf_tydi_row(), id=LONE + "h"), "(example id '\\udfffh')", "id", "\\udfff", 0),
    (hf_tydi_row(yes_no_answer=["YES" + LONE]), "(example id h1)",
     "annotations.yes_no_answer[0]", "\\ud800", 3),
    # SQuAD-style rows: the audit's context; the question; an answer text; the title
    (squad_row(context="The fox " + LONE + " is in Paris."), "(example id x1)", "context",
     "\\ud800", 8),
    (squad_row(question=LONE), "(example id x1)", "question", "\\ud800", 0),
    (squad_row(answer="Paris" + LONE), "(example id x1)", "answers[0].text", "\\ud800", 5),
    (dict(squad_row(), title="T" + LONE), "(example id x1)", "title", "\\ud800", 1),
    # PrimeQA: the document
    (primeqa_row("ab" + LONE), "(example id p1)", "context[0]", "\\ud800", 2),
], ids=["tydi_document", "tydi_question", "tydi_title", "tydi_example_id", "hf_tydi_id",
        "hf_tydi_yes_no", "squad_context", "squad_question", "squad_answer_text", "squad_title",
        "primeqa_context"])
def test_lone_surrogate_in_a_text_field_is_an_error(tmp_path, row, where, field, escape,
                                                    position):
    path = with_lone_surrogate(tmp_path / "lone.jsonl", [squad_row("ok"), row], escape)
    assert read_error(path) == (f"{path}:2 {where}: field '{field}' holds a lone UTF-16 "
                                f"surrogate ({escape} at character {position}): "
                                "not valid Unicode text")


@pytest.mark.parametrize("qa, context, title, field", [
    (squad_row(question="Why" + LONE), "é " + P2, "t", "question"),
    (squad_row(answer="2012" + LONE), "é " + P2, "t", "answers[0].text"),
    (squad_row(answer="2012"), "é " + LONE + P2, "t", "context"),
    (squad_row(answer="2012"), "é " + P2, "t" + LONE, "title"),
], ids=["question", "answer_text", "context", "title"])
def test_lone_surrogate_in_squad_json_is_an_error(tmp_path, qa, context, title, field):
    path = tmp_path / "lone.json"
    path.write_text(json.dumps(squad_document([qa], context, title)).replace(LONE, "\\ud800"))
    message = read_error(path)
    assert message.startswith(f"{path}: data[0].paragraphs[0].qas[0] (example id x1): "
                              f"field '{field}' holds a lone UTF-16 surrogate (\\ud800 at ")


def test_surrogate_pairs_are_text(tmp_path):
    # JSON writes 🤗 as the escaped pair \ud83e\udd17: one character, not a lone surrogate
    row = squad_row(context="A \U0001F917 is in Paris.")
    path = tmp_path / "pair.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=True) + "\n")
    assert "\\ud83e\\udd17" in path.read_text()
    examples, _ = read(path)
    assert examples[0]["answers"] == {"text": ["Paris"], "answer_start": [10]}


# ---------------------------------------------------------------------------------------------
# 3. A damaged datasets.save_to_disk folder
# ---------------------------------------------------------------------------------------------

def only_state_json(folder) -> None:
    for child in folder.iterdir():
        if child.name != "state.json":
            child.unlink()


def truncate_shard(folder) -> None:
    shard = next(folder.glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:100])


def state_json_not_json(folder) -> None:
    (folder / "state.json").write_text('{"_data_files": [')


@pytest.mark.parametrize("damage, reason", [
    (only_state_json, "FileNotFoundError: Directory squad is neither a `Dataset` directory nor a "
                      "`DatasetDict` directory."),
    (truncate_shard, "ArrowInvalid: "),
    (state_json_not_json, "JSONDecodeError: Expecting value: line 1 column 18"),
], ids=["only_state_json", "truncated_shard", "state_json_not_json"])
def test_damaged_save_to_disk_folder_is_one_line_error(tmp_path, damage, reason):
    import datasets

    folder = tmp_path / "squad"
    datasets.Dataset.from_list([squad_row("a"), squad_row("b")]).save_to_disk(str(folder))
    damage(folder)
    message = read_error(folder)
    assert message.startswith(f"{folder}: not a readable datasets folder ({reason}"), message
    assert message.endswith(")")


def test_save_to_disk_dict_listing_a_missing_split_is_one_line_error(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    one = datasets.Dataset.from_list([squad_row("a")])
    datasets.DatasetDict({"train": one, "validation": one}).save_to_disk(str(folder))
    shutil.rmtree(folder / "validation")
    message = read_error(folder)
    assert message.startswith(f"{folder}: not a readable datasets folder (FileNotFoundError: "
                              "No such files: 'validation/dataset_info.json'"), message


# ---------------------------------------------------------------------------------------------
# 4. Ids holding control characters keep the error on one line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("example_id, shown", [
    ("a\nb", "'a\\nb'"), ("tab\there", "'tab\\there'"), ("a\u2028b", "'a\\u2028b'"),
    ("東京-7", "東京-7"),     # printable: as it is, like every other id
], ids=["newline", "tab", "line_separator", "printable"])
def test_id_with_control_characters_is_shown_escaped(tmp_path, example_id, shown):
    row = dict(squad_row(example_id), question=5)
    path = write_jsonl(tmp_path / "ids.jsonl", [row])
    assert read_error(path) == (f"{path}:1 (example id {shown}): field 'question' must be a "
                                "string, got number 5")
    squad = write_json(tmp_path / "ids.json", squad_document([row]))
    assert read_error(squad) == (f"{squad}: data[0].paragraphs[0].qas[0] (example id {shown}): "
                                 "field 'question' must be a string, got number 5")


# ---------------------------------------------------------------------------------------------
# 5. SQuAD v2: impossible, yet with answers
# ---------------------------------------------------------------------------------------------

def test_impossible_with_answers_is_a_counted_skip(tmp_path):
    context = "é " + P2
    answer = {"text": "2012", "answer_start": context.index("2012")}
    qas = [
        {"id": "both", "question": "When?", "is_impossible": True, "answers": [answer]},
        {"id": "none", "question": "Who paid?", "is_impossible": True, "answers": [],
         "plausible_answers": [answer]},
        {"id": "ok", "question": "When?", "is_impossible": False, "answers": [answer]},
    ]
    examples, stats = read(write_json(tmp_path / "v2.json", squad_document(qas, context)))
    assert [e["id"] for e in examples] == ["none", "ok"]
    assert stats.skipped == {"impossible_with_answers": 1}
    assert stats.notes == {"no_answer": 1} and stats.answerable == 1
    flat = dict(squad_row("flat"), is_impossible=True)
    examples, stats = read(write_jsonl(tmp_path / "v2.jsonl", [flat]))
    assert not examples and stats.skipped == {"impossible_with_answers": 1}


@pytest.mark.parametrize("value", ["false", "true", [], 2])
def test_is_impossible_that_is_not_a_boolean_is_one_line_error(tmp_path, value):
    """The string "false" is truthy: it read as impossible (an answerable question skipped as
    impossible_with_answers, or, without answers, silently made a no-answer example)."""
    context = "é " + P2
    qas = [{"id": "q", "question": "When?", "is_impossible": value}]
    path = write_json(tmp_path / "v2.json", squad_document(qas, context))
    with pytest.raises(DataSourceError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\].*: field "
                                              r"'is_impossible' must be true or false, got "):
        read(path)


# ---------------------------------------------------------------------------------------------
# What a user sees: preprocess.py exits 2 with one line (the surrogate used to reach the
# tokenizer as a TypeError, the nesting a RecursionError)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, fragment", [
    ("lone.jsonl",   # the answer's start is right once the marker is one character
     json.dumps(dict(squad_row(context="The fox " + LONE + " is in Paris."),
                     answers=[{"text": "Paris", "answer_start": 16}])).replace(LONE, "\\ud800"),
     ":1 (example id x1): field 'context' holds a lone UTF-16 surrogate (\\ud800 at character 8)"),
    ("deep.jsonl", json.dumps(squad_row()) + "\n" + "[" * DEEP,
     ":2: malformed JSON (nested too deeply"),
    ("newline_id.jsonl", json.dumps(dict(squad_row("a\nb"), question=5)),
     ":1 (example id 'a\\nb'): field 'question' must be a string"),
], ids=["lone_surrogate", "deep_nesting", "newline_id"])
def test_preprocess_reports_one_line(tmp_path, bert_tok_dir, capsys, name, content, fragment):
    path = tmp_path / name
    path.write_text(content + "\n")
    code = preprocess.main(["--data", str(path), "--model", bert_tok_dir,
                            "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"preprocess.py: error: {path}{fragment}"), err


def test_lone_surrogate_is_reported_when_read_in_chunks(tmp_path):
    # --num_proc splits a .jsonl file into chunks of lines, finding each chunk's document in
    # the lines after it: the surrogate must reach the reader's check, not fail there
    rows = [squad_row("a"), squad_row("b", context="The fox " + LONE + " is in Paris.")]
    path = with_lone_surrogate(tmp_path / "chunks.jsonl", rows)
    source = open_source(SourceSpec(str(path)))
    with pytest.raises(DataSourceError, match=r":2 \(example id b\): field 'context' holds a "):
        for chunk in source.chunks(lambda total: 1):
            list(examples_from_rows(chunk.rows(), "all", ReadStats(), set()))


def test_a_device_or_fifo_as_data_is_named_as_such(tmp_path):
    """/dev/null and a FIFO were reported as "no such file or folder"."""
    import os

    from qa_core.readers import SourceSpec, open_source

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for data in ("/dev/null", str(fifo)):
        with pytest.raises(DataSourceError, match=f"^{data}: not a regular file or folder$"):
            open_source(SourceSpec(data=data))
