"""qa_core.tydi_eval against TyDi QA's official scoring rules (tydi_eval.py / eval_utils.py at
google-research-datasets/tydiqa cf288a7), each expected value worked out by hand in a comment.

Percentages: the module reports F1, precision and recall x 100.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from qa_core import tydi_eval
from qa_core.errors import QAError
from qa_core.tydi_eval import (
    TydiAnnotation,
    TydiGold,
    TydiInputError,
    TydiPrediction,
    prediction_record,
    read_gold,
    read_predictions,
    score_tydi,
    span_f1,
    write_predictions,
)

DATA = resources.files("qa_core") / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tydiqa_official"
NULL = TydiAnnotation(-1, -1, -1, "NONE")


def ann(passage: int = -1, span: tuple[int, int] = (-1, -1), yes_no: str = "NONE"):
    return TydiAnnotation(passage, span[0], span[1], yes_no)


def gold(example_id: str, *annotations: TydiAnnotation, language: str = "english") -> TydiGold:
    return TydiGold(example_id, language, tuple(annotations))


def pred(example_id: str, passage: int = -1, score: float = 1.0, span=(-1, -1),
         yes_no: str = "NONE", language: str = "english", minimal_score: float | None = None):
    return TydiPrediction(example_id, language, passage, score, span[0], span[1],
                          score if minimal_score is None else minimal_score, yes_no)


def by_id(*items) -> dict:
    return {item.example_id: item for item in items}


def approx(value: float):
    return pytest.approx(value, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Gold votes
# ---------------------------------------------------------------------------------------------

def test_passage_vote_thresholds_one_two_three():
    # e1: 1 annotator chose a passage, e2: 2 (different ones), e3: 3. Every prediction names
    # a passage some annotator chose (e2's second annotator's 7 counts as correct).
    golds = by_id(gold("e1", ann(2), NULL, NULL),
                  gold("e2", ann(4), ann(7), NULL),
                  gold("e3", ann(1), ann(1), ann(1)))
    preds = by_id(pred("e1", 2), pred("e2", 7), pred("e3", 1))

    def passage(threshold):
        row = score_tydi(golds, preds, passage_non_null_threshold=threshold).languages["english"]
        return row["passage_f1"], row["passage_precision"], row["passage_recall"]

    # threshold 1: 3 gold answers, 3 correct predictions: P = R = F1 = 3/3
    assert passage(1) == (approx(100.0), approx(100.0), approx(100.0))
    # threshold 2: e1 is null gold, so its prediction earns nothing but counts as predicted:
    # P = 2/3, R = 2/2; F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    assert passage(2) == (approx(80.0), approx(200 / 3), approx(100.0))
    # threshold 3: only e3 has gold: P = 1/3, R = 1/1; F1 = 2 * (1/3) / (4/3) = 0.5
    assert passage(3) == (approx(50.0), approx(100 / 3), approx(100.0))


def test_minimal_vote_counts_yes_no_as_an_answer():
    # 1 span + 1 YES = 2 non-null minimal votes: gold has a minimal answer at threshold 2,
    # not at 3. The span prediction matches the span exactly: F1 1 when there is gold.
    golds = by_id(gold("e1", ann(0, (10, 20)), ann(0, yes_no="YES"), NULL))
    preds = by_id(pred("e1", 0, span=(10, 20)))
    assert score_tydi(golds, preds).languages["english"]["minimal_f1"] == approx(100.0)
    # threshold 3: null gold, a non-null prediction: P = 0/1, R = 0/0 -> F1 0
    row = score_tydi(golds, preds, minimal_non_null_threshold=3).languages["english"]
    assert (row["minimal_f1"], row["minimal_precision"], row["minimal_recall"]) == (0, 0, 0)
    assert row["minimal_threshold"] == 0.0   # no threshold gave F1 > 0: reported as 0.0


def test_no_annotations_is_null_gold():
    # An example with no annotators: null gold (the official code crashes adding [] to a count).
    golds = by_id(gold("e1"), gold("e2", ann(3), ann(3), NULL))
    preds = by_id(pred("e1", 3), pred("e2", 3))
    row = score_tydi(golds, preds).languages["english"]
    # e1 predicted (null gold, no credit), e2 right: P = 1/2, R = 1/1, F1 = 1 / 1.5
    assert row["passage_f1"] == approx(200 / 3)


# ---------------------------------------------------------------------------------------------
# Minimal answer credit
# ---------------------------------------------------------------------------------------------

def test_yes_no_credit():
    # Gold: two annotators YES (no span), one a span; a YES/NO answer counts as minimal.
    g = gold("e1", ann(0, yes_no="YES"), ann(0, yes_no="YES"), ann(0, (5, 9)))

    def minimal(p):
        return score_tydi(by_id(g), by_id(p)).languages["english"]["minimal_f1"]

    assert minimal(pred("e1", 0, yes_no="YES")) == approx(100.0)   # same as an annotator: 1
    assert minimal(pred("e1", 0, yes_no="NO")) == 0.0               # P = 0/1 -> 0
    # a span prediction is compared with the annotators' spans only: (5, 9) exactly -> 1
    assert minimal(pred("e1", 0, span=(5, 9))) == approx(100.0)
    # one annotator's YES is enough for credit once the vote says there is an answer
    g2 = gold("e2", ann(0, (5, 9)), ann(0, (5, 9)), ann(0, yes_no="YES"))
    row = score_tydi(by_id(g2), by_id(pred("e2", 0, yes_no="yes".upper()))).languages
    assert row["english"]["minimal_f1"] == approx(100.0)


def test_partial_byte_overlap_takes_the_best_annotator():
    # gold (10, 20) and (12, 30); prediction (15, 25):
    #   vs (10, 20): overlap 5, P = 5/10, R = 5/10 -> F1 0.5
    #   vs (12, 30): overlap 10, P = 10/10, R = 10/18 -> F1 = 2 * (10/18) / (28/18) = 5/7
    g = gold("e1", ann(0, (10, 20)), ann(0, (12, 30)), NULL)
    row = score_tydi(by_id(g), by_id(pred("e1", 0, span=(15, 25)))).languages["english"]
    assert row["minimal_f1"] == approx(100 * 5 / 7)
    assert span_f1(10, 20, 15, 25) == approx(0.5)
    assert span_f1(10, 20, 20, 25) == 0.0   # touching spans share no byte (end exclusive)
    assert span_f1(10, 20, 15, 15) == 0.0   # an empty span inside the gold: no byte


def test_multibyte_characters_at_span_edges_count_in_bytes():
    text = "in 東京 today"
    data = text.encode("utf-8")
    gold_span = (data.index("東京".encode()), data.index("東京".encode()) + 6)   # (3, 9)
    pred_span = (0, data.index("京".encode()))                                # "in 東": (0, 6)
    assert (gold_span, pred_span) == ((3, 9), (0, 6))
    # bytes: overlap = 東 = 3 bytes; P = 3/6, R = 3/6 -> F1 0.5. (In characters it would be
    # overlap 1, P = 1/4, R = 1/2 -> F1 1/3: the scorer counts bytes, as TyDi's does.)
    g = gold("e1", ann(0, gold_span), ann(0, gold_span), NULL)
    row = score_tydi(by_id(g), by_id(pred("e1", 0, span=pred_span))).languages["english"]
    assert row["minimal_f1"] == approx(50.0)


# ---------------------------------------------------------------------------------------------
# Thresholds, ties, recall at precision
# ---------------------------------------------------------------------------------------------

PASSAGE_GOLD = (ann(0), ann(0), ann(0))


def test_tied_scores_are_taken_together_in_any_order():
    # All four have a gold passage 0. e2 is wrong (passage 1) and tied at score 2 with e3.
    # Points after each distinct score, high first (total gold 4):
    #   3: credit 1 / predicted 1 -> P 1,   R 1/4 -> F1 0.4
    #   2: credit 2 / predicted 3 -> P 2/3, R 2/4 -> F1 = 2*(2/3)*(1/2) / (7/6) = 4/7
    #   1: credit 2 / predicted 4 -> P 1/2, R 2/4 -> F1 0.5
    # Best: 4/7 at threshold 2. Splitting the tie (e3 before e2) would give a point
    # P 1, R 1/2, F1 2/3 that the official scorer never produces.
    preds = [pred("e1", 0, 3.0), pred("e2", 1, 2.0), pred("e3", 0, 2.0), pred("e4", 1, 1.0)]
    for order in (["e1", "e2", "e3", "e4"], ["e4", "e3", "e2", "e1"]):
        golds = {i: gold(i, *PASSAGE_GOLD) for i in order}
        row = score_tydi(golds, by_id(*preds)).languages["english"]
        assert row["passage_f1"] == approx(100 * 4 / 7)
        assert row["passage_precision"] == approx(200 / 3)
        assert row["passage_recall"] == approx(50.0)
        assert row["passage_threshold"] == 2.0
        # recall at P >= 0.5: best R over points with P >= 0.5 is 1/2 (at 2; the point at 1
        # has R 1/2 too, not more); P >= 0.75 and >= 0.9: only the point at 3, R 1/4
        assert row["passage_recall_at_p50"] == approx(50.0)
        assert row["passage_recall_at_p75"] == approx(25.0)
        assert row["passage_recall_at_p90"] == approx(25.0)


def test_equal_f1_keeps_the_highest_threshold():
    # e1, e2 have gold passages; e3, e4 are null gold but get a passage predicted (tied at 3).
    #   5: credit 1 / predicted 1 -> P 1,   R 1/2 -> F1 2/3
    #   3: credit 1 / predicted 3 -> P 1/3, R 1/2 -> F1 0.4
    #   2: credit 2 / predicted 4 -> P 1/2, R 1   -> F1 2/3   (equal: the first, 5, stays)
    golds = by_id(gold("e1", *PASSAGE_GOLD), gold("e2", *PASSAGE_GOLD),
                  gold("e3", NULL, NULL, NULL), gold("e4", NULL, NULL, NULL))
    preds = by_id(pred("e1", 0, 5.0), pred("e3", 4, 3.0), pred("e4", 4, 3.0),
                  pred("e2", 0, 2.0))
    row = score_tydi(golds, preds).languages["english"]
    assert (row["passage_f1"], row["passage_threshold"]) == (approx(200 / 3), 5.0)
    assert (row["passage_precision"], row["passage_recall"]) == (approx(100.0), approx(50.0))
    # recall at P >= 0.5: R 1 at threshold 2 (P exactly 1/2 counts: ">="); at P >= 0.75 and
    # 0.9 only the point at 5 qualifies: R 1/2
    assert row["passage_recall_at_p50"] == approx(100.0)
    assert row["passage_recall_at_p75"] == approx(50.0)
    assert row["passage_recall_at_p90"] == approx(50.0)


def test_minimal_threshold_uses_the_minimal_score():
    # Passage and minimal answers are ranked by their own scores. Both gold spans (0, 10).
    golds = by_id(gold("e1", ann(0, (0, 10)), ann(0, (0, 10)), NULL),
                  gold("e2", ann(0, (0, 10)), ann(0, (0, 10)), NULL))
    # e1: half the span (P 1, R 1/2 -> F1 2/3), minimal score 9; e2: a wrong span, score 1.
    preds = by_id(pred("e1", 0, 1.0, span=(0, 5), minimal_score=9.0),
                  pred("e2", 0, 1.0, span=(20, 30), minimal_score=1.0))
    row = score_tydi(golds, preds).languages["english"]
    #   9: credit 2/3 / predicted 1 -> P 2/3, R 1/3 -> F1 = 2*(2/9) / 1 = 4/9
    #   1: credit 2/3 / predicted 2 -> P 1/3, R 1/3 -> F1 1/3
    assert row["minimal_f1"] == approx(100 * 4 / 9)
    assert row["minimal_threshold"] == 9.0
    assert (row["minimal_precision"], row["minimal_recall"]) == (approx(200 / 3), approx(100 / 3))
    # passage: both right, both scored 1: P = R = 1
    assert (row["passage_f1"], row["passage_threshold"]) == (approx(100.0), 1.0)


# ---------------------------------------------------------------------------------------------
# Missing and unexpected predictions, languages
# ---------------------------------------------------------------------------------------------

def test_missing_predictions_score_zero_and_count_as_predicted_when_gold_is_null():
    # e1 has gold and a right prediction at score -1; e2 (null gold) and e3 (gold) have none.
    # Official rows for the missing: (has_gold, not has_gold, 0, score 0), so e2 counts as
    # predicted and both rank above e1:
    #    0: credit 0 / predicted 1 (e2) -> P 0,   R 0
    #   -1: credit 1 / predicted 2      -> P 1/2, R 1/2 -> F1 1/2
    golds = by_id(gold("e1", *PASSAGE_GOLD), gold("e2", NULL, NULL, NULL),
                  gold("e3", *PASSAGE_GOLD))
    row = score_tydi(golds, by_id(pred("e1", 0, -1.0))).languages["english"]
    assert (row["passage_f1"], row["passage_precision"], row["passage_recall"]) == (
        approx(50.0), approx(50.0), approx(50.0))
    assert row["passage_threshold"] == -1.0
    assert (row["examples"], row["predicted"]) == (3, 1)


def test_unexpected_predictions_are_counted_not_fatal():
    golds = by_id(gold("e1", *PASSAGE_GOLD))
    scores = score_tydi(golds, by_id(pred("e1", 0), pred("nope", 0), pred("also-nope", 2)))
    assert scores.unexpected_predictions == 2
    # e1 alone is scored: P = R = 1
    assert scores.languages["english"]["passage_f1"] == approx(100.0)
    assert scores.languages["english"]["predicted"] == 1
    assert "unexpected predictions (ids not in the gold): 2" in scores.table()


def test_predictions_are_grouped_by_their_own_language():
    # As the official scorer: e1's prediction says "arabic", so english has e1 missing (a
    # gold answer, no prediction: R 0 -> F1 0) and arabic has a prediction and no gold (zeros).
    golds = by_id(gold("e1", *PASSAGE_GOLD), gold("e2", *PASSAGE_GOLD))
    scores = score_tydi(golds, by_id(pred("e1", 0, language="arabic"), pred("e2", 0)))
    english, arabic = scores.languages["english"], scores.languages["arabic"]
    # english: e2 right at 1, e1 missing (score 0, not predicted): point at 1: P 1, R 1/2 ->
    # F1 2/3; at 0: P 1, R 1/2 again (not better)
    assert english["passage_f1"] == approx(200 / 3)
    assert (arabic["passage_f1"], arabic["examples"], arabic["predicted"]) == (0.0, 0, 0)
    assert scores.unexpected_predictions == 0 and scores.language_mismatches == 1


def test_languages_without_predictions_are_skipped():
    golds = by_id(gold("e1", *PASSAGE_GOLD), gold("k1", *PASSAGE_GOLD, language="korean"),
                  gold("k2", NULL, language="korean"))
    scores = score_tydi(golds, by_id(pred("e1", 0)))
    assert list(scores.languages) == ["english"]
    assert scores.non_english_mean is None    # one language scored: no mean
    assert scores.skipped_languages == {"korean": 2}


def test_non_english_mean_and_language_order():
    # english 100 (right), arabic 100 (right), thai 0 (wrong passage) -> the mean over arabic
    # and thai only: (100 + 0) / 2 = 50. Rows come in the official order: english, arabic,
    # ..., thai; a language outside TyDi's eleven ("zulu") comes after them.
    golds = by_id(gold("e", *PASSAGE_GOLD), gold("a", *PASSAGE_GOLD, language="arabic"),
                  gold("t", *PASSAGE_GOLD, language="thai"),
                  gold("z", *PASSAGE_GOLD, language="zulu"))
    preds = by_id(pred("t", 5, language="thai"), pred("z", 0, language="zulu"),
                  pred("a", 0, language="arabic"), pred("e", 0))
    scores = score_tydi(golds, preds)
    assert list(scores.languages) == ["english", "arabic", "thai", "zulu"]
    mean = scores.non_english_mean
    # arabic 100, thai 0, zulu 100 -> (100 + 0 + 100) / 3
    assert mean["passage_f1"] == approx(200 / 3)
    assert mean["passage_threshold"] is None
    assert (mean["examples"], mean["predicted"]) == (3, 3)
    assert "non-English mean (3)" in scores.table()


def test_non_finite_scores_are_refused():
    with pytest.raises(QAError, match="passage_answer_score"):
        score_tydi(by_id(gold("e1", *PASSAGE_GOLD)), by_id(pred("e1", 0, float("nan"))))


# ---------------------------------------------------------------------------------------------
# The official sample: small_gold_annotation (Korean, Thai, Arabic)
# ---------------------------------------------------------------------------------------------

SMALL_GOLD_PREDICTIONS = [
    # Korean: all three annotators null; a passage and a span predicted anyway.
    {"example_id": 4973857530487275520, "language": "korean", "passage_answer_index": 3,
     "passage_answer_score": 0.5, "minimal_answer": {"start_byte_offset": 100,
                                                     "end_byte_offset": 120},
     "minimal_answer_score": 0.5, "yes_no_answer": "NONE"},
    # Thai: all three annotators passage 1, span (814, 852); predicted the first half.
    {"example_id": 2460336140331547872, "language": "thai", "passage_answer_index": 1,
     "passage_answer_score": 2.0, "minimal_answer": {"start_byte_offset": 814,
                                                     "end_byte_offset": 833},
     "minimal_answer_score": 2.0, "yes_no_answer": "NONE"},
    # Arabic: passage 0 (all three); spans (154, 267), (152, 197), (152, 460).
    {"example_id": 2731616829613113346, "language": "arabic", "passage_answer_index": 0,
     "passage_answer_score": 1.0, "minimal_answer": {"start_byte_offset": 152,
                                                     "end_byte_offset": 267},
     "minimal_answer_score": 1.0, "yes_no_answer": "NONE"},
]


def _score_small_gold(gold_path, tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(p) + "\n" for p in SMALL_GOLD_PREDICTIONS))
    return score_tydi(read_gold(gold_path), read_predictions(predictions))


def _check_small_gold(scores):
    languages = scores.languages
    assert list(languages) == ["arabic", "korean", "thai"]   # the official order
    # korean: null gold (0 of 3 votes), a prediction: P 0/1, R 0/0 -> 0, for both tasks
    assert (languages["korean"]["passage_f1"], languages["korean"]["minimal_f1"]) == (0, 0)
    # thai: passage 1 right -> 100. Minimal (814, 833) vs (814, 852): overlap 19,
    # P 19/19, R 19/38 -> F1 = 2 * 0.5 / 1.5 = 2/3
    assert languages["thai"]["passage_f1"] == approx(100.0)
    assert languages["thai"]["minimal_f1"] == approx(200 / 3)
    # arabic: passage 0 right -> 100. Minimal (152, 267), 115 bytes:
    #   vs (154, 267): overlap 113, P 113/115, R 1 -> F1 = 226/228 = 113/114
    #   vs (152, 197): overlap 45,  P 45/115,  R 1 -> F1 = 90/160
    #   vs (152, 460): overlap 115, P 1, R 115/308 -> F1 = 230/423
    assert languages["arabic"]["passage_f1"] == approx(100.0)
    assert languages["arabic"]["minimal_f1"] == approx(100 * 113 / 114)
    # all three non-English: passage (0 + 100 + 100) / 3, minimal (0 + 200/3 + 11300/114) / 3
    assert scores.non_english_mean["passage_f1"] == approx(200 / 3)
    assert scores.non_english_mean["minimal_f1"] == approx((200 / 3 + 11300 / 114) / 3)
    assert scores.unexpected_predictions == 0


def test_official_small_gold_sample(tmp_path):
    _check_small_gold(_score_small_gold(DATA / "tydiqa_small_gold_annotation.jsonl.gz",
                                        tmp_path))


@pytest.mark.skipif(not (SHARED / "small_gold_annotation.jsonl.gz").exists(),
                    reason="no ../shared/data checkout (the shipped copy is tested above)")
def test_official_small_gold_sample_from_shared_data(tmp_path):
    shared = SHARED / "small_gold_annotation.jsonl.gz"
    shipped = DATA / "tydiqa_small_gold_annotation.jsonl.gz"
    assert shared.read_bytes() == shipped.read_bytes()   # the shipped copy is byte-identical
    _check_small_gold(_score_small_gold(shared, tmp_path))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_tiny_dev_has_eleven_languages_and_exact_ids():
    golds = read_gold(DATA / "tydiqa_tiny_dev.jsonl.gz")
    assert len(golds) == 11
    assert {g.language for g in golds.values()} == set(tydi_eval.TYDI_LANGUAGES)
    # negative signed 64-bit ids keep every digit (a float would end ...767552)
    russian = golds["-8230455546809992713"]
    assert russian.language == "russian"
    assert [a.yes_no_answer for a in russian.annotations] == ["NO", "NO", "NO"]
    assert [a.passage_index for a in russian.annotations] == [75, 75, 79]
    english = golds["7361157181217651048"]
    assert english.annotations[1] == TydiAnnotation(5, -1, -1, "YES")


@pytest.mark.skipif(not (SHARED / "tiny_dev.primary_task_hf_schema.jsonl").exists(),
                    reason="no ../shared/data checkout (test_hf_and_raw_layouts_read_the_same "
                           "covers the HF layout)")
def test_shared_hf_schema_tiny_dev_reads_as_the_raw_one():
    raw = read_gold(DATA / "tydiqa_tiny_dev.jsonl.gz")
    hf = read_gold(SHARED / "tiny_dev.primary_task_hf_schema.jsonl")
    # same 11 examples in the same order; the HF rows have no example_id: <file name>:<line>
    assert list(hf)[:2] == ["tiny_dev.primary_task_hf_schema.jsonl:1",
                            "tiny_dev.primary_task_hf_schema.jsonl:2"]
    assert [(g.language, g.annotations) for g in hf.values()] == [
        (g.language, g.annotations) for g in raw.values()]


def test_hf_layout_gets_the_project_readers_ids(qa_files):
    from qa_core.readers import ReadStats, SourceSpec, open_source

    for name in ("tydi_hf", "tydi_hf_ids", "tydi_raw_gz"):
        golds = read_gold(qa_files[name])
        source = open_source(SourceSpec(str(qa_files[name]), language="all"))
        reader_ids = [e["id"] for e in source.iter_examples(ReadStats())]
        assert reader_ids and set(reader_ids) <= set(golds), name
    hf = read_gold(qa_files["tydi_hf"])
    assert next(iter(hf)) == "tydi_hf.jsonl:1"   # no id in the row: <file name>:<line>


def test_hf_and_raw_layouts_read_the_same(qa_files):
    raw = read_gold(qa_files["tydi_raw"])
    hf = read_gold(qa_files["tydi_hf_ids"])
    assert [(g.language, g.annotations) for g in raw.values()] == [
        (g.language, g.annotations) for g in hf.values()]


def test_predictions_round_trip_with_big_negative_ids(tmp_path):
    preds = [pred("-8230455546809992713", 75, 1.5, yes_no="NO", language="russian"),
             pred("9223372036854775807", 2, -0.25, span=(3, 9)),
             pred("tydi_hf.jsonl:4", -1, 0.0)]
    assert prediction_record(preds[0])["example_id"] == -8230455546809992713   # an int
    assert prediction_record(preds[2])["example_id"] == "tydi_hf.jsonl:4"
    for name in ("p.jsonl", "p.jsonl.gz"):
        write_predictions(tmp_path / name, preds)
        assert read_predictions(tmp_path / name) == by_id(*preds)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    line = (tmp_path / "p.jsonl").read_text().splitlines()[0]
    assert line.startswith('{"example_id": -8230455546809992713, "language": "russian"')


def _prediction_line(**changes) -> dict:
    record = {"example_id": 1, "language": "english", "passage_answer_index": 0,
              "passage_answer_score": 1.0,
              "minimal_answer": {"start_byte_offset": 1, "end_byte_offset": 4},
              "minimal_answer_score": 1.0, "yes_no_answer": "NONE"}
    record.update(changes)
    return record


@pytest.mark.parametrize("changes, message", [
    ({"example_id": 1.5e18}, "field 'example_id' must be an integer or a non-empty string"),
    ({"passage_answer_score": None}, "missing required field 'passage_answer_score'"),
    ({"minimal_answer_score": "high"}, "field 'minimal_answer_score' must be a finite number"),
    ({"minimal_answer": {"start_byte_offset": 5, "end_byte_offset": -1}}, "half null"),
    ({"minimal_answer": {"start_byte_offset": 5, "end_byte_offset": 4}}, "starts after it ends"),
    ({"yes_no_answer": "YES"}, "field 'yes_no_answer' is YES but 'minimal_answer' holds a span"),
    ({"yes_no_answer": "maybe"}, "must be YES, NO or NONE"),
    ({"passage_answer_index": "2"}, "field 'passage_answer_index' must be an integer"),
])
def test_bad_prediction_fields_name_file_line_and_field(tmp_path, changes, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_prediction_line(example_id=0)) + "\n"
                    + json.dumps(_prediction_line(**changes)) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{path}:2: .*{message}") as err:
        read_predictions(path)
    assert "\n" not in str(err.value)


def test_prediction_defaults_and_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    no_span = {"start_byte_offset": -1, "end_byte_offset": -1}
    # passage_answer_index and yes_no_answer may be left out (official defaults -1, NONE);
    # yes_no_answer is read in any case; blank lines are skipped
    first = _prediction_line(minimal_answer=no_span)
    del first["passage_answer_index"], first["yes_no_answer"]
    second = _prediction_line(example_id=2, yes_no_answer="no", minimal_answer=no_span)
    path.write_text(json.dumps(first) + "\n\n" + json.dumps(second) + "\n")
    read = read_predictions(path)
    assert (read["1"].passage_answer_index, read["1"].yes_no_answer) == (-1, "NONE")
    assert read["2"].yes_no_answer == "NO"
    path.write_text(json.dumps(_prediction_line()) + "\n" + json.dumps(_prediction_line()) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{path}:2: field 'example_id': 1 repeats line 1"):
        read_predictions(path)


def test_bad_gold_names_file_line_and_field(tmp_path):
    path = tmp_path / "gold.jsonl.gz"
    good = {"example_id": -5, "language": "english", "annotations": [
        {"passage_answer": {"candidate_index": 0},
         "minimal_answer": {"plaintext_start_byte": 0, "plaintext_end_byte": 3},
         "yes_no_answer": "NONE"}]}
    bad = json.loads(json.dumps(good))
    bad["example_id"] = 6
    bad["annotations"][0]["minimal_answer"]["plaintext_end_byte"] = "3"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{path}:2: field 'annotations\[0\]"
                                             r"\.minimal_answer\.plaintext_end_byte' must be"):
        read_gold(path)
    hf = tmp_path / "hf.jsonl"
    hf.write_text(json.dumps({"language": "thai", "annotations": {
        "minimal_answers_start_byte": [1, -1], "minimal_answers_end_byte": [2]}}) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{hf}:1: field 'annotations' has 2 minimal_"
                                             r"answers_start_byte but 1 minimal_answers_end"):
        read_gold(hf)
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text(json.dumps(good) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{not_gzip}:1: damaged or not gzip data"):
        read_gold(not_gzip)
    hf.write_text(json.dumps({"annotations": []}) + "\n")
    with pytest.raises(TydiInputError, match=rf"^{hf}:1: missing required field 'language'"):
        read_gold(hf)


# ---------------------------------------------------------------------------------------------
# qa-tydi-eval
# ---------------------------------------------------------------------------------------------

def test_cli_prints_the_table_then_json_last(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(p) + "\n" for p in SMALL_GOLD_PREDICTIONS)
                           + json.dumps(_prediction_line(example_id=7)) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # main() as the console script calls it, then which heavy libraries it loaded (none: the
    # scorer is standard library only, so it starts in well under a second)
    run_main = ("import sys; from qa_core.tydi_eval import main; code = main(sys.argv[1:]); "
                "print('heavy:', sorted(m for m in ('torch', 'numpy', 'pyarrow', 'transformers')"
                " if m in sys.modules), file=sys.stderr); sys.exit(code)")
    done = subprocess.run(
        [sys.executable, "-c", run_main,
         "--gold", str(DATA / "tydiqa_small_gold_annotation.jsonl.gz"),
         "--predictions", str(predictions)],
        capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert list(last) == ["english", "arabic", "korean", "thai"]   # 7 says english: a row
    assert last["thai"]["minimal_f1"] == pytest.approx(200 / 3)
    assert set(last["thai"]) == set(tydi_eval.ROW_KEYS)
    assert any(line.startswith("non-English mean (3)") for line in lines)
    assert "unexpected predictions (ids not in the gold): 1" in done.stdout
    assert done.stderr == "heavy: []\n"


def test_cli_bad_file_is_one_error_line_exit_2(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps(_prediction_line()) + "\n{not json\n")
    gold_path = str(DATA / "tydiqa_small_gold_annotation.jsonl.gz")
    assert tydi_eval.main(["--gold", gold_path, "--predictions", str(predictions)]) == 2
    err = capsys.readouterr().err
    assert err == f"qa-tydi-eval: error: {predictions}:2: malformed JSON (Expecting property " \
                  "name enclosed in double quotes at column 2)\n"
    predictions.write_text(json.dumps(_prediction_line(language=None)) + "\n")
    assert tydi_eval.main(["--gold", gold_path, "--predictions", str(predictions)]) == 2
    err = capsys.readouterr().err
    assert err == (f"qa-tydi-eval: error: {predictions}:1: missing required field "
                   "'language'\n")
    assert tydi_eval.main(["--gold", str(tmp_path / "none.jsonl"),
                           "--predictions", str(predictions)]) == 2
    assert capsys.readouterr().err.startswith(f"qa-tydi-eval: error: {tmp_path}/none.jsonl: "
                                              "cannot open")


def test_language_names_are_read_lower_cased(tmp_path):
    """A gold file that writes "Thai" and predictions that write "THAI" score as one language,
    named as TyDi (and the training run's metrics.json) name it: "thai"."""
    gold_path = tmp_path / "gold.jsonl.gz"
    with gzip.open(DATA / "tydiqa_small_gold_annotation.jsonl.gz", "rt", encoding="utf-8") as src:
        records = [json.loads(line) for line in src]
    with gzip.open(gold_path, "wt", encoding="utf-8") as out:
        for record in records:
            record["language"] = record["language"].capitalize()
            out.write(json.dumps(record) + "\n")
    predictions = [dict(p, language=p["language"].upper()) for p in SMALL_GOLD_PREDICTIONS]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    _check_small_gold(score_tydi(read_gold(gold_path), read_predictions(path)))
