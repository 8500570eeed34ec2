"""Streaming evaluation: per-batch logits -> compact spans -> answers -> SQuAD, start/end metrics.

The training loop feeds gathered batches to :class:`EvalAccumulator`; it keeps only each
feature's top spans and argmax positions (a few numbers per feature), never a
features x max_length logits array. A batch's token offsets are read when the batch arrives
(from the memory-mapped ``offset_mapping`` column), so no [features, max_length, 2] offsets
array is held for the split either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa

from qa_core.decode import (
    DecodeConfig, FeatureSpans, Prediction, best_answers, concat_feature_spans, feature_topk_spans,
)
from qa_core.metrics import squad_scores, start_end_scores


class EvalFeatures(Protocol):
    """What evaluation reads about the evaluated windows (``qa_core.batching.FeatureRows``)."""

    example_index: np.ndarray     # [F] int, index into the evaluated examples
    start_positions: np.ndarray   # [F] gold labels (CLS index for no answer)
    end_positions: np.ndarray

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """[B, L, 2] int character offsets of the features ``indices``, -1 outside the context."""


class ColumnStrings(Sequence[str]):
    """A string column of an Arrow table as a read-only sequence, converted chunk by chunk when
    iterated (the decoder walks the contexts once; no list of every context is kept)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.column[index].to_pylist()
        return self.column[index].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self.column.chunks:
            yield from chunk.to_pylist()


@dataclass
class EvalReferences:
    """What decoding and scoring need about the evaluated examples and features."""

    example_ids: list[str]
    contexts: Sequence[str]
    gold_answers: list[list[str]]
    feature_example_index: np.ndarray     # [F] index into example_ids
    start_positions: np.ndarray           # [F] gold labels (CLS index for no answer)
    end_positions: np.ndarray
    offsets: Callable[[np.ndarray], np.ndarray]   # feature indices -> [B, L, 2], -1 outside

    @classmethod
    def build(cls, examples: pa.Table, features: EvalFeatures) -> "EvalReferences":
        """``examples``: the evaluated examples; ``features``: their windows, whose
        ``example_index`` points into ``examples``."""
        return cls(
            example_ids=examples.column("id").to_pylist(),
            contexts=ColumnStrings(examples.column("context")),
            gold_answers=[a["text"] for a in examples.column("answers").to_pylist()],
            feature_example_index=features.example_index,
            start_positions=features.start_positions,
            end_positions=features.end_positions,
            offsets=features.offsets,
        )


class EvalAccumulator:
    """Collects per-batch results in any order; :meth:`finish` decodes and scores them."""

    def __init__(self, references: EvalReferences, config: DecodeConfig) -> None:
        self.references = references
        self.config = config
        self._spans: list[FeatureSpans] = []
        self._feature_index: list[np.ndarray] = []
        self._start_argmax: list[np.ndarray] = []
        self._end_argmax: list[np.ndarray] = []

    def add(self, feature_index: np.ndarray, start_logits: np.ndarray,
            end_logits: np.ndarray) -> None:
        """One gathered batch: float32 logits ``[B, L]`` for the features ``feature_index``;
        their offsets are read now, for this batch only."""
        offsets = self.references.offsets(np.asarray(feature_index, dtype=np.int64))
        self._spans.append(feature_topk_spans(
            start_logits, end_logits, offsets, self.config.n_best_size,
            self.config.max_answer_length, spans_per_feature=1))  # answers need each feature's best
        self._feature_index.append(np.asarray(feature_index, dtype=np.int64))
        # The tutorial's token metrics: plain argmax over all positions.
        self._start_argmax.append(start_logits.argmax(axis=1))
        self._end_argmax.append(end_logits.argmax(axis=1))

    def finish(self) -> tuple[dict, dict[str, Prediction]]:
        refs = self.references
        feature_index = (np.concatenate(self._feature_index) if self._feature_index
                         else np.zeros(0, np.int64))
        if len(np.unique(feature_index)) != len(feature_index):
            raise RuntimeError("a feature was evaluated twice: duplicates from uneven batches "
                               "were not dropped")
        # Order by feature index so ties break the same way whatever the process count was.
        order = np.argsort(feature_index, kind="stable")
        spans = concat_feature_spans(self._spans)
        spans = FeatureSpans(**{name: getattr(spans, name)[order]
                                for name in spans.__dataclass_fields__})
        feature_index = feature_index[order]
        predictions = best_answers(spans, refs.feature_example_index[feature_index], refs.contexts,
                                   refs.example_ids, self.config)
        metrics = squad_scores({k: p.text for k, p in predictions.items()},
                               dict(zip(refs.example_ids, refs.gold_answers)))
        metrics.update(start_end_scores(
            np.concatenate(self._start_argmax)[order], np.concatenate(self._end_argmax)[order],
            refs.start_positions[feature_index], refs.end_positions[feature_index],
        ))
        metrics["features"] = int(len(feature_index))
        metrics["features_expected"] = int(len(refs.feature_example_index))
        return metrics, predictions
