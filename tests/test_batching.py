"""qa_core.batching: batches read by row from a memory-mapped cache entry, the first-N-examples
selection, evaluation through per-batch offsets, the epoch order and its sampler.

The real-entry tests build one cache entry of the shipped squadshifts eval slice with the packaged
MiniLM tokenizer, cut into many small shards and record batches (so rows cross chunk and file
boundaries), and check every result against a plain-Python reading of the same rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from qa_core.batching import (
    EpochSampler,
    ExampleWindows,
    FeatureRows,
    epoch_order,
    epoch_step_costs,
    open_cache_entry,
    select_first_examples,
    training_loader,
)
from qa_core.decode import DecodeConfig
from qa_core.evaluation import EvalAccumulator, EvalReferences
from qa_core.features import FeatureBuilder, FeatureConfig, offsets_to_numpy
from tiny_models import EVAL_DATA

# ---------------------------------------------------------------------------------------------
# A real cache entry, and a plain-Python reading of its rows
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entry(minilm_path, tmp_path_factory):
    from qa_core.pipeline import PreprocessConfig, prepare

    config = PreprocessConfig(data=EVAL_DATA, model=minilm_path, split="validation",
                              cache_dir=str(tmp_path_factory.mktemp("batching_cache")),
                              max_length=128, doc_stride=32, batch_size=16, rows_per_shard=300)
    result = prepare(config)
    assert result.summary["num_shards"]["features"] > 2
    return result.entry


@pytest.fixture(scope="module")
def tables(entry):
    features, examples = open_cache_entry(entry)
    assert features.column("input_ids").num_chunks > 10, "rows must cross chunk boundaries"
    return features, examples


def expected_batch(features: pa.Table, rows: list[int], pad_token_id: int, width: int) -> dict:
    """What a batch must hold, straight from ``to_pylist`` of the requested rows."""
    batch = {}
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        fill = pad_token_id if name == "input_ids" else 0
        values = [features.column(name)[row].as_py() for row in rows]
        batch[name] = [v + [fill] * (width - len(v)) for v in values]
    for name in ("start_positions", "end_positions"):
        batch[name] = [features.column(name)[row].as_py() for row in rows]
    return batch


def expected_offsets(features: pa.Table, rows: list[int]) -> list[list[list[int]]]:
    return [[span if span is not None else [-1, -1]
             for span in features.column("offset_mapping")[row].as_py()] for row in rows]


def first_examples_oracle(features: pa.Table, examples: pa.Table, limit: int | None):
    """The definition: the first ``limit`` examples and every window whose example is one."""
    ids = examples.column("id").to_pylist()[:limit]
    position = {example_id: i for i, example_id in enumerate(ids)}
    feature_ids = features.column("example_id").to_pylist()
    rows = [row for row, example_id in enumerate(feature_ids) if example_id in position]
    return ids, rows, [position[feature_ids[row]] for row in rows]


@pytest.mark.parametrize("limit", [None, 37])
@pytest.mark.parametrize("pad_to,multiple",
                         [("longest", None), ("longest", 8), ("max_length", None)])
def test_batches_equal_the_rows_of_the_entry(tables, limit, pad_to, multiple):
    features, examples = tables
    selection = select_first_examples(features, examples, limit)
    dataset = FeatureRows(features, pad_token_id=3, pad_to=pad_to, pad_to_multiple_of=multiple,
                          max_length=128, selection=selection)
    rng = np.random.default_rng(0)
    for size in (1, 5, 16):
        indices = rng.choice(len(dataset), size, replace=False)
        rows = [int(selection.rows[i]) for i in indices]
        lengths = [len(features.column("input_ids")[row]) for row in rows]
        step = multiple or 1
        width = 128 if pad_to == "max_length" else -(-max(lengths) // step) * step
        batch = dataset.__getitems__(indices.tolist())
        assert list(batch) == ["input_ids", "attention_mask", "token_type_ids", "start_positions",
                               "end_positions", "feature_index"]
        assert all(t.dtype == torch.int64 for t in batch.values())
        expected = expected_batch(features, rows, 3, width)
        for name, value in expected.items():
            assert batch[name].tolist() == value, name
        assert batch["feature_index"].tolist() == indices.tolist()
        assert dataset.offsets(indices).tolist() == [
            o + [[-1, -1]] * (max(lengths) - len(o)) for o in expected_offsets(features, rows)]
    assert dataset.lengths.tolist() == [len(features.column("input_ids")[int(r)])
                                        for r in selection.rows]
    assert dataset.has_answer.tolist() == [features.column("has_answer")[int(r)].as_py()
                                           for r in selection.rows]


@pytest.mark.parametrize("limit", [None, 0, 1, 37, 10**6])
def test_selection_is_the_first_examples_and_exactly_their_windows(tables, limit):
    features, examples = tables
    ids, rows, example_index = first_examples_oracle(features, examples, limit)
    selection = select_first_examples(features, examples, limit)
    assert selection.examples.column("id").to_pylist() == ids
    assert selection.rows.tolist() == rows
    assert selection.example_index.tolist() == example_index
    assert FeatureRows(features, 0, selection=selection).example_index.tolist() == example_index


def test_building_the_dataset_does_not_copy_the_split(entry, tables):
    features, examples = tables
    token_bytes = sum(features.column(name).nbytes for name in ("input_ids", "attention_mask",
                                                                "token_type_ids", "offset_mapping"))
    before = pa.total_allocated_bytes()
    dataset = FeatureRows(features, 0, selection=select_first_examples(features, examples, None))
    batch = dataset.__getitems__(list(range(0, len(dataset), 7)))
    assert pa.total_allocated_bytes() - before < token_bytes / 50, "the split was copied"
    assert len(batch["input_ids"]) == len(range(0, len(dataset), 7))
    # The token buffers the batches read from are the mapped Arrow files themselves.
    maps = [line.split() for line in open("/proc/self/maps").read().splitlines()]
    mapped = [tuple(int(x, 16) for x in m[0].split("-")) for m in maps
              if len(m) >= 6 and m[5].startswith(str(entry / "features"))]
    assert mapped, "the features files are not memory-mapped"
    for starts, values in dataset.columns.values():
        for array in values:
            address = array.__array_interface__["data"][0]
            assert any(low <= address < high for low, high in mapped)


def test_in_memory_table_and_padding_rules():
    rows = [[101, 5, 6], [101, 7, 8, 9, 10], [101] + list(range(20, 30)) + [102]]
    table = pa.table({
        "input_ids": rows,
        "attention_mask": [[1] * len(r) for r in rows],
        "token_type_ids": [[0] * 2 + [1] * (len(r) - 2) for r in rows],
        "start_positions": [1, 2, 0], "end_positions": [1, 4, 0],
        "has_answer": [True, True, False], "example_id": ["b", "b", "a"],
        "offset_mapping": [[None] + [[i, i + 1] for i in range(len(r) - 1)] for r in rows],
        "num_tokens": [len(r) for r in rows],
    })
    features = FeatureRows(table, pad_token_id=0, pad_to="longest", pad_to_multiple_of=8)
    assert len(features) == 3 and features.lengths.tolist() == [3, 5, 12]
    assert features.example_index.tolist() == [0, 0, 1]  # ids numbered as they first appear
    batch = features.__getitems__([1, 0])
    assert batch["input_ids"].tolist() == [[101, 7, 8, 9, 10, 0, 0, 0], [101, 5, 6, 0, 0, 0, 0, 0]]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert batch["start_positions"].tolist() == [2, 1] and batch["end_positions"].tolist() == [4, 1]
    assert features.__getitems__([2])["input_ids"].shape == (1, 16)
    assert features.offsets(np.array([0]))[0].tolist() == [[-1, -1], [0, 1], [1, 2]]
    fixed = FeatureRows(table, pad_token_id=7, pad_to="max_length", max_length=16)
    assert fixed.__getitems__([0])["input_ids"][0].tolist() == [101, 5, 6] + [7] * 13
    with pytest.raises(ValueError, match="pad_to"):
        FeatureRows(table, pad_token_id=0, pad_to="bucket")


# ---------------------------------------------------------------------------------------------
# Evaluation: per-batch offsets from the entry == the dense offsets of the whole split
# ---------------------------------------------------------------------------------------------

def test_evaluation_with_per_batch_offsets_equals_the_dense_path(tables):
    features, examples = tables
    selection = select_first_examples(features, examples, 120)
    dataset = FeatureRows(features, 0, max_length=128, selection=selection)
    streamed = EvalReferences.build(selection.examples, dataset)
    column = features.column("offset_mapping").take(pa.array(selection.rows))
    dense_offsets = offsets_to_numpy(column, pad_to=128)
    dense = EvalReferences(
        example_ids=selection.examples.column("id").to_pylist(),
        contexts=selection.examples.column("context").to_pylist(),
        gold_answers=[a["text"] for a in selection.examples.column("answers").to_pylist()],
        feature_example_index=np.array(dataset.example_index),
        start_positions=np.array(dataset.start_positions),
        end_positions=np.array(dataset.end_positions),
        offsets=lambda index: dense_offsets[index])
    config = DecodeConfig(n_best_size=5, max_answer_length=12)
    results = []
    for references in (dense, streamed):
        accumulator = EvalAccumulator(references, config)
        rng = np.random.default_rng(4)  # same logits, batches in a shuffled order
        order = rng.permutation(len(dataset))
        for begin in range(0, len(order), 24):
            index = order[begin:begin + 24]
            width = int(dataset.lengths[index].max()) + 3  # logits padded past the windows
            accumulator.add(index, rng.normal(size=(len(index), width)).astype(np.float32),
                            rng.normal(size=(len(index), width)).astype(np.float32))
        results.append(accumulator.finish()[:2])
    (metrics_dense, predictions_dense), (metrics, predictions) = results
    assert metrics == metrics_dense and metrics["features"] == len(dataset)
    assert predictions == predictions_dense
    assert sum(bool(p.text) for p in predictions.values()) > 100
    assert list(streamed.contexts) == dense.contexts and streamed.contexts[3] == dense.contexts[3]


# ---------------------------------------------------------------------------------------------
# Epoch order and sampler
# ---------------------------------------------------------------------------------------------

HAS_ANSWER = np.array([True] * 30 + [False] * 70)
np.random.default_rng(0).shuffle(HAS_ANSWER)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_example_windows_are_built_one_example_at_a_time_in_the_batches_of_one_table(
        load_tok, minilm_path, batch_size):
    """qa-answer's windows (:class:`ExampleWindows`): each example's windows are built only
    when the batches reach them (memory: one table of every question's windows over a 10 MB
    context grew by ~160 MB per question), yet the batches, feature numbers, offsets and
    per-window columns are those of FeatureRows over one table of all the windows."""
    from conftest import long_text

    tokenizer = load_tok(minilm_path)
    config = FeatureConfig(max_length=64, doc_stride=16)
    examples = [{"id": str(i), "question": question, "context": context,
                 "answers": {"text": [], "answer_start": []}}
                for i, (question, context) in enumerate([
                    ("Who?", long_text(20, seed=1)), ("Where was it built?", long_text(3, seed=2)),
                    ("When?", "A short one."), ("Which river flows there?", long_text(9, seed=3))])]
    whole = pa.Table.from_batches([FeatureBuilder(tokenizer, config).build(examples)[0]])
    rows = FeatureRows(whole, tokenizer.pad_token_id)
    expected = [rows.__getitems__(list(range(i, min(i + batch_size, len(rows)))))
                for i in range(0, len(rows), batch_size)]

    builder = FeatureBuilder(tokenizer, config)
    built = []
    build = builder.build
    builder.build = lambda batch: built.append(batch[0]["id"]) or build(batch)
    windows = ExampleWindows(builder, examples, tokenizer.pad_token_id, batch_size)
    per_example = np.bincount(rows.example_index)
    got = []
    for batch in windows:
        got.append(batch)
        last = int(batch["feature_index"][-1])
        # built: the examples up to the one holding this batch's last window, no further
        assert len(built) == int(rows.example_index[last]) + 1
        assert np.array_equal(windows.offsets(batch["feature_index"].numpy()),
                              rows.offsets(batch["feature_index"].numpy()))
        assert len(windows._rows) < batch_size + per_example.max()
    assert built == [e["id"] for e in examples]
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name
    assert np.array_equal(windows.example_index, rows.example_index)
    assert np.array_equal(windows.start_positions, rows.start_positions)
    assert np.array_equal(windows.end_positions, rows.end_positions)
    with pytest.raises(RuntimeError):
        windows.offsets(np.array([0]))


def test_epoch_order_deterministic_per_seed_and_epoch():
    a = epoch_order(HAS_ANSWER, 1.0, seed=3, epoch=0)
    assert np.array_equal(a, epoch_order(HAS_ANSWER, 1.0, seed=3, epoch=0))
    assert sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, epoch_order(HAS_ANSWER, 1.0, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(HAS_ANSWER, 1.0, seed=4, epoch=0))


def test_epoch_order_negative_fraction_keeps_every_positive():
    positives = set(np.flatnonzero(HAS_ANSWER).tolist())
    drawn = []
    for epoch in range(3):
        order = epoch_order(HAS_ANSWER, 0.2, seed=1, epoch=epoch)
        assert len(order) == 30 + 14
        assert len(set(order.tolist())) == len(order), "no feature twice"
        assert positives <= set(order.tolist())
        negatives = set(order.tolist()) - positives
        assert len(negatives) == 14 and not HAS_ANSWER[list(negatives)].any()
        drawn.append(negatives)
    assert drawn[0] != drawn[1] or drawn[1] != drawn[2], "negatives are drawn anew each epoch"
    assert len(epoch_order(HAS_ANSWER, 0.0, seed=1, epoch=0)) == 30


def test_epoch_order_group_by_length_sorts_within_groups():
    lengths = np.random.default_rng(5).integers(10, 200, size=100)
    plain = epoch_order(HAS_ANSWER, 1.0, seed=2, epoch=4)
    grouped = epoch_order(HAS_ANSWER, 1.0, seed=2, epoch=4, lengths=lengths, group_size=16)
    assert sorted(grouped.tolist()) == list(range(100))
    start = 0
    for chunk in np.array_split(plain, 7):  # ceil(100 / 16) near-equal groups of at most 16
        assert len(chunk) <= 16
        group = grouped[start:start + len(chunk)]
        assert set(group.tolist()) == set(chunk.tolist())
        assert np.all(np.diff(lengths[group]) <= 0), "longest first inside a group"
        start += len(chunk)
    assert not np.all(np.diff(lengths[grouped]) <= 0), "sorted only inside groups, not globally"
    assert not np.array_equal(grouped, epoch_order(HAS_ANSWER, 1.0, seed=2, epoch=5,
                                                   lengths=lengths, group_size=16))
    # int32 lengths (what FeatureRows keeps) give the same order as int64 ones
    assert np.array_equal(grouped, epoch_order(HAS_ANSWER, 1.0, seed=2, epoch=4,
                                               lengths=lengths.astype(np.int32), group_size=16))


def test_epoch_sampler_length_constant_and_order_follows_epoch():
    sampler = EpochSampler(HAS_ANSWER, 0.5, seed=9)
    assert len(sampler) == 30 + 35
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert len(orders[-1]) == len(sampler) == 65
        assert orders[-1] == epoch_order(HAS_ANSWER, 0.5, 9, epoch).tolist()
    assert orders[0] != orders[1]
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]
    assert len(EpochSampler(HAS_ANSWER, 1.0, seed=9)) == 100


@pytest.mark.parametrize("num_processes,accumulation", [(1, 1), (1, 3), (2, 2)])
def test_epoch_step_costs_are_the_padded_tokens_the_loader_yields(tables, num_processes,
                                                                  accumulation):
    """A time budget prices each optimizer step by its padded tokens: the cost model must see
    the batches each process's prepared loader really yields (accelerate's sharding)."""
    from accelerate.data_loader import prepare_data_loader

    features, _ = tables
    dataset = FeatureRows(features, 0, pad_to_multiple_of=8)
    sampler, loader = training_loader(dataset, batch_size=6, num_processes=num_processes,
                                      negative_fraction=0.5, seed=3, group_by_length=True)
    sampler.set_epoch(2)
    per_process = []
    for rank in range(num_processes):
        shard = loader if num_processes == 1 else prepare_data_loader(
            loader, num_processes=num_processes, process_index=rank, put_on_device=False)
        if num_processes > 1:
            shard.set_epoch(2)  # a prepared loader sets its sampler's epoch from its own counter
        per_process.append([b["input_ids"].numel() for b in shard])
    rounds = np.max(np.array(per_process), axis=0)
    expected = [rounds[i:i + accumulation].sum() for i in range(0, len(rounds), accumulation)]
    costs = epoch_step_costs(dataset, sampler, 6, num_processes, accumulation, epoch=2)
    assert len(costs) == len(expected) > 10
    # with 2 processes the last round is evened out with repeated rows (not counted by the model)
    exact = len(expected) - (num_processes > 1)
    assert costs[:exact].tolist() == [float(c) for c in expected[:exact]]
    assert costs.std() > 0, "length grouping: steps differ in cost"
