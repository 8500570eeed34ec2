"""Vectorized n-best span decoding for extractive question answering.

Turning start/end logits into answer strings happens in two stages so the
evaluation loop can stream:

1. :func:`feature_topk_spans` runs on one batch of features at a time and
   keeps only a compact ``[F, K]`` summary (scores, token indices and character
   offsets of its K best spans, plus the null score; K = 1 is all an answer
   needs, K = ``n_best_size`` keeps every feature's n-best list).  The caller
   concatenates those summaries with :func:`concat_feature_spans`; the full
   ``features x max_length`` logits never need to exist at once.
2. :func:`best_answers` reduces the summaries to one :class:`Prediction` per
   example (an example's long context may have been split into several
   overlapping windows/features): :func:`best_spans` finds each example's best
   non-null span and null score (arrays; TyDi's predictions read them too),
   :func:`answers_from_spans` applies the null rule and slices the texts.

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

The vectorized path is plain numpy, single-threaded by default (measured faster than
``torch.topk`` on CPU, and free of its unspecified tie order); each helper says how.
"""

from __future__ import annotations

import functools
import math
import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence

import numpy as np

# Slot value for "no span here" in the integer arrays of FeatureSpans.
INVALID_INDEX = -1

# Features processed per vectorized step inside feature_topk_spans: bounds the
# temporaries (the [chunk, n, n] candidate mask, ~0.4 MB for n=20) regardless
# of how many features the caller passes, and keeps them cache-sized (faster
# than one big step).
_DEFAULT_CHUNK_SIZE = 1024


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
    """Top-K candidate spans per feature, best first (K = ``spans_per_feature``,
    ``n_best_size`` unless asked otherwise).

    Slots without a valid candidate have score ``-inf`` and ``-1`` as characters.
    ``end_char`` is exclusive.
    """

    scores: np.ndarray  # float64 [F, K]
    start_char: np.ndarray  # int32 [F, K]
    end_char: np.ndarray  # int32 [F, K]
    null_score: np.ndarray  # float64 [F], start_logits[:, 0] + end_logits[:, 0]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def spans_per_feature(self) -> int:
        return int(self.scores.shape[1])

    def take(self, rows) -> "FeatureSpans":
        """The features ``rows`` (a slice gives views, an index array copies)."""
        return FeatureSpans(*(getattr(self, f.name)[rows] for f in fields(self)))


class Prediction(NamedTuple):
    """Decoded answer of one example; ``end_char`` is exclusive (a NamedTuple: one is built
    per example, ~2.5x cheaper than a frozen dataclass)."""

    text: str
    score: float
    start_char: int
    end_char: int
    null_score: float


def concat_feature_spans(parts: Sequence[FeatureSpans]) -> FeatureSpans:
    """Stack per-batch FeatureSpans along the feature axis (order preserved); numpy refuses
    no parts, or parts of different widths, with a ValueError."""
    return FeatureSpans(*(np.concatenate([getattr(part, f.name) for part in parts])
                          for f in fields(FeatureSpans)))


# --------------------------------------------------------------------------- #
# Shared input handling (used by both the vectorized and the reference path)
# --------------------------------------------------------------------------- #


def _nan_to_neg_inf(array: np.ndarray) -> np.ndarray:
    """NaN turned into -inf so NaN can never win a comparison."""
    # min() propagates NaN: one pass and no temporary for the common no-NaN case.
    if array.size and np.isnan(array.min()):
        array = np.where(np.isnan(array), -np.inf, array)
    return array


def _checked_inputs(start_logits: np.ndarray, end_logits: np.ndarray,
                    offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D float logits (NaN still in place) and their offsets cut or padded (with -1 = not
    context) to the logits' length: logits gathered batch by batch may be padded to another
    length than the stored offsets, and positions beyond the offsets can only be padding.
    Logits and offsets of disagreeing shapes are a ValueError."""
    start_logits, end_logits = (array if np.issubdtype(array.dtype, np.floating)
                                else array.astype(np.float64)
                                for array in map(np.asarray, (start_logits, end_logits)))
    offsets = np.asarray(offsets)
    if start_logits.shape != end_logits.shape or offsets.shape[0] != start_logits.shape[0]:
        raise ValueError(f"logits and offsets disagree: start {start_logits.shape}, end "
                         f"{end_logits.shape}, offsets {offsets.shape}")
    length = start_logits.shape[1]
    if offsets.shape[1] < length:
        pad = np.full((len(offsets), length - offsets.shape[1], 2), -1, dtype=offsets.dtype)
        offsets = np.concatenate([offsets, pad], axis=1)
    return start_logits, end_logits, offsets[:, :length]


# --------------------------------------------------------------------------- #
# Vectorized path
# --------------------------------------------------------------------------- #


@functools.cache
def _keep_freed_memory_for_reuse() -> None:
    """Once per process: allocate and free one 16 MiB block, which raises glibc's trim
    threshold (it grows with the largest block freed, below a 32 MiB cap), so the chunks'
    few-MB temporaries are reused rather than page-faulted in anew each time (27 % of the
    decoding time in a fresh process). The block's pages are never touched."""
    block = np.empty(16 << 20, dtype=np.uint8)
    del block


def _top_k_columns(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of the k largest values per row, ascending; int64 ``[F, k]``.

    Returns ``(values, columns)``: ``values`` is the input with NaN replaced by
    ``-inf`` (a copy only when a row holds NaN), so NaN can never be chosen.

    The set is that of a stable descending argsort cut at k (equal values at the cut keep
    the lower indices). The k-th largest value comes from a SIMD ``np.sort`` of each row
    (faster than ``np.partition`` on 384 float32; NaN sorts last, so it shows for free); a
    ``>=`` mask then has k entries per row, and only rows tied at the cut take the exact rule.
    """
    num_rows, length = values.shape
    if k >= length:
        values = _nan_to_neg_inf(values)
        return values, np.broadcast_to(np.arange(length), (num_rows, length)).copy()
    ordered = np.sort(values, axis=1)
    if np.isnan(ordered[:, -1]).any():
        values = _nan_to_neg_inf(values)
        ordered = np.sort(values, axis=1)
    kth = ordered[:, length - k].copy()[:, None]  # contiguous: faster to broadcast
    selected = values >= kth
    flat = np.flatnonzero(selected)
    if len(flat) != num_rows * k:  # some row has more than k: a tie at the cut
        # exactly k in those rows: the values above the cut, then the lowest-index ones at it
        tie = np.count_nonzero(selected, axis=1) > k
        above, at = values[tie] > kth[tie], values[tie] == kth[tie]
        needed = k - np.count_nonzero(above, axis=1)[:, None]
        selected[tie] = above | (at & (np.cumsum(at, axis=1) <= needed))
        flat = np.flatnonzero(selected)
    return values, (flat % length).reshape(num_rows, k)


def _narrow_width(count: np.ndarray, k: int) -> int:
    """The 95th-percentile cell count of a chunk's rows (at least k)."""
    if len(count) == 0:
        return k
    q = (len(count) - 1) * 95 // 100
    return max(int(np.partition(count, q)[q]), k)


def _best_first(packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the k largest entries per row, best first; equal
    values keep their ascending column order.  ``packed`` has at least k
    columns, rows hold -inf filler after their real entries.

    Wide rows first keep their k best columns with :func:`_top_k_columns` (a row sort costs
    ~3x less per entry than an argsort). One ascending SIMD argsort read from the back orders
    them; it orders equal values arbitrarily, so rows holding equal finite values are sorted
    again, stably.
    """
    columns = None
    if packed.shape[1] > 3 * k:
        _, columns = _top_k_columns(packed, k)
        packed = _row_take(packed, columns)
    order = np.argsort(packed, axis=1)[:, ::-1][:, : k + 1]
    ordered = _row_take(packed, order)
    equal = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] > -np.inf)
    if equal.any():
        tie = equal.any(axis=1)
        order[tie] = np.argsort(-packed[tie], axis=1, kind="stable")[:, : k + 1]
    order = order[:, :k]
    best = order if columns is None else _row_take(columns, order)
    return best, _row_take(packed, order)


def _best_cell(cell_score: np.ndarray, row: np.ndarray, first: np.ndarray,
               count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score ``[F, 1]`` and position in the flat cell list ``[F, 1]`` of each row's best cell.

    The cells are listed row by row in cell order, so segment reductions find each row's
    maximum and its first cell reaching it (the tie rule) with no packing (4-9 % faster).
    """
    num_rows, num_cells = len(count), len(cell_score)
    scores = np.full((num_rows, 1), -np.inf)
    position = np.full((num_rows, 1), num_cells)
    has_cells = count > 0
    if not has_cells.any():
        return scores, position
    scores[has_cells, 0] = np.maximum.reduceat(cell_score, first[has_cells])
    at_max = np.flatnonzero(cell_score == scores[row, 0])
    max_row = row[at_max]
    first_of_row = np.r_[True, max_row[1:] != max_row[:-1]]
    position[max_row[first_of_row], 0] = at_max[first_of_row]
    return scores, position


def _best_cells(cell_score: np.ndarray, row: np.ndarray, first: np.ndarray, count: np.ndarray,
                keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``[F, keep]`` and flat positions ``[F, keep]`` of each row's ``keep`` best cells.

    Cell counts vary a lot, so rows are packed to the chunk's 95th-percentile count (a wider
    row's extra cells land in its last column) and only the wider rows are redone at full
    width: the sorts of :func:`_best_first` do not spend their time on -inf filler.
    """
    position = np.arange(len(cell_score)) - first[row]
    narrow = _narrow_width(count, keep)
    packed = np.full((len(count), narrow), -np.inf)
    packed[row, np.minimum(position, narrow - 1)] = cell_score
    best_first, scores = _best_first(packed, keep)
    wide = np.flatnonzero(count > narrow)
    if len(wide):
        wide_count = count[wide]
        wide_row = np.repeat(np.arange(len(wide)), wide_count)
        local = np.arange(len(wide_row)) - np.repeat(np.cumsum(wide_count) - wide_count, wide_count)
        packed = np.full((len(wide), int(wide_count.max())), -np.inf)
        packed[wide_row, local] = cell_score[np.repeat(first[wide], wide_count) + local]
        best_first[wide], scores[wide] = _best_first(packed, keep)
    # Packed column -> position in the flat list (the filler points past its end).
    return scores, np.where(scores == -np.inf, len(cell_score), first[:, None] + best_first)


def _row_take(array: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``array[i, columns[i, j]]`` for a 2-D ``array``, as one flat take."""
    num_rows, length = array.shape
    return array.reshape(-1)[np.arange(num_rows)[:, None] * length + columns]


def _valid_cells(start_idx: np.ndarray, end_idx: np.ndarray, start_ok: np.ndarray,
                 end_ok: np.ndarray, length: int, max_answer_length: int) -> np.ndarray:
    """Flat positions, ascending, of the [F, n_start, n_end] grid's valid cells: start and end
    are context tokens with finite logits, 0 <= e - s < max_answer_length.

    Moving rejected starts far right and rejected ends far left makes e - s negative for them,
    so one unsigned comparison of e - s checks everything. Only the valid cells (a few dozen of
    the n*n per feature with real logits) get a score. Cell a*n + b is in (start token, end
    token) lexicographic order and np.flatnonzero lists cells row by row in ascending order."""
    signed, unsigned = (np.int16, np.uint16) if length < 2**14 else (np.int64, np.uint64)
    far = np.iinfo(signed).max // 2
    span_start = np.where(start_ok, start_idx, far).astype(signed)
    span_end = np.where(end_ok, end_idx, -far).astype(signed)
    span = span_end[:, None, :] - span_start[:, :, None]
    # no span is longer than its window: the cap keeps the rejected cells (e - s near -2 * far,
    # 32770 as uint16) out however large the limit (--max_answer_length 50000 let them in)
    return np.flatnonzero(span.view(unsigned) < min(max_answer_length, length))


def _topk_spans_chunk(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                      n_best_size: int, max_answer_length: int, out: FeatureSpans) -> None:
    """Decode one chunk of features into ``out`` (row views of the full result)."""
    num_features, length = start_logits.shape
    n = min(n_best_size, length)

    # 1. Top-n start and end tokens, ascending token index within each row.
    start_logits, start_idx = _top_k_columns(start_logits, n)
    end_logits, end_idx = _top_k_columns(end_logits, n)

    # 2. Their logits (float64, so sums match the reference bit for bit) and
    #    offsets, read only at the 2n selected tokens (one (start, end) pair
    #    per token through a void view).
    rows = np.arange(num_features)[:, None] * length
    start_flat = rows + start_idx
    end_flat = rows + end_idx
    start_val = start_logits.reshape(-1)[start_flat].astype(np.float64)
    end_val = end_logits.reshape(-1)[end_flat].astype(np.float64)
    offsets = np.ascontiguousarray(offsets)
    # int32 pairs gather as one int64 (numpy's fast path); wider ones as bytes.
    pair_type = np.int64 if offsets.itemsize == 4 else np.dtype((np.void, 2 * offsets.itemsize))
    pairs = offsets.reshape(-1, 2).view(pair_type).reshape(-1)
    start_pair = pairs.take(start_flat).view(offsets.dtype).reshape(num_features, n, 2)
    end_pair = pairs.take(end_flat).view(offsets.dtype).reshape(num_features, n, 2)
    start_begin, start_stop = start_pair[..., 0], start_pair[..., 1]
    end_begin, end_stop = end_pair[..., 0], end_pair[..., 1]
    # A start/end must be a context token with a finite logit.
    start_ok = (start_begin >= 0) & (start_stop >= 0) & np.isfinite(start_val)
    end_ok = (end_begin >= 0) & (end_stop >= 0) & np.isfinite(end_val)

    # 3. Candidate cells of the [F, n_start, n_end] grid (:func:`_valid_cells`).
    flat = _valid_cells(start_idx, end_idx, start_ok, end_ok, length, max_answer_length)
    # flat = (row * n + start slot) * n + end slot, so the cell's start logit
    # is start_val's flat // n and its end logit end_val's row * n + end slot.
    start_at = flat // n
    row = start_at // n
    cell_score = start_val.reshape(-1)[start_at] + end_val.reshape(-1)[flat - (start_at - row) * n]
    count = np.bincount(row, minlength=num_features)
    first = np.cumsum(count) - count  # position in `flat` of each row's first cell

    # 4. The best `keep` cells of each row, best first, as positions in `flat`
    #    (len(flat) where a row has fewer cells); equal scores keep cell order.
    keep = out.spans_per_feature
    if keep == 1:
        scores, position = _best_cell(cell_score, row, first, count)
    else:
        scores, position = _best_cells(cell_score, row, first, count, keep)
    out.scores[...] = scores
    invalid = scores == -np.inf
    start_slot, end_slot = np.divmod(np.append(flat, 0)[position] % (n * n), n)

    out.start_char[...] = _row_take(start_begin, start_slot)
    out.end_char[...] = _row_take(end_stop, end_slot)
    out.start_char[invalid] = out.end_char[invalid] = INVALID_INDEX
    # CLS sits at index 0; the score of predicting "no answer".
    out.null_score[...] = start_logits[:, 0].astype(np.float64) + end_logits[:, 0]


def feature_topk_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                       n_best_size: int = 20, max_answer_length: int = 30,
                       chunk_size: int = _DEFAULT_CHUNK_SIZE, num_threads: int | None = 1,
                       spans_per_feature: int | None = None) -> FeatureSpans:
    """Best candidate spans of each feature of one batch (``n_best_size`` of them by default).

    Args:
        start_logits, end_logits: ``[F, L]`` float logits; padded positions may
            hold a large negative value or ``-inf`` (they are rejected through
            their ``-1`` offsets or their non-finite logit).
        offsets: ``[F, L', 2]`` int (start_char, end_char) of each token in the
            example's context, ``-1`` for non-context tokens.  ``L'`` may
            differ from ``L``: it is cut or padded with ``-1``.
        n_best_size: number of top start/end tokens tried (and of spans kept, by default).
        max_answer_length: longest allowed span, in tokens.
        chunk_size: features per vectorized step (bounds temporary memory).
        num_threads: chunks decoded concurrently (numpy releases the GIL in
            its kernels); ``None`` = one per usable CPU core.  The result does
            not depend on it.  Default 1: evaluation batches are small, and a
            single thread keeps timings comparable with the reference.
        spans_per_feature: spans kept per feature, best first; ``None`` =
            ``n_best_size``.  An answer needs only each feature's best span
            (``best_answers`` reads slot 0), so evaluation and :func:`decode`
            keep 1, which also skips ordering the runners-up.
    """
    if n_best_size < 1:
        raise ValueError("n_best_size must be >= 1")
    keep = n_best_size if spans_per_feature is None else spans_per_feature
    if keep < 1:
        raise ValueError("spans_per_feature must be >= 1")
    # A feature has at most n_best_size starts x n_best_size ends to offer: more slots would
    # stay empty (qa-answer --top_k 10**12 tried to allocate 7 TiB for them).
    keep = min(keep, n_best_size * n_best_size)
    # NaN is handled per chunk, where the top-k row sort reveals it for free.
    start_logits, end_logits, offsets = _checked_inputs(start_logits, end_logits, offsets)
    _keep_freed_memory_for_reuse()

    # Chunks write straight into their rows of the result (no concatenation).
    num_features = len(start_logits)
    result = FeatureSpans(scores=np.empty((num_features, keep)),
                          start_char=np.empty((num_features, keep), dtype=np.int32),
                          end_char=np.empty((num_features, keep), dtype=np.int32),
                          null_score=np.empty(num_features))

    def run(begin: int) -> None:
        rows = slice(begin, begin + chunk_size)
        _topk_spans_chunk(start_logits[rows], end_logits[rows], offsets[rows], n_best_size,
                          max_answer_length, out=result.take(rows))

    begins = range(0, max(len(start_logits), 1), chunk_size)
    if num_threads is None:
        from qa_core.hardware import usable_cores

        num_threads = usable_cores()
    if num_threads > 1 and len(begins) > 1:
        with ThreadPoolExecutor(min(num_threads, len(begins))) as pool:
            list(pool.map(run, begins))  # list() waits and re-raises errors
    else:
        for begin in begins:
            run(begin)
    return result


def _min_null_per_example(
    null_score: np.ndarray, feature_example_index: np.ndarray, num_examples: int
) -> np.ndarray:
    # HF utils_qa convention: an example's null score is the minimum over its features.
    minimum = np.full(num_examples, np.inf)
    np.minimum.at(minimum, feature_example_index, null_score)
    return minimum


def _validated_example_index(feature_example_index: np.ndarray, num_examples: int) -> np.ndarray:
    index = np.asarray(feature_example_index, dtype=np.int64).reshape(-1)
    if len(index) and (index.min() < 0 or index.max() >= num_examples):
        raise ValueError("feature_example_index points outside the examples")
    return index


class ExampleSpans(NamedTuple):
    """Each example's best span over all its windows, as arrays over the examples.

    The span is never the null answer (no-answer is not a candidate span); whether null wins
    is :func:`best_answers`' rule. Character offsets into the example's context, end exclusive.
    """

    score: np.ndarray         # float64, -inf where no window offered a span
    start_char: np.ndarray    # int, -1 where no span
    end_char: np.ndarray      # int, -1 where no span
    null_score: np.ndarray    # float64, the minimum CLS score over the example's windows
    has_features: np.ndarray  # bool, False for an example without windows


def best_spans(
    feature_spans: FeatureSpans,
    feature_example_index: np.ndarray,
    num_examples: int,
) -> ExampleSpans:
    """Best non-null span per example from the compact spans of all its features.

    Ties between features go to the lower feature index (within a feature the
    spans are already ordered by score, start token, end token).
    """
    index = _validated_example_index(feature_example_index, num_examples)
    # Slot 0 is each feature's best span; only features compete from here on. One lexsort
    # orders them by example, then score descending, then feature index; the first of each
    # example wins (-1: an example without features).
    scores = feature_spans.scores[:, 0]
    order = np.lexsort((np.arange(len(scores)), -scores, index))
    grouped = index[order]
    first = np.diff(grouped, prepend=-1) != 0
    winner = np.full(num_examples, INVALID_INDEX, dtype=np.int64)
    winner[grouped[first]] = order[first]

    def pick(values: np.ndarray, fill) -> np.ndarray:
        return np.append(values[:, 0], fill)[winner]  # winner -1 (no feature) picks the fill

    return ExampleSpans(
        score=pick(feature_spans.scores, -np.inf),
        start_char=pick(feature_spans.start_char, INVALID_INDEX),
        end_char=pick(feature_spans.end_char, INVALID_INDEX),
        null_score=_min_null_per_example(feature_spans.null_score, index, num_examples),
        has_features=winner >= 0,
    )


def answers_from_spans(spans: ExampleSpans, contexts: Sequence[str], example_ids: Sequence[str],
                       config: DecodeConfig = DecodeConfig()) -> dict[str, Prediction]:
    """Each example's answer from its best span and null score (:func:`best_spans`): the null
    rule in numpy, then the only per-example Python step, slicing strings."""
    has_features = spans.has_features
    # Nothing scored for an example (no features): no span, no null score.
    score = np.where(has_features, spans.score, -np.inf)
    null = np.where(has_features, spans.null_score, -np.inf)
    with np.errstate(invalid="ignore"):  # -inf - -inf is NaN, and NaN > x is False
        margin = null - score
    answers_null = (
        has_features & config.allow_no_answer & (margin > config.null_score_diff_threshold)
    )
    score = np.where(answers_null, null, score)
    no_span = answers_null | (score == -np.inf)
    start = np.where(no_span, -1, spans.start_char).tolist()
    end = np.where(no_span, -1, spans.end_char).tolist()
    # context[-1:-1] == "": spanless examples need no branch.  Python lists
    # and map: indexing numpy arrays element by element is ~10x slower.
    texts = map(operator.getitem, contexts, map(slice, start, end))
    rows = zip(texts, score.tolist(), start, end, null.tolist())
    return dict(zip(example_ids, map(Prediction._make, rows)))


def best_answers(feature_spans: FeatureSpans, feature_example_index: np.ndarray,
                 contexts: Sequence[str], example_ids: Sequence[str],
                 config: DecodeConfig = DecodeConfig()) -> dict[str, Prediction]:
    """Best answer per example from the compact spans of all its features
    (:func:`best_spans`, then :func:`answers_from_spans`).

    An example without features gets ``Prediction("", -inf, -1, -1, -inf)``.
    """
    spans = best_spans(feature_spans, feature_example_index, len(example_ids))
    return answers_from_spans(spans, contexts, example_ids, config)


def top_answers(
    feature_spans: FeatureSpans,
    feature_example_index: np.ndarray,
    contexts: Sequence[str],
    example_ids: Sequence[str],
    k: int,
) -> dict[str, list[Prediction]]:
    """The ``k`` best distinct spans of each example, best first, from the spans its features
    kept (keep at least ``k`` per feature to see ``k``): the runners-up behind
    :func:`best_answers`' choice, for looking into an answer.

    A span found by two overlapping windows (the same characters) is listed once, at its
    higher score; ties are broken as :func:`best_answers` breaks them (lower feature, then
    earlier span). No-answer is not a candidate here: each prediction's ``null_score`` says
    how the empty answer scored. Character offsets are in the example's context, end exclusive.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    index = _validated_example_index(feature_example_index, len(example_ids))
    null = _min_null_per_example(feature_spans.null_score, index, len(example_ids))
    features, slots = np.nonzero(feature_spans.scores > -np.inf)  # row-major: feature, then rank
    scores = feature_spans.scores[features, slots]
    order = np.lexsort((slots, features, -scores, index[features]))  # example, best, feature, rank
    answers: dict[str, list[Prediction]] = {example_id: [] for example_id in example_ids}
    seen: set[tuple[int, int, int]] = set()
    for feature, slot in zip(features[order].tolist(), slots[order].tolist()):
        example = int(index[feature])
        start = int(feature_spans.start_char[feature, slot])
        end = int(feature_spans.end_char[feature, slot])
        listed = answers[example_ids[example]]
        if len(listed) == k or (example, start, end) in seen:
            continue
        seen.add((example, start, end))
        listed.append(Prediction(contexts[example][start:end],
                                 float(feature_spans.scores[feature, slot]), start, end,
                                 float(null[example])))
    return answers


def decode(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
           feature_example_index: np.ndarray, contexts: Sequence[str], example_ids: Sequence[str],
           config: DecodeConfig = DecodeConfig()) -> dict[str, Prediction]:
    """Non-streaming convenience: :func:`feature_topk_spans` then :func:`best_answers`."""
    spans = feature_topk_spans(
        start_logits, end_logits, offsets, config.n_best_size, config.max_answer_length,
        spans_per_feature=1,
    )
    return best_answers(spans, feature_example_index, contexts, example_ids, config)


# --------------------------------------------------------------------------- #
# Reference path: the classic per-feature loop, kept for tests and benchmarks
# --------------------------------------------------------------------------- #


def _reference_candidates(start_logits: np.ndarray, end_logits: np.ndarray,
                          offsets: list[list[int]], n_best_size: int,
                          max_answer_length: int) -> list[tuple[float, int, int, int, int]]:
    """One feature's valid spans among its n-best starts x n-best ends, the classic double
    loop: (score, start token, end token, start char, end char) each."""
    candidates = []
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size].tolist()
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size].tolist()
    start_values, end_values = start_logits.tolist(), end_logits.tolist()
    for s in starts:
        for e in ends:
            if min(*offsets[s], *offsets[e]) < 0:
                continue
            if e < s or e - s + 1 > max_answer_length:
                continue
            if math.isfinite(start_values[s]) and math.isfinite(end_values[e]):
                candidates.append((start_values[s] + end_values[e], s, e, offsets[s][0],
                                   offsets[e][1]))
    return candidates


def reference_decode(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                     feature_example_index: np.ndarray, contexts: Sequence[str],
                     example_ids: Sequence[str],
                     config: DecodeConfig = DecodeConfig()) -> dict[str, Prediction]:
    """The classic n-best post-processing, one feature and one span at a time: the baseline
    the vectorized path is checked and timed against (same contract and results as
    :func:`decode`).

    Written the way ``postprocess_qa_predictions`` of the Hugging Face QA examples does it:
    per feature, the ``n_best_size`` best starts and ends from a full stable argsort (equal
    logits keep the lower token), a double Python loop over starts x ends checking each pair
    on the offset list, scores in Python floats (float64). An example's candidates are sorted
    by score, then feature, start token and end token; its null score is the minimum CLS
    score over its features.
    """
    start_logits, end_logits, offsets = _checked_inputs(start_logits, end_logits, offsets)
    start_logits, end_logits = _nan_to_neg_inf(start_logits), _nan_to_neg_inf(end_logits)
    num_examples = len(example_ids)
    index = _validated_example_index(feature_example_index, num_examples)
    nulls: list[list[float]] = [[] for _ in range(num_examples)]
    candidates: list[list[tuple]] = [[] for _ in range(num_examples)]
    for feature, example in enumerate(index.tolist()):
        nulls[example].append(float(start_logits[feature][0]) + float(end_logits[feature][0]))
        candidates[example] += [(-score, feature, *span) for score, *span in _reference_candidates(
            start_logits[feature], end_logits[feature], offsets[feature].tolist(),
            config.n_best_size, config.max_answer_length)]
    # (-score, feature, start token, end token, start char, end char): the smallest is best
    no_span = (np.inf, -1, -1, -1, INVALID_INDEX, INVALID_INDEX)
    best = np.array([min(listed, default=no_span) for listed in candidates],
                    dtype=np.float64).reshape(num_examples, 6)
    spans = ExampleSpans(score=-best[:, 0], start_char=best[:, 4].astype(np.int64),
                         end_char=best[:, 5].astype(np.int64),
                         null_score=np.array([min(listed, default=np.inf) for listed in nulls]),
                         has_features=np.array([bool(listed) for listed in nulls], dtype=bool))
    return answers_from_spans(spans, contexts, example_ids, config)
