"""TyDi QA's own evaluation, the pipeline half: the gold the metric needs kept through readers
and the cache, predictions in TyDi's format (byte offsets, passage index), metrics.json's TyDi
keys, --metric_for_best_model, and the New-Wiki evaluation file builder.

Everything here runs on data written by the tests or shipped in qa_core/data (no ../shared).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import DOC, JA_DOC, P1, P2, P3, raw_to_hf, raw_tydi_record, write_json, write_jsonl

from qa_core.checkpoints import RunState
from qa_core.decode import ExampleSpans
from qa_core.offsets import OffsetError, char_span_to_byte_span
from qa_core.pipeline import EXAMPLE_SCHEMA
from qa_core.readers import DataSourceError, ReadStats, SourceSpec, open_source
from qa_core.tydi_eval import (
    TydiAnnotation,
    TydiGold,
    TydiPrediction,
    read_gold,
    read_predictions,
    score_tydi,
)
from qa_core.tydi_predict import TydiReferences, tydi_metrics
from tiny_models import DATA, EVAL_DATA, read_log, run_main_in_process, train_args

# signed 64-bit ids: the extremes, one just past 2**53 (a float would read it as 2**53), and
# one that is negative and past -2**53
IDS = [-9223372036854775808, 9223372036854775807, 2**53 + 1, -(2**53) - 3, 7361157181217651048]
NULL = {"passage_index": -1, "minimal_start_byte": -1, "minimal_end_byte": -1,
        "yes_no_answer": "NONE"}
# DOC = P1 "\n" P2 "\n" P3; P1 holds é, ü, 中文 and 🤗: 62 characters, 72 bytes
CANDIDATES = [{"start_byte": 0, "end_byte": 72}, {"start_byte": 73, "end_byte": 147},
              {"start_byte": 148, "end_byte": 221}]


def records() -> list[dict]:
    return [
        # "2012" is P2's characters 42..46: bytes 73 + 42 = 115..119 of DOC
        raw_tydi_record(IDS[0], "When was the Higgs boson discovered?", DOC,
                        passages=[P1, P2, P3], answers=[None, "2012", "in 2012"]),
        raw_tydi_record(IDS[1], "Is the Higgs boson a particle?", DOC, passages=[P1, P2, P3],
                        answers=[("YES", 1), None, ("PASSAGE", 2)]),
        raw_tydi_record(IDS[2], "Where was the café?", DOC, passages=[P1, P2, P3],
                        answers=[None, None, None]),
        raw_tydi_record(IDS[3], "日本の首都は？", JA_DOC, language="japanese",
                        answers=["東京", "東京", None]),
        raw_tydi_record(IDS[4], "Who shared the Nobel Prize?", DOC, passages=[P1, P2, P3],
                        answers=["François Englert", None, "Peter Higgs and François Englert"]),
    ]


EXPECTED_ANNOTATIONS = [
    [NULL, {"passage_index": 1, "minimal_start_byte": 115, "minimal_end_byte": 119,
            "yes_no_answer": "NONE"},
     {"passage_index": 1, "minimal_start_byte": 112, "minimal_end_byte": 119,
      "yes_no_answer": "NONE"}],
    [{**NULL, "passage_index": 1, "yes_no_answer": "YES"}, NULL, {**NULL, "passage_index": 2}],
    [NULL, NULL, NULL],
    # 東京 is JA_DOC's first two characters: 6 bytes, in its one passage
    [{**NULL, "passage_index": 0, "minimal_start_byte": 0, "minimal_end_byte": 6},
     {**NULL, "passage_index": 0, "minimal_start_byte": 0, "minimal_end_byte": 6}, NULL],
    # "François Englert" is P3's characters 16..32, 17 bytes (ç): bytes 148 + 16 = 164..181
    [{"passage_index": 2, "minimal_start_byte": 164, "minimal_end_byte": 181,
      "yes_no_answer": "NONE"}, NULL,
     {"passage_index": 2, "minimal_start_byte": 148, "minimal_end_byte": 181,
      "yes_no_answer": "NONE"}],
]


def read_all(path: Path, language: str = "all") -> list[dict]:
    return list(open_source(SourceSpec(str(path), language=language)).iter_examples(ReadStats()))


def test_readers_keep_every_annotator_candidates_and_exact_ids_in_both_layouts(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl.gz", records())
    hf = write_jsonl(tmp_path / "hf.jsonl", [raw_to_hf(r) for r in records()])
    from_raw, from_hf = read_all(raw), read_all(hf)
    assert [e["id"] for e in from_raw] == [
        "-9223372036854775808", "9223372036854775807", "9007199254740993", "-9007199254740995",
        "7361157181217651048"]
    # HF primary_task rows carry no id: the row's position, as qa-tydi-eval reads it
    assert [e["id"] for e in from_hf] == [f"hf.jsonl:{n}" for n in range(1, 6)]
    assert list(read_gold(hf)) == [e["id"] for e in from_hf]
    for examples in (from_raw, from_hf):
        assert [e["tydi_annotations"] for e in examples] == EXPECTED_ANNOTATIONS
        assert examples[0]["passage_candidates"] == CANDIDATES
        # JA_DOC: 20 characters of 3 bytes, 4 digits and 🤗 (4 bytes): 68 bytes
        assert examples[3]["passage_candidates"] == [{"start_byte": 0, "end_byte": 68}]
        assert [e["language"] for e in examples] == ["english"] * 3 + ["japanese", "english"]
    # SQuAD-format data: no TyDi gold
    squad = read_all(Path(EVAL_DATA))
    assert all(e["tydi_annotations"] is None and e["passage_candidates"] == [] for e in squad)


def test_int64_example_ids_stay_exact_through_a_datasets_folder(tmp_path):
    """datasets stores the ids as int64 and hands them back as Python ints: no float anywhere."""
    import datasets

    rows = [{**raw_to_hf(r), "example_id": r["example_id"]} for r in records()]
    dataset = datasets.Dataset.from_list(rows)
    assert str(dataset.features["example_id"].dtype) == "int64"
    dataset.save_to_disk(str(tmp_path / "saved"))
    examples = read_all(tmp_path / "saved")
    assert [e["id"] for e in examples] == [str(i) for i in IDS]
    assert [e["tydi_annotations"] for e in examples] == EXPECTED_ANNOTATIONS


def test_a_float_example_id_is_refused_not_rounded(tmp_path):
    record = records()[0]
    record["example_id"] = float(2**53 + 1)
    path = write_jsonl(tmp_path / "float.jsonl", [record])
    with pytest.raises(DataSourceError) as error:
        read_all(path)
    assert str(error.value) == (
        f"{path}:1: field 'example_id' must be an integer or a string, got number "
        "9007199254740992.0 (a float cannot hold a 64-bit id exactly)")


def test_the_tydi_gold_survives_the_cache(tmp_path, bert_tok_dir):
    from datasets import load_from_disk

    from qa_core.pipeline import PreprocessConfig, prepare

    path = write_jsonl(tmp_path / "raw.jsonl", records())
    result = prepare(PreprocessConfig(data=str(path), model=bert_tok_dir,
                                      cache_dir=str(tmp_path / "cache"), language="all",
                                      max_length=64, doc_stride=16))
    examples = load_from_disk(str(result.entry / "examples"))
    assert examples["id"] == [str(i) for i in IDS]
    assert examples["tydi_annotations"] == EXPECTED_ANNOTATIONS
    assert examples["passage_candidates"][4] == CANDIDATES


@pytest.mark.parametrize("start,end,expected", [
    (0, 1, (0, 1)), (1, 2, (1, 3)), (2, 3, (3, 6)), (3, 4, (6, 10)), (1, 5, (1, 11)),
    (4, 4, (10, 10))])
def test_char_spans_become_byte_spans_at_multibyte_edges(start, end, expected):
    # a: 1 byte, é: 2, 中: 3, 🤗: 4, b: 1
    assert char_span_to_byte_span("aé中🤗b", start, end) == expected


def test_a_char_span_outside_the_text_is_refused():
    with pytest.raises(OffsetError):
        char_span_to_byte_span("aé", 1, 3)


def examples_table(rows: list[dict]) -> pa.Table:
    base = {"question": "q", "answers": {"text": [], "answer_start": []}, "title": "",
            "yes_no_answer": "NONE", "passage_answer_start": -1, "passage_answer_end": -1}
    return pa.Table.from_pylist([{**base, **row} for row in rows], schema=EXAMPLE_SCHEMA)


def test_predictions_take_the_best_non_null_span_as_bytes_and_its_passage():
    text = "aé中🤗b\nxyz"          # candidates: chars 0..5 = bytes 0..11, chars 6..9 = 12..15
    candidates = [{"start_byte": 0, "end_byte": 11}, {"start_byte": 12, "end_byte": 15}]
    tydi = {"tydi_annotations": [NULL], "passage_candidates": candidates}
    table = examples_table([
        {"id": "-5", "context": text, "language": "English", **tydi},
        {"id": "squad", "context": text, "language": "", "tydi_annotations": None,
         "passage_candidates": []},
        {"id": "7", "context": text, "language": "thai", **tydi},
        {"id": "8", "context": text, "language": "thai", **tydi},
        {"id": "9", "context": text, "language": "thai", **tydi},
    ])
    references = TydiReferences.from_examples(table)
    assert list(references.gold) == ["-5", "7", "8", "9"]
    assert references.gold["-5"] == TydiGold("-5", "english", (TydiAnnotation(-1, -1, -1, "NONE"),))
    spans = ExampleSpans(
        score=np.array([3.0, 9.0, 1.5, 2.0, -np.inf]),
        start_char=np.array([2, 0, 4, 6, -1]), end_char=np.array([4, 1, 7, 9, -1]),
        null_score=np.array([5.0, 0.0, 0.5, 1.0, 0.0]),
        has_features=np.ones(5, bool))
    predictions = references.predictions(spans, table.column("context").to_pylist())
    assert predictions == [
        # 中🤗 = bytes 3..10 inside candidate 0; null (5.0) beat the span (3.0): still predicted
        TydiPrediction("-5", "english", 0, -2.0, 3, 10, -2.0),
        # b, "\n", x: bytes 10..13 cross the two candidates: no passage
        TydiPrediction("7", "thai", -1, 1.0, 10, 13, 1.0),
        TydiPrediction("8", "thai", 1, 1.0, 12, 15, 1.0),
        TydiPrediction("9", "thai", -1, 0.0, -1, -1, 0.0),   # no window offered a span
    ]


def gold(example_id: str, language: str, *answers: tuple[int, int, int]) -> TydiGold:
    return TydiGold(example_id, language, tuple(TydiAnnotation(p, s, e, "NONE")
                                                for p, s, e in answers))


def test_tydi_metrics_keys_and_their_headline_row():
    references = TydiReferences(np.arange(3), {
        "1": gold("1", "english", (0, 0, 4), (0, 0, 4)),
        "2": gold("2", "thai", (1, 5, 9), (1, 5, 9)),
        "3": gold("3", "arabic", (2, 0, 3), (2, 0, 3))}, np.zeros(4, np.int64),
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    right = [TydiPrediction("1", "english", 0, 1.0, 0, 4, 1.0),
             TydiPrediction("2", "thai", 1, 1.0, 5, 9, 1.0),
             TydiPrediction("3", "arabic", 0, 1.0, 0, 1, 1.0)]   # wrong passage; F1 2*(1/3)/(1+1/3)
    metrics = tydi_metrics(references, right)
    assert set(metrics) == {"tydi", "tydi_non_english_mean", "tydi_unexpected_predictions",
                            "tydi_headline", "tydi_passage_f1", "tydi_minimal_f1"}
    assert sorted(metrics["tydi"]) == ["arabic", "english", "thai"]
    assert (metrics["tydi_headline"], metrics["tydi_passage_f1"],
            metrics["tydi_minimal_f1"]) == ("english", 100.0, 100.0)
    assert metrics["tydi_non_english_mean"]["passage_f1"] == pytest.approx(50.0)
    assert metrics["tydi_non_english_mean"]["minimal_f1"] == pytest.approx((100.0 + 50.0) / 2)
    without_english = TydiReferences(references.rows[:2], {
        k: v for k, v in references.gold.items() if k != "1"}, references.candidate_offsets,
        references.candidate_starts, references.candidate_ends)
    # a prediction whose id the gold lacks is counted (a language is scored from its predictions)
    extra = TydiPrediction("99", "thai", 1, 0.5, 5, 9, 0.5)
    metrics = tydi_metrics(without_english, right[1:] + [extra])
    assert (metrics["tydi_headline"], metrics["tydi_passage_f1"],
            metrics["tydi_unexpected_predictions"]) == ("non_english_mean", pytest.approx(50.0), 1)


def tydi_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "tydi.jsonl", records())


def test_a_tiny_tydi_run_writes_predictions_that_score_as_its_metrics(tiny_model, cache_dir,
                                                                      tmp_path):
    """Train 3 steps and evaluate after each on a TyDi file; best_model/ by TyDi minimal F1."""
    data, out = tydi_file(tmp_path), tmp_path / "run"
    code, summary, stdout = run_main_in_process(train_args(
        tiny_model, cache_dir, out, train_data=str(data), eval_data=str(data), language="all",
        max_train_examples=None, max_eval_examples=None, max_train_steps=3,
        eval_strategy="steps", eval_steps=1, metric_for_best_model="tydi_minimal_f1",
        n_best_size=5))
    assert code == 0, stdout[-2000:]
    lines = (out / "tydi_predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["example_id"] for line in lines] == IDS  # ints, exact, in order
    documents = {r["example_id"]: r["document_plaintext"].encode() for r in records()}
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"example_id", "language", "passage_answer_index",
                               "passage_answer_score", "minimal_answer", "minimal_answer_score",
                               "yes_no_answer"}
        assert record["yes_no_answer"] == "NONE"
        assert record["minimal_answer_score"] == record["passage_answer_score"]
        document = documents[record["example_id"]]
        start, end = (record["minimal_answer"][k] for k in ("start_byte_offset", "end_byte_offset"))
        assert 0 <= start < end <= len(document)
        document[start:end].decode("utf-8")  # both ends on character boundaries
    metrics = json.loads((out / "metrics.json").read_text())
    scores = score_tydi(read_gold(data), read_predictions(out / "tydi_predictions.jsonl"))
    assert metrics["tydi"] == scores.languages and sorted(scores.languages) == ["english",
                                                                               "japanese"]
    mean, japanese = metrics["tydi_non_english_mean"], metrics["tydi"]["japanese"]
    assert (mean["passage_f1"], mean["minimal_f1"]) == (japanese["passage_f1"],
                                                        japanese["minimal_f1"])
    assert metrics["tydi_unexpected_predictions"] == 0
    assert metrics["tydi_headline"] == "english"
    assert metrics["tydi_minimal_f1"] == metrics["tydi"]["english"]["minimal_f1"]
    assert summary["tydi_passage_f1"] == metrics["tydi"]["english"]["passage_f1"]
    assert "TyDi english: passage F1" in stdout
    # best_model/ by TyDi minimal F1: the first evaluation reaching the highest one
    evaluations = [r for r in read_log(out) if r["event"] == "eval"]
    values = [r["tydi_minimal_f1"] for r in evaluations]
    assert summary["metric_for_best_model"] == "tydi_minimal_f1"
    assert summary["best_f1"] == max(values)
    assert summary["best_step"] == evaluations[values.index(max(values))]["step"]
    # a later run on SQuAD data into the folder leaves no TyDi predictions of this one behind
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, out, max_train_steps=1,
                                                eval_strategy="end", overwrite_output_dir=True))
    assert code == 0 and not (out / "tydi_predictions.jsonl").exists()
    assert "tydi" not in json.loads((out / "metrics.json").read_text())


def test_a_tydi_metric_for_best_model_needs_tydi_evaluation_data(tiny_model, cache_dir, tmp_path,
                                                                  capsys):
    code, _, _ = run_main_in_process(train_args(tiny_model, cache_dir, tmp_path / "run",
                                                max_train_steps=1,
                                                metric_for_best_model="tydi_passage_f1"))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train_accelerate.py: error: --metric_for_best_model tydi_passage_f1: the evaluation "
        f"data ({EVAL_DATA}) is not TyDi QA (official raw or HF primary_task layout), so it has "
        "no TyDi scores; choose f1 or exact_match")


def test_metric_for_best_model_choices(capsys):
    from qa_core.settings import parse_train_settings

    assert parse_train_settings([]).run.metric_for_best_model == "f1"
    for choice in ("exact_match", "tydi_minimal_f1", "tydi_passage_f1"):
        assert parse_train_settings(["--metric_for_best_model", choice]).run \
            .metric_for_best_model == choice
    with pytest.raises(SystemExit) as stop:
        parse_train_settings(["--metric_for_best_model", "loss"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "invalid choice: 'loss' (choose from 'f1', 'exact_match', 'tydi_minimal_f1', "
        "'tydi_passage_f1')")


def test_a_resume_with_another_metric_for_best_model_chooses_afresh():
    saved = RunState(best_f1=40.0, best_step=6, settings={"metric_for_best_model": "f1"})
    now = RunState(settings={"metric_for_best_model": "tydi_minimal_f1"})
    assert saved.changed_settings(now) == [
        "--metric_for_best_model is 'tydi_minimal_f1', the checkpoint's run chose by 'f1': its "
        "best (40.0) is not compared with the new metric; best_model/ is chosen afresh"]
    resumed = saved.resumed_with(now)
    assert (resumed.best_f1, resumed.best_step) == (None, None)
    assert saved.resumed_with(RunState(settings={"metric_for_best_model": "f1"})).best_f1 == 40.0


def test_make_tydi_eval_builds_an_official_file_and_the_training_complement(tmp_path, capsys):
    from bench.make_tydi_eval import main

    squad_path = DATA / "squadshifts_new_wiki_eval.json.gz"   # 4 articles, 476 questions
    eval_out, train_out = tmp_path / "eval.jsonl.gz", tmp_path / "train.json"
    assert main(["--squad", str(squad_path), "--eval_articles", "1", "--eval_out", str(eval_out),
                 "--train_out", str(train_out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with gzip.open(squad_path, "rt", encoding="utf-8") as handle:
        squad = json.load(handle)
    last = squad["data"][-1]
    questions = {qa["id"]: (p, qa) for p in last["paragraphs"] for qa in p["qas"]}
    written = [json.loads(line) for line in gzip.open(eval_out, "rt", encoding="utf-8")]
    assert len(written) == len(questions) == summary["eval_examples"]
    assert json.loads(train_out.read_text())["data"] == squad["data"][:-1]
    non_null = [sum(a["minimal_answer"]["plaintext_start_byte"] >= 0 for a in r["annotations"])
                for r in written]
    assert min(non_null) == 0 and max(non_null) == 3 and sum(n == 1 for n in non_null) > 0
    assert any(r["example_id"] < 0 for r in written)
    assert all(-2**63 <= r["example_id"] < 2**63 and len(r["annotations"]) == 3
               for r in written)
    document = written[0]["document_plaintext"]
    assert document == "\n".join(p["context"] for p in last["paragraphs"])
    data = document.encode("utf-8")
    for record in written:
        for candidate, paragraph in zip(record["passage_answer_candidates"], last["paragraphs"]):
            start, end = candidate["plaintext_start_byte"], candidate["plaintext_end_byte"]
            assert data[start:end].decode("utf-8") == paragraph["context"]
        answers = {a["text"] for a in questions[next(
            q for q in questions if questions[q][1]["question"] == record["question_text"])][1][
            "answers"]}
        for annotation in record["annotations"]:
            start = annotation["minimal_answer"]["plaintext_start_byte"]
            if start >= 0:
                text = data[start:annotation["minimal_answer"]["plaintext_end_byte"]].decode()
                assert text in answers
    # the project's reader takes every example, with no skip
    stats = ReadStats()
    assert len(list(open_source(SourceSpec(str(eval_out))).iter_examples(stats))) == len(written)
    assert stats.skipped == {}


def test_make_tydi_eval_refuses_holding_out_every_article(tmp_path, capsys):
    from bench.make_tydi_eval import main

    squad = write_json(tmp_path / "one.json", {"data": [{"title": "t", "paragraphs": []}]})
    with pytest.raises(SystemExit) as stop:
        main(["--squad", str(squad), "--eval_out", str(tmp_path / "e.jsonl"),
              "--train_out", str(tmp_path / "t.json")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --eval_articles 4: the file has 1 articles; leave at least one for training")
