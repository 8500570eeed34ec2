"""Tests for qa_core.metrics against hand-computed values of the official SQuAD definition."""

from __future__ import annotations

import numpy as np
import pytest

from qa_core.metrics import (
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_scores,
    start_end_scores,
)


def test_normalization():
    assert normalize_answer("The  Cat.") == "cat"
    assert normalize_answer("an apple, a pear!") == "apple pear"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert normalize_answer("  A  ") == ""


def test_exact_match():
    assert exact_match_score("the Cat.", "cat") == 1.0
    assert exact_match_score("cats", "cat") == 0.0


def test_f1_token_overlap():
    # "a" is an article and is dropped, so use non-article tokens for 2/3.
    assert f1_score("x b c", "b c d") == pytest.approx(2 / 3)
    # With the article removed: "b c" vs "b c d" -> P=1, R=2/3, F1=0.8.
    assert f1_score("a b c", "b c d") == pytest.approx(0.8)
    assert f1_score("b b", "b") == pytest.approx(2 / 3)  # counts are clipped: P=1/2, R=1
    assert f1_score("x", "y") == 0.0


def test_f1_empty_cases():
    assert f1_score("", "") == 1.0  # correct no-answer
    assert f1_score("the", "") == 1.0  # normalises to empty
    assert f1_score("", "cat") == 0.0
    assert f1_score("cat", "") == 0.0


def test_max_over_golds():
    scores = squad_scores({"q": "blue whale"}, {"q": ["whale", "the blue whale", "shark"]})
    assert scores["exact_match"] == 100.0
    assert scores["f1"] == 100.0
    partial = squad_scores({"q": "big blue whale"}, {"q": ["whale", "blue whale"]})
    # vs "whale": P=1/3, R=1 -> 0.5; vs "blue whale": P=2/3, R=1 -> 0.8
    assert partial["exact_match"] == 0.0
    assert partial["f1"] == pytest.approx(80.0)


def test_v1_scores_have_no_breakdown():
    scores = squad_scores({"a": "cat", "b": "dog"}, {"a": ["Cat"], "b": ["wolf"]})
    assert scores == {"exact_match": 50.0, "f1": 50.0, "total": 2, "missing_predictions": 0}


def test_no_answer_split_and_missing_predictions():
    references = {
        "has1": ["cat"],
        "has2": ["x y"],
        "no1": [],
        "no2": [],
        "missing": ["m"],
    }
    predictions = {"has1": "cat", "has2": "x z", "no1": "", "no2": "something", "extra": "e"}
    scores = squad_scores(predictions, references)
    assert scores["total"] == 5
    assert scores["missing_predictions"] == 1
    assert scores["HasAns_total"] == 3 and scores["NoAns_total"] == 2
    assert scores["HasAns_exact"] == pytest.approx(100 / 3)  # cat only
    assert scores["HasAns_f1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert scores["NoAns_exact"] == 50.0 and scores["NoAns_f1"] == 50.0
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0 + 1 + 0) / 5)


def test_gold_that_normalises_to_empty_means_empty_gold():
    # Official v2 script drops golds that normalise to "", falling back to [""].
    assert squad_scores({"q": ""}, {"q": ["the"]})["exact_match"] == 100.0


def test_start_end_scores_hand_computed():
    gold_start, pred_start = [1, 1, 2, 3], [1, 2, 2, 3]
    gold_end, pred_end = [4, 5, 5, 6], [4, 5, 5, 6]
    scores = start_end_scores(pred_start, pred_end, gold_start, gold_end)
    # start classes: 1 -> P=1, R=1/2, F1=2/3; 2 -> P=1/2, R=1, F1=2/3; 3 -> F1=1.
    assert scores["start_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["end_f1"] == 1.0
    assert scores["start_accuracy"] == 0.75
    assert scores["end_accuracy"] == 1.0
    assert scores["span_exact"] == 0.75


def test_macro_f1_equals_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from qa_core.metrics import macro_f1

    rng = np.random.default_rng(0)
    for size, classes in ((1, 1), (7, 3), (500, 40), (2000, 384)):
        gold = rng.integers(0, classes, size)
        predicted = np.where(rng.random(size) < 0.4, gold, rng.integers(0, classes + 5, size))
        expected = sklearn_metrics.f1_score(gold, predicted, average="macro", zero_division=0)
        assert macro_f1(gold, predicted) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(np.array([3, 3]), np.array([4, 4])) == 0.0


def test_evaluate_module_loads_offline_and_matches(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    from qa_core.metrics import load_evaluate_metric

    metric = load_evaluate_metric(cache_dir=str(tmp_path))
    predictions = {"a": "the Cat.", "b": "", "c": "x b c", "d": "no"}
    golds = {"a": ["cat"], "b": [], "c": ["b c d", "q"], "d": ["yes"]}
    result = metric.compute(
        predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
        references=[
            {"id": k, "answers": {"text": v, "answer_start": [0] * len(v)}}
            for k, v in golds.items()
        ],
    )
    assert result == pytest.approx(squad_scores(predictions, golds))
    assert result["NoAns_total"] == 1
