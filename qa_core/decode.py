"""Vectorized n-best span decoding for extractive question answering.

Turning start/end logits into answer strings happens in two stages so the
evaluation loop can stream:

1. :func:`feature_topk_spans` runs on one batch of features at a time and
   keeps only a compact ``[F, n_best_size]`` summary (scores, token indices and
   character offsets of the best spans, plus the null score).  The caller
   concatenates those summaries with :func:`concat_feature_spans`; the full
   ``features x max_length`` logits never need to exist at once.
2. :func:`best_answers` reduces the summaries to one :class:`Prediction` per
   example (an example's long context may have been split into several
   overlapping windows/features).

A span (start token ``s``, end token ``e``) of a feature is a *candidate* when
``s`` is among the ``n_best_size`` highest start logits of the feature, ``e`` is
among the ``n_best_size`` highest end logits, both are context tokens (offset
``>= 0`` and a finite logit), ``e >= s`` and ``e - s + 1 <= max_answer_length``.
Its score is ``start_logit[s] + end_logit[e]`` computed in float64.

Tie-breaking (deterministic, identical in :func:`reference_decode`):

* choosing the top ``n_best_size`` start (resp. end) tokens: higher logit
  first, equal logits -> lower token index first (a stable descending sort);
* choosing the best span: higher score first, then lower feature index, then
  lower start token, then lower end token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Slot value for "no span here" in the integer arrays of FeatureSpans.
INVALID_INDEX = -1

# Features processed per vectorized step inside feature_topk_spans: bounds the
# [chunk, n, n] candidate grid (~13 MB of float64 for n=20) regardless of how
# many features the caller passes.
_DEFAULT_CHUNK_SIZE = 4096


@dataclass(frozen=True)
class DecodeConfig:
    """How logits are turned into answers."""

    n_best_size: int = 20
    max_answer_length: int = 30  # in tokens, inclusive span length
    null_score_diff_threshold: float = 0.0
    # SQuAD v2 style: answer "" when null_score - best_span_score > threshold.
    allow_no_answer: bool = False


@dataclass(frozen=True)
class FeatureSpans:
    """Top-K candidate spans per feature, best first (K = n_best_size).

    Slots without a valid candidate have score ``-inf`` and ``-1`` in every
    integer field.  ``end_char`` is exclusive.
    """

    scores: np.ndarray  # float64 [F, K]
    start_token: np.ndarray  # int32 [F, K]
    end_token: np.ndarray  # int32 [F, K]
    start_char: np.ndarray  # int32 [F, K]
    end_char: np.ndarray  # int32 [F, K]
    null_score: np.ndarray  # float64 [F], start_logits[:, 0] + end_logits[:, 0]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_best_size(self) -> int:
        return int(self.scores.shape[1])

    @classmethod
    def concat(cls, parts: Sequence["FeatureSpans"]) -> "FeatureSpans":
        return concat_feature_spans(parts)


@dataclass(frozen=True)
class Prediction:
    """Decoded answer of one example; ``end_char`` is exclusive."""

    text: str
    score: float
    start_char: int
    end_char: int
    null_score: float


def concat_feature_spans(parts: Sequence[FeatureSpans]) -> FeatureSpans:
    """Stack per-batch FeatureSpans along the feature axis (order preserved)."""
    if not parts:
        raise ValueError("concat_feature_spans needs at least one FeatureSpans")
    widths = {part.n_best_size for part in parts}
    if len(widths) != 1:
        raise ValueError(f"cannot concatenate FeatureSpans with different n_best_size: {widths}")
    return FeatureSpans(
        scores=np.concatenate([p.scores for p in parts]),
        start_token=np.concatenate([p.start_token for p in parts]),
        end_token=np.concatenate([p.end_token for p in parts]),
        start_char=np.concatenate([p.start_char for p in parts]),
        end_char=np.concatenate([p.end_char for p in parts]),
        null_score=np.concatenate([p.null_score for p in parts]),
    )


# --------------------------------------------------------------------------- #
# Shared input handling (used by both the vectorized and the reference path)
# --------------------------------------------------------------------------- #


def _as_logits(logits: np.ndarray) -> np.ndarray:
    """2-D float array with NaN turned into -inf so NaN can never win a comparison."""
    array = np.asarray(logits)
    if array.ndim != 2:
        raise ValueError(f"logits must be [features, length], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if np.isnan(array).any():
        array = np.where(np.isnan(array), -np.inf, array)
    return array


def _aligned_offsets(offsets: np.ndarray, length: int) -> np.ndarray:
    """Offsets cut or padded (with -1 = not context) to the logits' length.

    Logits gathered batch by batch may be padded to a different length than the
    stored offsets; positions beyond the offsets can only be padding.
    """
    offsets = np.asarray(offsets)
    if offsets.ndim != 3 or offsets.shape[2] != 2:
        raise ValueError(f"offsets must be [features, length, 2], got shape {offsets.shape}")
    if offsets.shape[1] >= length:
        return offsets[:, :length]
    pad = np.full((offsets.shape[0], length - offsets.shape[1], 2), -1, dtype=offsets.dtype)
    return np.concatenate([offsets, pad], axis=1)


def _context_mask(offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray):
    """Token may start/end an answer: it is context and its logit is a real number."""
    is_context = (offsets[..., 0] >= 0) & (offsets[..., 1] >= 0)
    return is_context & np.isfinite(start_logits), is_context & np.isfinite(end_logits)


def _null_scores(start_logits: np.ndarray, end_logits: np.ndarray) -> np.ndarray:
    # CLS sits at index 0; the score of predicting "no answer".
    return start_logits[:, 0].astype(np.float64) + end_logits[:, 0].astype(np.float64)


def _check_inputs(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray) -> None:
    if start_logits.shape != end_logits.shape:
        raise ValueError(
            f"start/end logits shapes differ: {start_logits.shape} vs {end_logits.shape}"
        )
    if offsets.shape[0] != start_logits.shape[0]:
        raise ValueError(
            f"offsets has {offsets.shape[0]} features but logits have {start_logits.shape[0]}"
        )
    if start_logits.shape[1] == 0:
        raise ValueError("logits have zero length")


# --------------------------------------------------------------------------- #
# Vectorized path
# --------------------------------------------------------------------------- #


def _gather_rows(array: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """array[i, columns[i, j]] for a 2-D or 3-D array, via one flat take.

    Cheaper than np.take_along_axis for the small [F, k] index arrays used here.
    """
    num_rows, length = array.shape[:2]
    flat = (np.arange(num_rows)[:, None] * length + columns).reshape(-1)
    trailing = array.shape[2:]
    return array.reshape(num_rows * length, *trailing)[flat].reshape(*columns.shape, *trailing)


def _lowest_index_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Exact rule for rows whose k-th largest value is tied: keep the lower indices."""
    length = values.shape[1]
    kth = np.partition(values, length - k, axis=1)[:, length - k, None]
    strictly_greater = values > kth
    equal = values == kth
    ties_needed = k - strictly_greater.sum(axis=1, keepdims=True)
    take_tie = equal & (np.cumsum(equal, axis=1) <= ties_needed)
    # Exactly k True per row, so nonzero's row-major column indices reshape cleanly.
    _, columns = np.nonzero(strictly_greater | take_tie)
    return columns.reshape(len(values), k)


def _top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values per row, in ascending index order.

    Same set as a stable descending argsort cut at k (a tie at the cut keeps
    the lower indices), at argpartition cost.  The tie rule is only enforced
    where the cut value is finite: -inf entries are never valid candidates, so
    which of them fill the remaining slots cannot change any result.
    Ascending index order lets callers break score ties by position.
    """
    # Partitioning the negated values around k-1 is measurably faster than
    # partitioning around length-k when most entries are -inf (the span grid).
    top = np.argpartition(-values, k - 1, axis=1)[:, :k]
    kth = _gather_rows(values, top).min(axis=1)
    tie_at_cut = np.isfinite(kth) & ((values >= kth[:, None]).sum(axis=1) > k)
    if tie_at_cut.any():  # rare with real logits; exact rule on those rows only
        top[tie_at_cut] = _lowest_index_top_k(values[tie_at_cut], k)
    return np.sort(top, axis=1)


def _topk_spans_chunk(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> FeatureSpans:
    num_features, length = start_logits.shape
    n = min(n_best_size, length)

    start_idx = _top_k_indices(start_logits, n)  # [F, n] ascending token index
    end_idx = _top_k_indices(end_logits, n)
    start_val = _gather_rows(start_logits, start_idx).astype(np.float64)
    end_val = _gather_rows(end_logits, end_idx).astype(np.float64)
    # Context checks only at the 2n selected tokens, not over the whole row.
    start_offsets = _gather_rows(offsets, start_idx)  # [F, n, 2]
    end_offsets = _gather_rows(offsets, end_idx)
    start_ok = (start_offsets >= 0).all(axis=2) & np.isfinite(start_val)
    end_ok = (end_offsets >= 0).all(axis=2) & np.isfinite(end_val)

    # Candidate grid [F, n_start, n_end] built in one broadcast.
    span_len = end_idx[:, None, :] - start_idx[:, :, None] + 1
    valid = (
        start_ok[:, :, None]
        & end_ok[:, None, :]
        & (span_len >= 1)
        & (span_len <= max_answer_length)
    )
    grid_scores = np.where(valid, start_val[:, :, None] + end_val[:, None, :], -np.inf)
    grid_scores = grid_scores.reshape(num_features, n * n)

    # Flat grid position a*n + b is in (start token, end token) lexicographic
    # order because both index vectors are ascending; _top_k_indices returns
    # positions ascending, so a stable sort on -score breaks equal scores by
    # lower start token, then lower end token.
    keep = min(n_best_size, n * n)
    cells = _top_k_indices(grid_scores, keep)
    cell_scores = _gather_rows(grid_scores, cells)
    by_score = np.argsort(-cell_scores, axis=1, kind="stable")
    cells = _gather_rows(cells, by_score)
    scores = _gather_rows(cell_scores, by_score)
    start_slot, end_slot = np.divmod(cells, n)
    start_token = _gather_rows(start_idx, start_slot)
    end_token = _gather_rows(end_idx, end_slot)
    start_char = _gather_rows(start_offsets[..., 0], start_slot)
    end_char = _gather_rows(end_offsets[..., 1], end_slot)

    # Fixed width K = n_best_size (padding with invalid slots) so batches with
    # different sequence lengths still concatenate.
    invalid = ~np.isfinite(scores)
    pad = n_best_size - keep

    def finish(values: np.ndarray, fill, dtype) -> np.ndarray:
        values = np.where(invalid, fill, values).astype(dtype, copy=False)
        if pad:
            values = np.pad(values, ((0, 0), (0, pad)), constant_values=fill)
        return values

    return FeatureSpans(
        scores=finish(scores, -np.inf, np.float64),
        start_token=finish(start_token, INVALID_INDEX, np.int32),
        end_token=finish(end_token, INVALID_INDEX, np.int32),
        start_char=finish(start_char, INVALID_INDEX, np.int32),
        end_char=finish(end_char, INVALID_INDEX, np.int32),
        null_score=_null_scores(start_logits, end_logits),
    )


def feature_topk_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    chunk_size: int = _DEFAULT_CHUNK_SIZE,
) -> FeatureSpans:
    """Best ``n_best_size`` candidate spans of each feature of one batch.

    Args:
        start_logits, end_logits: ``[F, L]`` float logits; padded positions may
            hold a large negative value or ``-inf`` (they are rejected through
            their ``-1`` offsets or their non-finite logit).
        offsets: ``[F, L', 2]`` int (start_char, end_char) of each token in the
            example's context, ``-1`` for non-context tokens.  ``L'`` may
            differ from ``L``: it is cut or padded with ``-1``.
        n_best_size: number of top start/end tokens tried and of spans kept.
        max_answer_length: longest allowed span, in tokens.
        chunk_size: features per vectorized step (bounds temporary memory).
    """
    if n_best_size < 1:
        raise ValueError("n_best_size must be >= 1")
    start_logits = _as_logits(start_logits)
    end_logits = _as_logits(end_logits)
    offsets = _aligned_offsets(offsets, start_logits.shape[1])
    _check_inputs(start_logits, end_logits, offsets)

    parts = [
        _topk_spans_chunk(
            start_logits[begin : begin + chunk_size],
            end_logits[begin : begin + chunk_size],
            offsets[begin : begin + chunk_size],
            n_best_size,
            max_answer_length,
        )
        for begin in range(0, max(len(start_logits), 1), chunk_size)
    ]
    return concat_feature_spans(parts)


def _best_feature_per_example(
    scores: np.ndarray, feature_example_index: np.ndarray, num_examples: int
) -> np.ndarray:
    """Index of the winning feature of each example (-1 when it has none).

    One lexsort orders features by example, then score descending, then
    feature index ascending; the first feature of each example group wins.
    """
    winner = np.full(num_examples, INVALID_INDEX, dtype=np.int64)
    if len(scores) == 0:
        return winner
    feature_ids = np.arange(len(scores))
    order = np.lexsort((feature_ids, -scores, feature_example_index))
    sorted_examples = feature_example_index[order]
    is_group_start = np.r_[True, sorted_examples[1:] != sorted_examples[:-1]]
    winner[sorted_examples[is_group_start]] = order[is_group_start]
    return winner


def _min_null_per_example(
    null_score: np.ndarray, feature_example_index: np.ndarray, num_examples: int
) -> np.ndarray:
    # HF utils_qa convention: an example's null score is the minimum over its features.
    minimum = np.full(num_examples, np.inf)
    np.minimum.at(minimum, feature_example_index, null_score)
    return minimum


def _validated_example_index(
    feature_example_index: np.ndarray, num_features: int, num_examples: int
) -> np.ndarray:
    index = np.asarray(feature_example_index, dtype=np.int64).reshape(-1)
    if len(index) != num_features:
        raise ValueError(
            f"feature_example_index has {len(index)} entries for {num_features} features"
        )
    if len(index) and (index.min() < 0 or index.max() >= num_examples):
        raise ValueError("feature_example_index points outside the examples")
    return index


def _build_predictions(
    best_score: np.ndarray,
    best_start_char: np.ndarray,
    best_end_char: np.ndarray,
    null_score: np.ndarray,
    has_features: np.ndarray,
    contexts: Sequence[str],
    example_ids: Sequence[str],
    config: DecodeConfig,
) -> dict[str, Prediction]:
    """The only per-example Python step: slicing strings and applying the null rule."""
    predictions: dict[str, Prediction] = {}
    for i, example_id in enumerate(example_ids):
        if not has_features[i]:
            # Nothing was scored for this example: no span, no null score.
            predictions[example_id] = Prediction("", float("-inf"), -1, -1, float("-inf"))
            continue
        score, null = float(best_score[i]), float(null_score[i])
        if config.allow_no_answer and null - score > config.null_score_diff_threshold:
            predictions[example_id] = Prediction("", null, -1, -1, null)
        elif score == float("-inf"):
            predictions[example_id] = Prediction("", score, -1, -1, null)
        else:
            start, end = int(best_start_char[i]), int(best_end_char[i])
            predictions[example_id] = Prediction(contexts[i][start:end], score, start, end, null)
    return predictions


def best_answers(
    feature_spans: FeatureSpans,
    feature_example_index: np.ndarray,
    contexts: Sequence[str],
    example_ids: Sequence[str],
    config: DecodeConfig = DecodeConfig(),
) -> dict[str, Prediction]:
    """Best answer per example from the compact spans of all its features.

    Ties between features go to the lower feature index (within a feature the
    spans are already ordered by score, start token, end token).  An example
    without features gets ``Prediction("", -inf, -1, -1, -inf)``.
    """
    if len(contexts) != len(example_ids):
        raise ValueError("contexts and example_ids must have the same length")
    num_examples = len(example_ids)
    index = _validated_example_index(feature_example_index, len(feature_spans), num_examples)

    # Slot 0 is each feature's best span; only features compete from here on.
    winner = _best_feature_per_example(feature_spans.scores[:, 0], index, num_examples)
    has_features = winner >= 0
    safe_winner = np.where(has_features, winner, 0)

    def pick(values: np.ndarray, fill) -> np.ndarray:
        if len(values) == 0:
            return np.full(num_examples, fill)
        return np.where(has_features, values[safe_winner, 0], fill)

    return _build_predictions(
        best_score=pick(feature_spans.scores, -np.inf),
        best_start_char=pick(feature_spans.start_char, INVALID_INDEX),
        best_end_char=pick(feature_spans.end_char, INVALID_INDEX),
        null_score=_min_null_per_example(feature_spans.null_score, index, num_examples),
        has_features=has_features,
        contexts=contexts,
        example_ids=example_ids,
        config=config,
    )


def decode(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    feature_example_index: np.ndarray,
    contexts: Sequence[str],
    example_ids: Sequence[str],
    config: DecodeConfig = DecodeConfig(),
) -> dict[str, Prediction]:
    """Non-streaming convenience: :func:`feature_topk_spans` then :func:`best_answers`."""
    spans = feature_topk_spans(
        start_logits, end_logits, offsets, config.n_best_size, config.max_answer_length
    )
    return best_answers(spans, feature_example_index, contexts, example_ids, config)


# --------------------------------------------------------------------------- #
# Reference path: the classic per-feature loop, kept for tests and benchmarks
# --------------------------------------------------------------------------- #


def reference_decode(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    feature_example_index: np.ndarray,
    contexts: Sequence[str],
    example_ids: Sequence[str],
    config: DecodeConfig = DecodeConfig(),
) -> dict[str, Prediction]:
    """Straightforward decoding with Python loops; same contract as :func:`decode`.

    For each feature: top-n start and end tokens by a stable descending
    argsort, then every (start, end) pair is checked and scored.  A candidate
    replaces the current best only when its score is strictly higher, and the
    loops visit features, start tokens and end tokens in ascending order, which
    is exactly the documented tie-break.
    """
    start_logits = _as_logits(start_logits)
    end_logits = _as_logits(end_logits)
    offsets = _aligned_offsets(offsets, start_logits.shape[1])
    _check_inputs(start_logits, end_logits, offsets)
    num_examples = len(example_ids)
    index = _validated_example_index(feature_example_index, len(start_logits), num_examples)
    can_start, can_end = _context_mask(offsets, start_logits, end_logits)
    null_per_feature = _null_scores(start_logits, end_logits)

    neg_inf = float("-inf")
    best_score = np.full(num_examples, neg_inf)
    best_start_char = np.full(num_examples, INVALID_INDEX, dtype=np.int64)
    best_end_char = np.full(num_examples, INVALID_INDEX, dtype=np.int64)
    null_score = np.full(num_examples, np.inf)
    has_features = np.zeros(num_examples, dtype=bool)

    for feature in range(len(start_logits)):
        example = int(index[feature])
        has_features[example] = True
        null_score[example] = min(null_score[example], null_per_feature[feature])
        starts = sorted(np.argsort(-start_logits[feature], kind="stable")[: config.n_best_size])
        ends = sorted(np.argsort(-end_logits[feature], kind="stable")[: config.n_best_size])
        for s in starts:
            if not can_start[feature, s]:
                continue
            for e in ends:
                if not can_end[feature, e] or e < s or e - s + 1 > config.max_answer_length:
                    continue
                score = float(start_logits[feature, s]) + float(end_logits[feature, e])
                if score > best_score[example]:
                    best_score[example] = score
                    best_start_char[example] = offsets[feature, s, 0]
                    best_end_char[example] = offsets[feature, e, 1]

    return _build_predictions(
        best_score,
        best_start_char,
        best_end_char,
        null_score,
        has_features,
        contexts,
        example_ids,
        config,
    )
