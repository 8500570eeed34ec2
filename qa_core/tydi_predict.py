"""Predictions in TyDi QA's own format, and TyDi's metric on the evaluated examples.

For each evaluated TyDi example (official raw or HF ``primary_task`` layout), the best
*non-null* span over all its windows (:func:`qa_core.decode.best_spans`) becomes the official
prediction record:

* ``minimal_answer``: the span as UTF-8 **byte** offsets into ``document_plaintext`` (end
  exclusive; the character offsets the decoder gives are mapped exactly, so both ends lie on
  character boundaries); ``minimal_answer_score`` = the span's score minus the example's null
  score (the minimum CLS score over its windows), so that the scorer's threshold search on it
  is the usual null-score threshold;
* ``passage_answer_index``: the first passage candidate whose byte range holds the whole span
  (-1 when none does), ``passage_answer_score`` the same number as the minimal score;
* ``yes_no_answer``: always ``"NONE"``: the model has no yes/no head.

Nulls are left to the scorer's threshold, as the official baseline does: every example with a
span gets it, however low its score. An example no window offers a span for (rare: every
top-n start/end pair was outside the context or too long) gets -1 everywhere and scores 0.0.
The metric (:func:`qa_core.tydi_eval.score_tydi`) is computed on the evaluated examples'
gold as the cache keeps it, so it equals ``qa-tydi-eval`` on the same file when every example
of the file was evaluated (no reader skips, no ``--max_eval_examples``, one language kept or
``--language all``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from qa_core.decode import ExampleSpans
from qa_core.offsets import char_span_to_byte_span
from qa_core.tydi_eval import TydiAnnotation, TydiGold, TydiPrediction, score_tydi


@dataclass
class TydiReferences:
    """What TyDi's predictions and metric need about the evaluated examples."""

    rows: np.ndarray                 # [T] indices of the TyDi examples among the evaluated ones
    gold: dict[str, TydiGold]        # by example id, in example order
    candidate_offsets: np.ndarray    # [E + 1] each evaluated example's slice of the arrays below
    candidate_starts: np.ndarray     # passage candidates' byte ranges, end exclusive
    candidate_ends: np.ndarray

    @classmethod
    def from_examples(cls, examples: pa.Table) -> "TydiReferences | None":
        """The TyDi examples' gold (``tydi_annotations`` not null), or None when there is none."""
        if "tydi_annotations" not in examples.column_names:
            return None
        annotations = examples.column("tydi_annotations")
        rows = np.flatnonzero(annotations.is_valid().to_numpy(zero_copy_only=False))
        if len(rows) == 0:
            return None
        chosen = examples.select(["id", "language", "tydi_annotations"]).take(rows).to_pydict()
        gold = {example_id: TydiGold(example_id, (language or "").lower(),
                                     tuple(TydiAnnotation(**a) for a in listed))
                for example_id, language, listed in zip(*chosen.values())}
        candidates = examples.column("passage_candidates").combine_chunks()
        values = candidates.values
        return cls(rows=rows, gold=gold,
                   candidate_offsets=candidates.offsets.to_numpy(),
                   candidate_starts=values.field("start_byte").to_numpy(zero_copy_only=False),
                   candidate_ends=values.field("end_byte").to_numpy(zero_copy_only=False))

    def predictions(self, spans: ExampleSpans, contexts: Sequence[str]) -> list[TydiPrediction]:
        """One prediction per TyDi example, in example order (``spans`` and ``contexts`` over
        all the evaluated examples; only the TyDi examples' contexts are read)."""
        predictions = []
        for example, gold in zip(self.rows.tolist(), self.gold.values()):
            score, null = float(spans.score[example]), float(spans.null_score[example])
            if not (math.isfinite(score) and math.isfinite(null)):
                predictions.append(TydiPrediction(gold.example_id, gold.language, -1, 0.0, -1,
                                                  -1, 0.0))
                continue
            start, end = char_span_to_byte_span(contexts[example], int(spans.start_char[example]),
                                                int(spans.end_char[example]))
            # the first passage candidate whose byte range holds the whole span, or -1
            begin, stop = self.candidate_offsets[example], self.candidate_offsets[example + 1]
            holds = np.flatnonzero((self.candidate_starts[begin:stop] <= start)
                                   & (end <= self.candidate_ends[begin:stop]))
            passage = int(holds[0]) if len(holds) else -1
            predictions.append(TydiPrediction(gold.example_id, gold.language, passage,
                                              score - null, start, end, score - null))
        return predictions


def tydi_metrics(references: TydiReferences,
                 predictions: Iterable[TydiPrediction]) -> dict:
    """``metrics.json``'s TyDi keys: ``tydi`` (per language, F1/precision/recall in %),
    ``tydi_non_english_mean``, ``tydi_unexpected_predictions``, and the headline figures
    ``tydi_passage_f1`` / ``tydi_minimal_f1`` (which metrics.json, the summary, the log and
    --metric_for_best_model read) with ``tydi_headline`` naming their row: ``english`` when
    English was evaluated, else ``non_english_mean`` (several languages), else the one
    language's; None when no language was scored."""
    scores = score_tydi(references.gold, {p.example_id: p for p in predictions})
    languages, mean = scores.languages, scores.non_english_mean
    chosen = ("english" if "english" in languages else "non_english_mean" if mean is not None
              else next(iter(languages)) if len(languages) == 1 else None)
    row = mean if chosen == "non_english_mean" else languages.get(chosen)
    return {"tydi": languages, "tydi_non_english_mean": mean,
            "tydi_unexpected_predictions": scores.unexpected_predictions,
            "tydi_headline": chosen,
            "tydi_passage_f1": row["passage_f1"] if row else None,
            "tydi_minimal_f1": row["minimal_f1"] if row else None}
