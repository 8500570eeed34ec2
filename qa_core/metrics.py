"""SQuAD v1.1 / v2.0 metrics computed locally (no hub access).

The text metrics follow the official evaluation scripts: answers are
normalised (lowercase, punctuation removed, articles a/an/the removed,
whitespace collapsed), exact match and token-overlap F1 are taken as the
maximum over all gold answers, and an unanswerable question (no gold answer)
has the single gold answer "" (v2.0 convention).

One set of rules for both versions: v2.0's. On v1.1 data they differ from evaluate-v1.1.py only
where a gold answer normalises to "" ('"The A,"', 'A+++++'): v2.0 drops such golds unless all
are, v1.1 keeps them. So a prediction matching only such a gold scores EM 0 here (v1.1: 100),
and where every gold normalises to "", an empty prediction scores F1 100 here (v1.1: 0). On the
SQuAD Shifts sets that is 10 of about 27,600 questions, at most 0.03 points of EM (45.805 vs
45.818 on all of New-Wiki), measured against an independent implementation of each script.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SQUAD_METRIC_DIR = Path(__file__).resolve().parent / "squad_metric"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


@lru_cache(maxsize=65536)
def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation; cached because gold answers repeat a lot."""
    lowered = text.lower()
    without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    without_articles = _ARTICLES.sub(" ", without_punctuation)
    return " ".join(without_articles.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 after normalisation (official v2.0 definition).

    Both empty -> 1 (correctly predicted no-answer); exactly one empty -> 0.
    """
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    overlap = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """The best score over the gold answers that survive normalisation ([""] when none do:
    unanswerable)."""
    kept = [gold for gold in golds if normalize_answer(gold)] or [""]
    return max(metric(prediction, gold) for gold in kept)


def _percent(values: list[float]) -> float:
    # an empty subset reports 0, not NaN (strict JSON); its *_total says it is empty
    return 100.0 * sum(values) / len(values) if values else 0.0


def squad_scores(predictions: Mapping[str, str],
                 references: Mapping[str, Sequence[str]]) -> dict[str, float | int]:
    """SQuAD EM/F1 (percentages) over the questions in ``references``.

    ``references`` maps question id -> gold answer texts (empty for an unanswerable
    question). A question without prediction is scored as "" and counted in
    ``missing_predictions``; predictions for unknown ids are ignored. The HasAns_/NoAns_
    breakdown is added as soon as one question is unanswerable.
    """
    exact: dict[bool, list[float]] = {True: [], False: []}
    f1: dict[bool, list[float]] = {True: [], False: []}
    missing = 0
    for question_id, golds in references.items():
        prediction = predictions.get(question_id)
        if prediction is None:
            missing += 1
            prediction = ""
        # As the official v2.0 script: answerable means "has gold answers".
        has_answer = len(golds) > 0
        exact[has_answer].append(max_over_golds(exact_match_score, prediction, golds))
        f1[has_answer].append(max_over_golds(f1_score, prediction, golds))

    all_exact = exact[True] + exact[False]
    all_f1 = f1[True] + f1[False]
    scores: dict[str, float | int] = {
        "exact_match": _percent(all_exact),
        "f1": _percent(all_f1),
        "total": len(all_exact),
        "missing_predictions": missing,
    }
    if exact[False]:
        scores.update(HasAns_exact=_percent(exact[True]), HasAns_f1=_percent(f1[True]),
                      HasAns_total=len(exact[True]), NoAns_exact=_percent(exact[False]),
                      NoAns_f1=_percent(f1[False]), NoAns_total=len(exact[False]))
    return scores


def macro_f1(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean over the classes seen in ``gold`` or ``predicted`` of each class's F1:
    ``sklearn.metrics.f1_score(gold, predicted, average="macro", zero_division=0)`` in numpy
    (no scikit-learn needed, e.g. on a GPU machine without it)."""
    classes, codes = np.unique(np.concatenate([gold, predicted]), return_inverse=True)
    gold_codes, predicted_codes = codes[:len(gold)], codes[len(gold):]
    true_positives = np.bincount(gold_codes[gold_codes == predicted_codes], minlength=len(classes))
    gold_counts = np.bincount(gold_codes, minlength=len(classes))
    predicted_counts = np.bincount(predicted_codes, minlength=len(classes))
    # F1 = 2 TP / (|gold| + |predicted|); every class here occurs in one of them, so no 0 / 0
    return float(np.mean(2 * true_positives / (gold_counts + predicted_counts)))


def start_end_scores(pred_start: Sequence[int] | np.ndarray, pred_end: Sequence[int] | np.ndarray,
                     gold_start: Sequence[int] | np.ndarray,
                     gold_end: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Token-position metrics as fractions in [0, 1].

    ``start_f1``/``end_f1`` are macro F1 over token positions (each position is a class), as
    scikit-learn's ``f1_score(average="macro")`` in the tutorial this project replaces
    (see :func:`macro_f1`).
    """
    pred_start, pred_end = np.asarray(pred_start), np.asarray(pred_end)
    gold_start, gold_end = np.asarray(gold_start), np.asarray(gold_end)
    start_right = pred_start == gold_start
    end_right = pred_end == gold_end
    return {
        "start_f1": macro_f1(gold_start, pred_start),
        "end_f1": macro_f1(gold_end, pred_end),
        "start_accuracy": float(start_right.mean()),
        "end_accuracy": float(end_right.mean()),
        "span_exact": float((start_right & end_right).mean()),
    }


def load_evaluate_metric(**load_kwargs):
    """The SQuAD metric as an ``evaluate`` module, loaded from the package folder (offline:
    ``evaluate.load`` on a local folder only copies the script into its modules cache)."""
    import evaluate  # optional heavy dependency, imported on demand

    return evaluate.load(str(SQUAD_METRIC_DIR), **load_kwargs)
