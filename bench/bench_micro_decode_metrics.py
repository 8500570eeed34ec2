"""Micro-benchmarks for span decoding and the SQuAD metric.

Run with ``pytest bench --benchmark-only`` (``pytest tests`` never collects
this folder).  Sizes mirror a SQuAD-style eval shard: ~2000 features of 384
tokens, ~5000 predictions.
"""

from __future__ import annotations

import numpy as np
import pytest

from qa_core.decode import DecodeConfig, best_answers, feature_topk_spans, reference_decode
from qa_core.metrics import squad_scores

NUM_FEATURES = 2000
MAX_LENGTH = 384
NUM_PREDICTIONS = 5000


def random_eval_features(num_features: int, length: int, seed: int = 0):
    """Logits, offsets and examples shaped like tokenized SQuAD eval windows."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(num_features, length)).astype(np.float32)
    end = rng.normal(size=(num_features, length)).astype(np.float32)
    token_chars = np.stack([np.arange(length) * 5, np.arange(length) * 5 + 4], axis=-1)
    offsets = np.repeat(token_chars[None], num_features, axis=0).astype(np.int64)
    positions = np.arange(length)[None, :]
    question_end = rng.integers(10, 40, num_features)[:, None]
    padding_start = length - rng.integers(0, length // 3, num_features)[:, None]
    offsets[(positions < question_end) | (positions >= padding_start)] = -1
    start[positions >= padding_start] = -1e4
    end[positions >= padding_start] = -1e4
    # About 1.3 windows per example, as with doc_stride 128 on SQuAD.
    num_examples = int(num_features / 1.3)
    example_index = np.sort(rng.integers(0, num_examples, num_features))
    contexts = ["w" * (5 * length)] * num_examples
    example_ids = [f"ex{i}" for i in range(num_examples)]
    return start, end, offsets, example_index, contexts, example_ids


@pytest.fixture(scope="module")
def eval_features():
    return random_eval_features(NUM_FEATURES, MAX_LENGTH)


def test_bench_vectorized_decode(benchmark, eval_features):
    start, end, offsets, example_index, contexts, ids = eval_features
    config = DecodeConfig()

    def run():
        spans = feature_topk_spans(
            start, end, offsets, config.n_best_size, config.max_answer_length,
            spans_per_feature=1,  # as evaluation does
        )
        return best_answers(spans, example_index, contexts, ids, config)

    predictions = benchmark(run)
    assert len(predictions) == len(ids)


def test_bench_reference_decode(benchmark, eval_features):
    # Baseline for the vectorized path: one Python loop per feature and pair.
    predictions = benchmark.pedantic(
        reference_decode, args=eval_features, rounds=3, iterations=1
    )
    assert len(predictions) == len(eval_features[-1])


@pytest.fixture(scope="module")
def squad_inputs():
    rng = np.random.default_rng(0)
    vocabulary = np.array(["the", "river", "Paris", "1905", "a", "king", "of", "blue", "cat."])
    predictions, references = {}, {}
    for i in range(NUM_PREDICTIONS):
        question_id = f"q{i}"
        golds = [" ".join(rng.choice(vocabulary, rng.integers(1, 6))) for _ in range(3)]
        # A third unanswerable, like SQuAD v2.
        references[question_id] = [] if i % 3 == 0 else golds
        predictions[question_id] = " ".join(rng.choice(vocabulary, rng.integers(0, 6)))
    return predictions, references


def test_bench_squad_scores(benchmark, squad_inputs):
    predictions, references = squad_inputs
    scores = benchmark(squad_scores, predictions, references)
    assert scores["total"] == NUM_PREDICTIONS
