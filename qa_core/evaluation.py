"""Streaming evaluation: per-batch logits -> compact spans -> answers -> SQuAD, start/end metrics.

The training loop feeds gathered batches to :class:`EvalAccumulator`; it keeps only each
feature's top spans and argmax positions (a few numbers per feature), never a
features x max_length logits array. A batch's token offsets are read when the batch arrives
(from the memory-mapped ``offset_mapping`` column), so no [features, max_length, 2] offsets
array is held for the split either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from qa_core.decode import (
    DecodeConfig,
    FeatureSpans,
    Prediction,
    answers_from_spans,
    best_answers,
    best_spans,
    concat_feature_spans,
    feature_topk_spans,
    top_answers,
)
from qa_core.metrics import squad_scores, start_end_scores
from qa_core.tydi_eval import TydiPrediction
from qa_core.tydi_predict import TydiReferences, tydi_metrics

if TYPE_CHECKING:
    from qa_core.batching import FeatureRows

# What the model reads from a batch (labels are left out at evaluation).
EVAL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ColumnStrings(Sequence[str]):
    """A string column of an Arrow table as a read-only sequence, converted chunk by chunk when
    iterated (the decoder walks the contexts once; no list of every context is kept)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, index: int) -> str:
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
    tydi: TydiReferences | None = None    # TyDi examples' gold: predictions in TyDi's format

    @classmethod
    def build(cls, examples: pa.Table, features: FeatureRows) -> "EvalReferences":
        """``examples``: the evaluated examples; ``features``: their windows, whose
        ``example_index`` points into ``examples``."""
        return cls(example_ids=examples.column("id").to_pylist(),
                   contexts=ColumnStrings(examples.column("context")),
                   gold_answers=[a["text"] for a in examples.column("answers").to_pylist()],
                   feature_example_index=features.example_index,
                   start_positions=features.start_positions, end_positions=features.end_positions,
                   offsets=features.offsets, tydi=TydiReferences.from_examples(examples))


class EvalResult(NamedTuple):
    """One evaluation: metrics, each example's answer, and (TyDi data) TyDi-format predictions
    of the TyDi examples, in example order (None for other data)."""

    metrics: dict
    predictions: dict[str, Prediction]
    tydi_predictions: list[TydiPrediction] | None


class EvalAccumulator:
    """Collects per-batch results in any order; :meth:`finish` decodes and scores them."""

    def __init__(self, references: EvalReferences, config: DecodeConfig,
                 spans_per_feature: int = 1) -> None:
        """``spans_per_feature``: spans kept per window; answers need only the best (1), a
        list of runners-up (:meth:`answers`) needs as many as it lists."""
        self.references = references
        self.config = config
        self.spans_per_feature = spans_per_feature
        self._spans: list[FeatureSpans] = []
        self._feature_index: list[np.ndarray] = []
        self._start_argmax: list[np.ndarray] = []
        self._end_argmax: list[np.ndarray] = []
        self.nonfinite_features = 0  # windows whose logits hold NaN or inf (an unusable model)

    def add(self, feature_index: np.ndarray, start_logits: np.ndarray,
            end_logits: np.ndarray) -> None:
        """One gathered batch: float32 logits ``[B, L]`` for the features ``feature_index``;
        their offsets are read now, for this batch only."""
        offsets = self.references.offsets(np.asarray(feature_index, dtype=np.int64))
        finite = np.isfinite(start_logits).all(axis=1) & np.isfinite(end_logits).all(axis=1)
        self.nonfinite_features += int((~finite).sum())
        self._spans.append(feature_topk_spans(
            start_logits, end_logits, offsets, self.config.n_best_size,
            self.config.max_answer_length, spans_per_feature=self.spans_per_feature))
        self._feature_index.append(np.asarray(feature_index, dtype=np.int64))
        # The tutorial's token metrics: plain argmax over all positions.
        self._start_argmax.append(start_logits.argmax(axis=1))
        self._end_argmax.append(end_logits.argmax(axis=1))

    def _ordered(self) -> tuple[np.ndarray, np.ndarray, FeatureSpans]:
        """(feature indices sorted, the order that sorts them, the windows' spans in that
        order): sorted by feature index, so ties break the same way whatever the process
        count was."""
        feature_index = np.concatenate(self._feature_index)
        if len(np.unique(feature_index)) != len(feature_index):
            raise RuntimeError("a feature was evaluated twice: duplicates from uneven batches "
                               "were not dropped")
        order = np.argsort(feature_index, kind="stable")
        return feature_index[order], order, concat_feature_spans(self._spans).take(order)

    def answers(self, k: int = 1) -> tuple[dict[str, Prediction], dict[str, list[Prediction]]]:
        """Each example's answer, from the best span of each of its windows, and with ``k`` > 1
        its ``k`` best distinct spans, best first (:func:`top_answers`; else {})."""
        feature_index, _, spans = self._ordered()
        refs = self.references
        example_index = refs.feature_example_index[feature_index]
        best = best_answers(spans, example_index, refs.contexts, refs.example_ids, self.config)
        return best, (top_answers(spans, example_index, refs.contexts, refs.example_ids, k)
                      if k > 1 else {})

    def finish(self) -> EvalResult:
        """Predictions and metrics (SQuAD EM/F1, the tutorial's start/end token F1; on TyDi
        data also TyDi's passage and minimal answer F1, :mod:`qa_core.tydi_predict`)."""
        refs = self.references
        feature_index, order, spans = self._ordered()
        best = best_spans(spans, refs.feature_example_index[feature_index], len(refs.example_ids))
        predictions = answers_from_spans(best, refs.contexts, refs.example_ids, self.config)
        metrics = squad_scores({k: p.text for k, p in predictions.items()},
                               dict(zip(refs.example_ids, refs.gold_answers)))
        metrics.update(start_end_scores(
            np.concatenate(self._start_argmax)[order], np.concatenate(self._end_argmax)[order],
            refs.start_positions[feature_index], refs.end_positions[feature_index]))
        metrics["features"] = int(len(feature_index))
        metrics["features_expected"] = int(len(refs.feature_example_index))
        metrics["nonfinite_features"] = self.nonfinite_features
        tydi_predictions = None
        if refs.tydi is not None:  # the best non-null span, whatever the null rule chose
            tydi_predictions = refs.tydi.predictions(best, refs.contexts)
            metrics.update(tydi_metrics(refs.tydi, tydi_predictions))
        return EvalResult(metrics, predictions, tydi_predictions)


def accumulate_logits(model, batches, accumulator: EvalAccumulator, accelerator=None) -> None:
    """Run ``model`` over ``batches`` and feed each batch's float32 logits to ``accumulator``.

    With an ``accelerator`` the logits of every process are gathered first (windows are padded
    per batch and per process, so widths are equalised; even-out repeats are dropped). Without
    one (``qa-answer``) the batches go straight in. Evaluation and inference share this path.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for batch in batches:
        inputs = {k: batch[k].to(device) for k in EVAL_INPUTS if k in batch}
        with torch.no_grad():
            outputs = model(**inputs)
        start, end = outputs.start_logits.float(), outputs.end_logits.float()
        index = batch["feature_index"]
        if accelerator is not None:
            start = accelerator.pad_across_processes(start, dim=1, pad_index=-1e4)
            end = accelerator.pad_across_processes(end, dim=1, pad_index=-1e4)
            start, end, index = accelerator.gather_for_metrics((start, end, index))
        accumulator.add(index.cpu().numpy(), start.cpu().numpy(), end.cpu().numpy())
    model.train(was_training)


@dataclass
class Evaluator:
    """Evaluation of a prepared model on the prepared eval loader, on every process."""

    accelerator: Any
    loader: Any
    references: EvalReferences
    decode_config: DecodeConfig
    data_key: str = ""    # which questions it scores (cache key and --max_eval_examples)

    def evaluate(self, model) -> EvalResult:
        """Metrics and predictions. The training's random state is left as it was: iterating a
        DataLoader draws its base seed from torch's global generator, which would otherwise
        change the later dropout masks, so that ``--eval_strategy`` changed the trained weights."""
        accumulator = EvalAccumulator(self.references, self.decode_config)
        with torch.random.fork_rng(devices=[]):
            batches = tqdm(self.loader, desc="eval", leave=False,
                           disable=not self.accelerator.is_local_main_process)
            accumulate_logits(model, batches, accumulator, self.accelerator)
        return accumulator.finish()
