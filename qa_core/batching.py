"""Rows of a features table -> padded batches, without holding the split in RAM.

A cache entry's ``features`` table is memory-mapped Arrow. :class:`FeatureRows` keeps per chunk
only zero-copy numpy *views* of the token columns, plus a few small per-feature arrays; a batch
copies just its own rows into padded int64 arrays, so the memory a training run allocates does
not grow with the number of cached windows (the mapped pages count in RSS as file-backed,
shared pages the OS reclaims under pressure without writing anything). The same class serves an
in-memory table, as inference builds. Also here: the first N examples as row indices
(:func:`select_first_examples`), the epoch order and its sampler, and the training loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from qa_core.features import FeatureBuilder, offsets_to_numpy

# Length grouping sorts the shuffled order inside groups of this many global batches: little
# padding, yet batches still differ from epoch to epoch.
LENGTH_GROUP_BATCHES = 50

TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
MODEL_INPUTS = (*TOKEN_COLUMNS, "start_positions", "end_positions")


def pad_multiple(mixed_precision: str | None) -> int | None:
    """Batch widths round up to a multiple of 8 under fp16/bf16 (shapes the matrix units like)."""
    return 8 if mixed_precision in ("fp16", "bf16") else None


def padded_width(longest: int, multiple: int | None) -> int:
    """A batch's width: its longest window, rounded up to ``multiple`` when given."""
    return -(-longest // multiple) * multiple if multiple else longest


def open_cache_entry(entry: str | Path) -> tuple[pa.Table, pa.Table]:
    """The ``features`` and ``examples`` tables of a cache entry, memory-mapped (nothing read)."""
    import datasets

    loaded = datasets.load_from_disk(str(entry))
    return loaded["features"].data.table, loaded["examples"].data.table


# ---------------------------------------------------------------------------------------------
# Which rows: the first N examples and exactly their windows
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureSelection:
    """Rows of a features table that belong to ``examples``, and which example each one is."""

    examples: pa.Table          # the selected examples (a zero-copy slice of the examples table)
    rows: np.ndarray            # int64 rows of the features table, in table order
    example_index: np.ndarray   # int32, per selected row: its example's position in ``examples``


def select_first_examples(features: pa.Table, examples: pa.Table,
                          limit: int | None) -> FeatureSelection:
    """The first ``limit`` examples (all when ``None``) and every window of theirs, as row
    indices into ``features`` (no filtered copy of the table)."""
    if limit is not None and limit < examples.num_rows:
        examples = examples.slice(0, limit)
    position = pc.index_in(features.column("example_id"), value_set=examples.column("id"))
    position = pc.fill_null(position, -1).to_numpy()
    rows = np.flatnonzero(position >= 0)
    return FeatureSelection(examples, rows, position[rows].astype(np.int32))


# ---------------------------------------------------------------------------------------------
# Rows -> padded batches
# ---------------------------------------------------------------------------------------------

def _list_views(column: pa.ChunkedArray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per chunk of a list column: (row starts into values, values) as zero-copy numpy views."""
    starts, values = [], []
    for chunk in column.chunks:
        starts.append(chunk.offsets.to_numpy()[:-1])
        values.append(chunk.values.to_numpy())
    return starts, values


class FeatureRows(torch.utils.data.Dataset):
    """Windows of a features table read by row; ``__getitems__`` returns one padded batch.

    ``table`` is the ``features`` split of a cache entry (memory-mapped) or an in-memory table
    with the same columns. ``selection`` (see :func:`select_first_examples`) restricts the
    dataset to some rows; dataset index ``i`` is then row ``selection.rows[i]``. Without one,
    every row is used and examples are numbered in the order their ids first appear.
    ``pad_to`` is ``"longest"`` (dynamic, rounded up to ``pad_to_multiple_of``) or
    ``"max_length"`` (the tutorial's fixed padding, for benchmarks).
    """

    def __init__(self, table: pa.Table, pad_token_id: int, pad_to: str = "longest",
                 pad_to_multiple_of: int | None = None, max_length: int | None = None,
                 selection: FeatureSelection | None = None) -> None:
        if pad_to not in ("longest", "max_length"):
            raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        self.table = table
        self.rows = None if selection is None else selection.rows
        # the builder writes every token column with input_ids' row lengths (``num_tokens``)
        self.columns = {name: _list_views(table.column(name)) for name in TOKEN_COLUMNS
                        if name in table.column_names}
        chunk_rows = [len(chunk) for chunk in table.column("input_ids").chunks]
        self.chunk_starts = np.concatenate([[0], np.cumsum(chunk_rows)]).astype(np.int64)
        self.lengths = self._selected(table.column("num_tokens").to_numpy().astype(np.int32))
        self.has_answer = self._selected(table.column("has_answer").to_numpy())
        self.start_positions, self.end_positions = (
            self._selected(table.column(name).to_numpy().astype(np.int32))
            for name in ("start_positions", "end_positions"))
        if selection is None:  # examples numbered in the order their ids first appear
            ids = table.column("example_id")
            position = pc.index_in(ids, value_set=pc.unique(ids))
            self.example_index = position.to_numpy().astype(np.int32)
        else:
            self.example_index = selection.example_index
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length or int(self.lengths.max(initial=1))

    def _selected(self, per_row: np.ndarray) -> np.ndarray:
        return per_row if self.rows is None else per_row[self.rows]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, row inside the chunk) of dataset indices."""
        rows = indices if self.rows is None else self.rows[indices]
        chunk = np.searchsorted(self.chunk_starts, rows, side="right") - 1
        return chunk, rows - self.chunk_starts[chunk]

    def batch_width(self, indices: np.ndarray) -> int:
        if self.pad_to == "max_length":
            return self.max_length
        return padded_width(int(self.lengths[indices].max()), self.pad_to_multiple_of)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        width = self.batch_width(indices)
        chunk, local = self.locate(indices)
        places = list(zip(chunk.tolist(), local.tolist(), self.lengths[indices].tolist()))
        batch = {}
        for name, (starts, values) in self.columns.items():
            fill = self.pad_token_id if name == "input_ids" else 0
            out = np.full((len(indices), width), fill, dtype=np.int64)
            for row, (c, r, n) in enumerate(places):
                begin = starts[c][r]
                out[row, :n] = values[c][begin:begin + n]
            batch[name] = torch.from_numpy(out)
        batch["start_positions"] = torch.from_numpy(self.start_positions[indices].astype(np.int64))
        batch["end_positions"] = torch.from_numpy(self.end_positions[indices].astype(np.int64))
        batch["feature_index"] = torch.from_numpy(indices)
        return batch

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """int32 ``[B, longest, 2]`` character offsets of dataset indices' tokens (-1 outside
        the context and in padding), read from the ``offset_mapping`` column."""
        indices = np.asarray(indices, dtype=np.int64)
        width = int(self.lengths[indices].max(initial=0))
        out = np.full((len(indices), width, 2), -1, dtype=np.int32)
        chunk, local = self.locate(indices)
        column = self.table.column("offset_mapping")
        for c in np.unique(chunk):
            here = np.flatnonzero(chunk == c)
            taken = column.chunk(int(c)).take(pa.array(local[here]))
            out[here] = offsets_to_numpy(taken, pad_to=width)
        return out


class ExampleWindows:
    """The windows of ``examples``, built one example at a time as the batches are drawn (what
    ``qa-answer`` evaluates): memory holds one example's windows, not every example's.

    Iterating yields the batches that ``FeatureRows`` over one table of every window, read in
    order ``batch_size`` rows at a time, would give: the same rows in each batch, so the same
    padding and logits; ``feature_index`` numbers windows in that table's order. Rows of an
    example that do not fill a last batch wait for the next example's. :meth:`offsets` serves
    the batch just yielded; ``example_index``, ``start_positions`` and ``end_positions`` cover
    every window once iteration is done.
    """

    def __init__(self, builder: FeatureBuilder, examples: Sequence[dict], pad_token_id: int,
                 batch_size: int) -> None:
        self.builder, self.examples = builder, examples
        self.pad_token_id, self.batch_size = pad_token_id, batch_size
        self.example_index = self.start_positions = self.end_positions = np.zeros(0, np.int32)
        self._rows: FeatureRows | None = None  # the rows batches are being drawn from
        self._first = 0                         # the feature index of their first row

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        columns: dict[str, list[np.ndarray]] = {
            "example_index": [], "start_positions": [], "end_positions": []}
        waiting = None  # rows of earlier examples not yet in a batch (fewer than batch_size)
        for number, example in enumerate(self.examples):
            built = pa.Table.from_batches([self.builder.build([example])[0]])
            columns["example_index"].append(np.full(built.num_rows, number, np.int32))
            for name in ("start_positions", "end_positions"):
                columns[name].append(built.column(name).to_numpy().astype(np.int32))
            table = built if waiting is None else pa.concat_tables([waiting, built])
            last = number == len(self.examples) - 1
            served = table.num_rows if last else table.num_rows // self.batch_size * self.batch_size
            self._rows = FeatureRows(table, self.pad_token_id)
            for begin in range(0, served, self.batch_size):
                batch = self._rows.__getitems__(list(range(begin, min(begin + self.batch_size,
                                                                      served))))
                batch["feature_index"] += self._first
                yield batch
            # a copy, so that the rest of this example's table is freed before the next is built
            waiting = table.take(pa.array(np.arange(served, table.num_rows)))
            self._rows, self._first = None, self._first + served
        for name, parts in columns.items():
            setattr(self, name, np.concatenate([np.zeros(0, np.int32), *parts]))

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """:meth:`FeatureRows.offsets` of features of the batch just yielded."""
        local = np.asarray(indices, dtype=np.int64) - self._first
        if self._rows is None or (len(local) and not 0 <= local.min() <= local.max()
                                  < len(self._rows)):
            raise RuntimeError("ExampleWindows serves the offsets of the batch just yielded only")
        return self._rows.offsets(local)


def identity_collate(batch):
    """``FeatureRows.__getitems__`` already returns a collated batch."""
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


# ---------------------------------------------------------------------------------------------
# Epoch order, sampler, loader
# ---------------------------------------------------------------------------------------------

def epoch_order(has_answer: np.ndarray, negative_fraction: float, seed: int, epoch: int,
                lengths: np.ndarray | None = None, group_size: int | None = None) -> np.ndarray:
    """Feature order for one epoch, a pure function of its arguments (so resume replays it).

    Windows without the answer are subsampled to ``negative_fraction`` (drawn anew each epoch);
    with ``lengths`` and ``group_size`` the shuffled order is sorted by length inside groups of
    ``group_size`` features, so batches carry little padding but still differ every epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    positives = np.flatnonzero(has_answer)
    negatives = np.flatnonzero(~has_answer)
    if negative_fraction < 1.0:
        keep = int(round(negative_fraction * len(negatives)))
        negatives = rng.choice(negatives, size=keep, replace=False)
    order = rng.permutation(np.concatenate([positives, negatives]))
    if lengths is not None and group_size:
        parts = np.array_split(order, max(1, -(-len(order) // group_size)))
        order = np.concatenate([g[np.argsort(-lengths[g], kind="stable")] for g in parts])
    return order


class EpochSampler(torch.utils.data.Sampler):
    """Yields :func:`epoch_order` for the epoch set by ``set_epoch``; its length never changes."""

    def __init__(self, has_answer: np.ndarray, negative_fraction: float, seed: int,
                 lengths: np.ndarray | None = None, group_size: int | None = None) -> None:
        self.has_answer = has_answer
        self.negative_fraction = negative_fraction
        self.seed = seed
        self.lengths = lengths
        self.group_size = group_size
        self.epoch = 0
        self._length = len(self.order(0))

    def order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.has_answer, self.negative_fraction, self.seed, epoch,
                           self.lengths, self.group_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch).tolist())


def epoch_step_costs(dataset: FeatureRows, sampler: EpochSampler, batch_size: int,
                     num_processes: int, accumulation: int, epoch: int) -> np.ndarray:
    """Padded tokens of each optimizer step of ``epoch``, in training order: what a time
    budget's plan predicts step times from (:class:`qa_core.budget.StepCosts`).

    Batches are the loader's: ``batch_size`` consecutive features of :func:`epoch_order` per
    process, one such batch per process per round. A round costs its widest process's
    rows x width (the processes wait for each other in the gradient all-reduce); an optimizer
    step sums its ``accumulation`` rounds. Attention's share that grows with width squared is
    left out: at 256-384 tokens it is a tenth of a MiniLM step, and the plan only needs the
    ratio of later steps' costs to the timed ones'.
    """
    order = sampler.order(epoch)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_batch = np.array([len(b) * dataset.batch_width(b) for b in batches], dtype=np.float64)
    per_round = np.maximum.reduceat(per_batch, np.arange(0, len(per_batch), num_processes))
    return np.add.reduceat(per_round, np.arange(0, len(per_round), accumulation))


def training_loader(dataset: FeatureRows, batch_size: int, num_processes: int,
                    negative_fraction: float, seed: int,
                    group_by_length: bool) -> tuple[EpochSampler, torch.utils.data.DataLoader]:
    """The training order and its batches, as ``train_accelerate.py`` trains (and the benches
    measure).

    Answer-less windows are subsampled to ``negative_fraction`` each epoch; with
    ``group_by_length`` the order is length-sorted inside groups of
    ``LENGTH_GROUP_BATCHES`` global batches.  The loader draws from its own seeded generator,
    which keeps the global RNG (dropout) untouched.
    """
    sampler = EpochSampler(dataset.has_answer, negative_fraction, seed,
                           dataset.lengths if group_by_length else None,
                           LENGTH_GROUP_BATCHES * batch_size * num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         collate_fn=identity_collate,
                                         generator=torch.Generator().manual_seed(seed))
    return sampler, loader
