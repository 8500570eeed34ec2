"""Issue 8, data side, end to end: each bad input of docs/robustness.md through ``preprocess.py``.

A bad input gets either a counted skip (rc 0, the reason in the summary's ``skipped``) or one
line ``preprocess.py: error: <file>...`` with rc 2 and no traceback. The readers' own tests
check each message in detail; these check what a user sees.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import DOC, P2, byte_span, raw_to_hf, raw_tydi_record

import preprocess

CONTEXT = "é " + P2


def squad(qas: list[dict]) -> dict:
    return {"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


GOOD_QA = {"id": "g1", "question": "When?",
           "answers": [{"text": "2012", "answer_start": CONTEXT.index("2012")}]}


def tydi_hf(example_id: str, **annotations) -> dict:
    row = raw_to_hf(raw_tydi_record(example_id, "When?", DOC, answers=["2012"]), keep_id=True)
    row["annotations"].update(annotations)
    return row


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def truncated(blob: bytes) -> bytes:
    packed = gzip.compress(blob)
    return packed[:len(packed) // 2]


G0, G1 = byte_span(DOC, "2012")
ROWS = [tydi_hf(str(i)) for i in range(300)]
BAD_FILES = {
    # name: (bytes, expected fragment after "preprocess.py: error: <path>")
    "truncated.json.gz": (truncated(json.dumps(squad([GOOD_QA] * 2000), indent=1).encode()),
                          ": truncated gzip file: the compressed data ends after line"),
    "truncated.jsonl.gz": (truncated(jsonl(ROWS)),
                           ": truncated gzip file: the compressed data ends after line"),
    "plain.json.gz": (json.dumps(squad([GOOD_QA])).encode(),
                      ": not gzip-compressed although the name ends in .gz"),
    "paragraphs_object.json": (json.dumps({"data": [{"paragraphs": {"context": "c"}}]}).encode(),
                               ": data[0]: field 'paragraphs' must be an array, got object"),
    "data_1.json": (b'{"data": [1]}', ": data[0]: expected an object, got number 1"),
    "int_text.json": (json.dumps(squad([{"id": "i", "question": "Q?",
                                         "answers": [{"text": 2012, "answer_start": 2}]}]))
                      .encode(),
                      ": data[0].paragraphs[0].qas[0] (example id i): field 'answers[0].text' "
                      "must be a string, got number 2012"),
    "end_null.jsonl": (jsonl([tydi_hf("a"), tydi_hf("b", minimal_answers_end_byte=[None])]),
                       ":2 (example id b): field 'annotations.minimal_answers_end_byte[0]' "
                       "must be an integer, got null"),
    "lengths.jsonl": (jsonl([tydi_hf("a", minimal_answers_start_byte=[G0, G0])]),
                      ":1 (example id a): field 'annotations' has 2 minimal_answers_start_byte "
                      "but 1 minimal_answers_end_byte"),
    "latin1.jsonl": (jsonl(ROWS[:3]).replace("Café".encode(), b"Caf\xe9"),
                     ":1: not UTF-8 text (byte 0xe9 at column"),
    "all_other_language.jsonl": (jsonl([tydi_hf("ja")]).replace(b'"english"', b'"japanese"'),
                                 ": no usable examples: 1 rows read; 1 rows of another language"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_one_line_error(name, tmp_path, bert_tok_dir, capsys):
    content, fragment = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    code = preprocess.main(["--data", str(path), "--model", bert_tok_dir,
                            "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"preprocess.py: error: {path}{fragment}"), err
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]


def test_wrong_starts_are_counted_skips(tmp_path, bert_tok_dir, capsys):
    from_end = CONTEXT.index("2012") - len(CONTEXT)     # -14 style: matches via negative slicing
    path = tmp_path / "starts.json"
    path.write_text(json.dumps(squad([
        GOOD_QA,
        {"id": "neg", "question": "When?", "answers": [{"text": "2012", "answer_start": from_end}]},
        {"id": "past", "question": "When?", "answers": [{"text": "2012", "answer_start": 999}]},
    ])))
    code = preprocess.main(["--data", str(path), "--model", bert_tok_dir,
                            "--cache_dir", str(tmp_path / "cache")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["examples"] == summary["answerable"] == 1
    assert summary["skipped"] == {"answer_start_negative": 1, "answer_start_out_of_range": 1,
                                  "all_answer_spans_invalid": 2}


def test_docs_table_lists_every_case():
    table = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    for reason in ("answer_start_negative", "answer_start_out_of_range", "other_language",
                   "cache_rebuilt", "no usable examples", "not UTF-8 text", "truncated gzip file",
                   "not gzip-compressed", "--num_proc", "--cache_dir", ".trash-", ".tmp-"):
        assert reason in table
