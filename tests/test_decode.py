"""Tests for qa_core.decode: hand-built cases plus vectorized == reference."""

from __future__ import annotations

import numpy as np
import pytest

from qa_core.decode import (
    DecodeConfig,
    FeatureSpans,
    Prediction,
    best_answers,
    concat_feature_spans,
    decode,
    feature_topk_spans,
    reference_decode,
    top_answers,
)

NEG = -1e4  # padding / "never" logit value


def word_offsets(context: str) -> list[tuple[int, int]]:
    """(start, end) char offsets of the whitespace-separated words of context."""
    offsets, position = [], 0
    for word in context.split(" "):
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return offsets


def make_feature(
    context_offsets: list[tuple[int, int]], question_tokens: int = 2, length: int = 16
) -> np.ndarray:
    """Offsets of one feature: [CLS], question tokens, context tokens, then padding."""
    offsets = np.full((length, 2), -1, dtype=np.int64)
    first = 1 + question_tokens
    offsets[first : first + len(context_offsets)] = context_offsets
    return offsets


def logits_with(length: int, peaks: dict[int, float], base: float = 0.0) -> np.ndarray:
    row = np.full(length, base, dtype=np.float32)
    for index, value in peaks.items():
        row[index] = value
    return row


def run_both(start, end, offsets, example_index, contexts, ids, config=DecodeConfig()):
    """Decode with both paths, check they agree, return the vectorized result."""
    args = (np.asarray(start), np.asarray(end), np.asarray(offsets), np.asarray(example_index))
    vectorized = decode(*args, contexts, ids, config)
    reference = reference_decode(*args, contexts, ids, config)
    assert vectorized == reference
    return vectorized


CONTEXT = "alpha beta gamma delta epsilon zeta"
WORDS = word_offsets(CONTEXT)
L = 16
FIRST_CONTEXT_TOKEN = 3  # [CLS] + 2 question tokens


def token(word_number: int) -> int:
    return FIRST_CONTEXT_TOKEN + word_number


def test_picks_highest_scoring_span_and_slices_context():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(1): 5.0, token(3): 1.0})
    end = logits_with(L, {token(2): 4.0, token(4): 1.0})
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert predictions["q"] == Prediction("beta gamma", 9.0, 6, 16, 0.0)


def test_answer_chosen_across_windows_of_one_example():
    # Two windows over the same context; the second one holds the better span.
    window_a = make_feature(WORDS[:3])
    window_b = np.full((L, 2), -1, dtype=np.int64)
    window_b[1 + 2 : 1 + 2 + 4] = WORDS[2:6]  # words 2..5 at tokens 3..6
    start = np.stack([logits_with(L, {token(0): 2.0}), logits_with(L, {4: 6.0})])
    end = np.stack([logits_with(L, {token(1): 2.0}), logits_with(L, {5: 6.0})])
    predictions = run_both(start, end, [window_a, window_b], [0, 0], [CONTEXT], ["q"])
    assert predictions["q"].text == "delta epsilon"
    assert predictions["q"].score == 12.0


def test_end_before_start_is_rejected():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(4): 9.0, token(1): 1.0})
    end = logits_with(L, {token(2): 9.0, token(5): 1.0})
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    # (start 4, end 2) is invalid; best valid pairs are (1, 2) = 10 and (4, 5) = 10:
    # the tie goes to the lower start token.
    assert predictions["q"].text == "beta gamma"
    assert predictions["q"].score == 10.0


def test_max_answer_length_is_respected():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(0): 9.0, token(3): 1.0})
    end = logits_with(L, {token(5): 9.0, token(3): 1.0})
    long_allowed = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert long_allowed["q"].text == CONTEXT  # 6 tokens
    config = DecodeConfig(max_answer_length=5)
    limited = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"], config)
    # Pairs from start 0 reach end 3 (4 tokens, score 10); start 3 end 3 scores 2.
    assert limited["q"].text == "alpha beta gamma delta"
    single = run_both(
        [start], [end], [offsets], [0], [CONTEXT], ["q"], DecodeConfig(max_answer_length=1)
    )
    # Single tokens: (0, 0) = 9 + 0 beats (3, 3) = 1 + 1.
    assert single["q"].text == "alpha"
    assert single["q"].score == 9.0


def test_non_context_tokens_are_never_chosen():
    offsets = make_feature(WORDS)
    # Huge logits on CLS, question and padding tokens must be ignored.
    start = logits_with(L, {0: 50.0, 1: 50.0, 2: 50.0, 14: 50.0, token(2): 1.0})
    end = logits_with(L, {0: 50.0, 2: 50.0, 15: 50.0, token(2): 1.0})
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert predictions["q"].text == "gamma"
    assert predictions["q"].null_score == 100.0


def test_padding_with_minus_inf_and_nan_is_ignored():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(1): 2.0})
    end = logits_with(L, {token(1): 2.0})
    start[10:] = -np.inf
    end[10:] = np.nan
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert predictions["q"].text == "beta"


def test_only_top_n_tokens_are_considered():
    offsets = make_feature(WORDS)
    # With n_best_size=1 only the single best start (invalid: question) is tried.
    start = logits_with(L, {1: 9.0, token(0): 5.0})
    end = logits_with(L, {token(0): 5.0})
    predictions = run_both(
        [start], [end], [offsets], [0], [CONTEXT], ["q"], DecodeConfig(n_best_size=1)
    )
    assert predictions["q"] == Prediction("", float("-inf"), -1, -1, 0.0)


def test_null_threshold_behaviour():
    offsets = make_feature(WORDS)
    start = logits_with(L, {0: 3.0, token(1): 2.0})
    end = logits_with(L, {0: 3.0, token(1): 2.0})
    args = ([start], [end], [offsets], [0], [CONTEXT], ["q"])
    # null 6 - best 4 = 2
    assert run_both(*args)["q"].text == "beta"  # allow_no_answer=False ignores null
    v2 = DecodeConfig(allow_no_answer=True)
    assert run_both(*args, v2)["q"] == Prediction("", 6.0, -1, -1, 6.0)
    at_threshold = DecodeConfig(allow_no_answer=True, null_score_diff_threshold=2.0)
    assert run_both(*args, at_threshold)["q"].text == "beta"  # needs strictly greater
    below = DecodeConfig(allow_no_answer=True, null_score_diff_threshold=1.5)
    assert run_both(*args, below)["q"].text == ""


def test_example_null_score_is_min_over_features():
    offsets = make_feature(WORDS)
    start = np.stack([logits_with(L, {0: 5.0}), logits_with(L, {0: 1.0})])
    end = np.stack([logits_with(L, {0: 5.0}), logits_with(L, {0: 1.0})])
    predictions = run_both(start, end, [offsets, offsets], [0, 0], [CONTEXT], ["q"])
    assert predictions["q"].null_score == 2.0


def test_example_without_features_gets_empty_prediction():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(0): 1.0})
    end = logits_with(L, {token(0): 1.0})
    predictions = run_both(
        [start], [end], [offsets], [1], ["unused", CONTEXT, "other"], ["a", "b", "c"]
    )
    assert predictions["b"].text == "alpha"
    for missing in ("a", "c"):
        assert predictions[missing] == Prediction("", float("-inf"), -1, -1, float("-inf"))


def test_no_features_at_all():
    empty_logits = np.zeros((0, L), dtype=np.float32)
    empty_offsets = np.zeros((0, L, 2), dtype=np.int64)
    predictions = run_both(empty_logits, empty_logits, empty_offsets, [], ["ctx"], ["q"])
    assert predictions["q"].text == ""
    assert predictions["q"].score == float("-inf")


def test_ties_prefer_lower_feature_then_start_then_end():
    offsets = make_feature(WORDS)
    flat = np.zeros(L, dtype=np.float32)
    flat[:FIRST_CONTEXT_TOKEN] = NEG
    # All context pairs score 0: lowest feature, start 0, end 0 wins.
    predictions = run_both([flat, flat], [flat, flat], [offsets, offsets], [0, 0], [CONTEXT], ["q"])
    assert predictions["q"].text == "alpha"

    # Equal best score in two features: the lower feature index wins.
    start = np.stack([logits_with(L, {token(3): 1.0}), logits_with(L, {token(1): 1.0})])
    end = np.stack([logits_with(L, {token(3): 1.0}), logits_with(L, {token(1): 1.0})])
    predictions = run_both(start, end, [offsets, offsets], [0, 0], [CONTEXT], ["q"])
    assert predictions["q"].text == "delta"

    # Same start, two ends with equal logits: the lower end wins.
    start = logits_with(L, {token(1): 3.0})
    end = logits_with(L, {token(2): 3.0, token(4): 3.0})
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert predictions["q"].text == "beta gamma"


def test_feature_spans_layout_and_concat():
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(1): 2.0, token(2): 1.0})
    end = logits_with(L, {token(2): 2.0, token(1): 1.0})
    spans = feature_topk_spans(start[None], end[None], offsets[None], n_best_size=3)
    assert spans.scores.shape == (1, 3)
    assert spans.scores[0].tolist() == [4.0, 3.0, 3.0]  # (1,2), then ties (1,1) < (2,2)
    assert spans.start_char[0].tolist() == [6, 6, 11]
    assert spans.end_char[0].tolist() == [16, 10, 16]

    # Slots without a valid span: score -inf, indices -1; width stays n_best_size.
    tiny = feature_topk_spans(start[None, :4], end[None, :4], offsets[None], n_best_size=20)
    assert tiny.scores.shape == (1, 20)
    assert np.isneginf(tiny.scores[0, 1:]).all()
    assert (tiny.start_char[0, 1:] == -1).all() and (tiny.end_char[0, 1:] == -1).all()

    both = concat_feature_spans([spans, spans])
    assert isinstance(both, FeatureSpans) and len(both) == 2
    assert both.null_score.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        concat_feature_spans([spans, tiny])


def random_features(rng: np.random.Generator, num_features: int, length: int, num_examples: int):
    """Random features with question prefix, padding, some NaN and frequent exact ties."""
    # Rounding to 0.5 makes equal logits and equal scores common, so the
    # tie-break rule is exercised heavily.
    start = np.round(rng.normal(size=(num_features, length)) * 2) / 2
    end = np.round(rng.normal(size=(num_features, length)) * 2) / 2
    start, end = start.astype(np.float32), end.astype(np.float32)
    token_chars = np.stack([np.arange(length) * 4, np.arange(length) * 4 + 3], axis=-1)
    offsets = np.repeat(token_chars[None], num_features, axis=0).astype(np.int64)
    question_length = rng.integers(1, max(2, length // 3), num_features)
    padding = rng.integers(0, length // 2 + 1, num_features)
    positions = np.arange(length)[None, :]
    offsets[positions < question_length[:, None]] = -1
    is_padding = positions >= (length - padding)[:, None]
    offsets[is_padding] = -1
    pad_value = np.where(rng.random(num_features) < 0.5, NEG, -np.inf)[:, None]
    start = np.where(is_padding, pad_value, start).astype(np.float32)
    end = np.where(is_padding, NEG, end).astype(np.float32)
    # NaN anywhere in a few rows (a diverged model): never chosen, on both paths.
    for logits in (start, end):
        nan_rows = np.flatnonzero(rng.random(num_features) < 0.05)
        logits[nan_rows, rng.integers(0, length, len(nan_rows))] = np.nan
    example_index = np.sort(rng.integers(0, num_examples, num_features))
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    contexts = ["".join(rng.choice(list(alphabet), size=4 * length)) for _ in range(num_examples)]
    example_ids = [f"ex{i}" for i in range(num_examples)]
    return start, end, offsets, example_index, contexts, example_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "length, config",
    [
        (64, DecodeConfig()),
        (40, DecodeConfig(n_best_size=5, max_answer_length=3)),
        (8, DecodeConfig(n_best_size=20, max_answer_length=4)),  # n_best > length
        (64, DecodeConfig(allow_no_answer=True, null_score_diff_threshold=0.5)),
        # "no limit": above 32770 the rejected cells' 16-bit span passed the length check, and
        # spans on question tokens (offsets -1) won: every answer "" (EM 0, rc 0)
        (64, DecodeConfig(max_answer_length=50000)),
        (64, DecodeConfig(max_answer_length=10**9)),
    ],
)
def test_vectorized_matches_reference_on_random_features(seed, length, config):
    rng = np.random.default_rng(seed)
    features = random_features(rng, num_features=250, length=length, num_examples=120)
    vectorized = decode(*features, config)
    reference = reference_decode(*features, config)
    assert vectorized.keys() == reference.keys()
    assert vectorized == reference


def test_streaming_batches_equal_one_shot():
    rng = np.random.default_rng(7)
    start, end, offsets, example_index, contexts, ids = random_features(rng, 200, 48, 90)
    config = DecodeConfig(n_best_size=10)
    batches = [
        feature_topk_spans(
            start[i : i + 32], end[i : i + 32], offsets[i : i + 32], 10, config.max_answer_length
        )
        for i in range(0, len(start), 32)
    ]
    streamed = best_answers(concat_feature_spans(batches), example_index, contexts, ids, config)
    assert streamed == reference_decode(start, end, offsets, example_index, contexts, ids, config)
    # Small internal chunks give the same compact spans as one chunk.
    chunked = feature_topk_spans(start, end, offsets, 10, 30, chunk_size=7)
    whole = feature_topk_spans(start, end, offsets, 10, 30)
    for field in ("scores", "start_char", "end_char", "null_score"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))


def test_logits_longer_than_offsets_are_treated_as_padding():
    offsets = make_feature(WORDS)
    start = np.concatenate([logits_with(L, {token(1): 1.0}), np.full(8, 99.0, np.float32)])
    end = np.concatenate([logits_with(L, {token(1): 1.0}), np.full(8, 99.0, np.float32)])
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"])
    assert predictions["q"].text == "beta"


def test_bad_inputs_raise():
    offsets = make_feature(WORDS)[None]
    logits = np.zeros((1, L), dtype=np.float32)
    with pytest.raises(ValueError):
        decode(logits, logits, offsets, [3], [CONTEXT], ["q"])  # example index out of range
    with pytest.raises(ValueError):
        decode(logits, logits[:, :5], offsets, [0], [CONTEXT], ["q"])  # shape mismatch


def test_threads_and_chunk_sizes_do_not_change_spans():
    rng = np.random.default_rng(11)
    start, end, offsets, *_ = random_features(rng, 300, 48, 100)
    one = feature_topk_spans(start, end, offsets, 10, 6, chunk_size=300, num_threads=1)
    for chunk_size, threads in [(16, 4), (7, None), (1000, 3)]:
        other = feature_topk_spans(start, end, offsets, 10, 6, chunk_size, num_threads=threads)
        for field in ("scores", "start_char", "end_char", "null_score"):
            np.testing.assert_array_equal(getattr(other, field), getattr(one, field))


@pytest.mark.parametrize("narrow_width", [12, 15, 45])
def test_narrow_first_packing_does_not_change_spans(monkeypatch, narrow_width):
    """Rows with more candidate cells than the narrow packing are redone wide,
    and rows wider than 3 x n_best_size are cut to their best cells first."""
    import qa_core.decode as decode_module

    rng = np.random.default_rng(5)
    start, end, offsets, *_ = random_features(rng, 200, 64, 80)
    monkeypatch.setattr(decode_module, "_narrow_width", lambda count, k: 10_000)  # all narrow
    single = feature_topk_spans(start, end, offsets, 12, 30)
    monkeypatch.setattr(decode_module, "_narrow_width", lambda count, k: narrow_width)
    split = feature_topk_spans(start, end, offsets, 12, 30)
    for field in ("scores", "start_char", "end_char", "null_score"):
        np.testing.assert_array_equal(getattr(split, field), getattr(single, field))


def test_spans_per_feature_beyond_every_candidate_keeps_every_candidate():
    """A feature offers at most n_best_size x n_best_size spans: asking for 10**12 slots (qa-answer
    --top_k 10**12) allocated them (7 TiB); now it keeps the n_best_size**2 there are."""
    rng = np.random.default_rng(5)
    start, end, offsets, *_ = random_features(rng, 20, 64, 80)
    every = feature_topk_spans(start, end, offsets, 4, 30, spans_per_feature=16)
    huge = feature_topk_spans(start, end, offsets, 4, 30, spans_per_feature=10**12)
    assert huge.spans_per_feature == 16
    for field in ("scores", "start_char", "end_char", "null_score"):
        np.testing.assert_array_equal(getattr(huge, field), getattr(every, field))


@pytest.mark.parametrize("keep", [1, 3])
def test_fewer_spans_per_feature_are_the_head_of_the_n_best(keep):
    rng = np.random.default_rng(9)
    start, end, offsets, *_ = random_features(rng, 200, 64, 80)
    full = feature_topk_spans(start, end, offsets, 12, 30)
    head = feature_topk_spans(start, end, offsets, 12, 30, spans_per_feature=keep)
    assert head.spans_per_feature == keep and full.spans_per_feature == 12
    for field in ("scores", "start_char", "end_char"):
        np.testing.assert_array_equal(getattr(head, field), getattr(full, field)[:, :keep])
    np.testing.assert_array_equal(head.null_score, full.null_score)
    with pytest.raises(ValueError, match="spans_per_feature"):
        feature_topk_spans(start, end, offsets, 12, 30, spans_per_feature=0)


def test_token_ties_at_the_top_n_cut_keep_lower_tokens():
    # Six context tokens with the same start logit, n_best_size=2: the classic
    # stable argsort keeps tokens 0 and 1 (the two lowest indices), so the best
    # span starts at word 0 even though word 4 has the best end logit.
    offsets = make_feature(WORDS)
    start = logits_with(L, {token(i): 1.0 for i in range(6)}, base=NEG)
    end = logits_with(L, {token(4): 3.0, token(1): 2.0}, base=NEG)
    config = DecodeConfig(n_best_size=2, max_answer_length=30)
    predictions = run_both([start], [end], [offsets], [0], [CONTEXT], ["q"], config)
    assert predictions["q"].text == "alpha beta gamma delta epsilon"
    spans = feature_topk_spans(start[None], end[None], offsets[None], n_best_size=2)
    assert spans.start_char[0].tolist() == [WORDS[0][0], WORDS[1][0]]


def test_span_ties_at_the_n_best_cut_keep_lower_cells():
    # Every context pair scores the same: the kept spans are the first
    # n_best_size valid (start, end) pairs in (start token, end token) order.
    offsets = make_feature(WORDS)
    flat = np.zeros(L, dtype=np.float32)
    flat[:FIRST_CONTEXT_TOKEN] = NEG
    spans = feature_topk_spans(flat[None], flat[None], offsets[None], n_best_size=4)
    pairs = list(zip(spans.start_char[0].tolist(), spans.end_char[0].tolist()))
    assert pairs == [(WORDS[0][0], WORDS[i][1]) for i in range(4)]  # word 0 to words 0..3


def test_long_sequences_use_wide_index_arithmetic():
    # Lengths >= 2**14 switch the span check from int16 to int64.
    rng = np.random.default_rng(5)
    start, end, offsets, example_index, contexts, ids = random_features(rng, 3, 2**14 + 40, 2)
    config = DecodeConfig(n_best_size=20, max_answer_length=300)
    assert decode(start, end, offsets, example_index, contexts, ids, config) == reference_decode(
        start, end, offsets, example_index, contexts, ids, config
    )


@pytest.mark.parametrize("seed", [3, 4])
def test_vectorized_matches_reference_on_peaked_logits(seed):
    # Logits with peaks and their neighbourhoods (as a trained reader gives),
    # so many top-n starts and ends pair up into valid spans.
    rng = np.random.default_rng(seed)
    start, end, offsets, example_index, contexts, ids = random_features(rng, 200, 96, 60)
    for logits in (start, end):
        for row in logits:
            for peak in rng.integers(0, 96, 4):
                row[max(peak - 2, 0) : peak + 3] += rng.uniform(1, 6)
    config = DecodeConfig(n_best_size=20, max_answer_length=15)
    assert decode(start, end, offsets, example_index, contexts, ids, config) == reference_decode(
        start, end, offsets, example_index, contexts, ids, config
    )


@pytest.mark.parametrize("k", [1, 3, 12])
def test_top_answers_are_the_k_best_distinct_spans_led_by_the_answer(k):
    rng = np.random.default_rng(11)
    # several windows per example with the same token -> character offsets: the same spans
    # recur across windows, and scores rounded to halves tie often
    start, end, offsets, example_index, contexts, ids = random_features(rng, 120, 24, 40)
    config = DecodeConfig(n_best_size=6, max_answer_length=5)
    spans = feature_topk_spans(start, end, offsets, config.n_best_size,
                               config.max_answer_length, spans_per_feature=36)  # every candidate
    ranked = top_answers(spans, example_index, contexts, ids, k)
    best = best_answers(spans, example_index, contexts, ids, config)
    assert list(ranked) == ids
    for example, example_id in enumerate(ids):
        # the oracle: every candidate character span of the example's windows, at its best score
        score_of: dict[tuple[int, int], float] = {}
        for feature in np.flatnonzero(example_index == example):
            for slot in np.flatnonzero(spans.scores[feature] > -np.inf):
                key = (int(spans.start_char[feature, slot]), int(spans.end_char[feature, slot]))
                score_of[key] = max(score_of.get(key, -np.inf), spans.scores[feature, slot])
        expected_scores = sorted(score_of.values(), reverse=True)[:k]
        listed = ranked[example_id]
        assert [p.score for p in listed] == expected_scores
        assert len({(p.start_char, p.end_char) for p in listed}) == len(listed)
        for p in listed:
            assert score_of[p.start_char, p.end_char] == p.score
            assert p.text == contexts[example][p.start_char:p.end_char]
        if listed:  # the first is the answer, ties broken the same way
            assert listed[0] == best[example_id]
            assert listed[0].null_score == best[example_id].null_score
        else:
            assert best[example_id].score == -np.inf
    assert any(len(listed) == k for listed in ranked.values())
    with pytest.raises(ValueError, match="k must be"):
        top_answers(spans, example_index, contexts, ids, 0)
