"""Examples -> model features: sliding windows, start/end labels, context-only offsets.

Question first, context second, truncated ``only_second``: a long context becomes several
windows of at most ``max_length`` tokens, consecutive windows sharing ``doc_stride`` context
tokens — the same windows as ``tokenizer(q, c, truncation="only_second",
return_overflowing_tokens=True, stride=doc_stride)`` (a test checks token for token).

Instead of asking the tokenizer for every (question, context) pair, each distinct context is
tokenized once and windows are cut from its token array with numpy: SQuAD paragraphs carry
~5 questions each and a TyDi-style article can carry many, and re-tokenizing a 20k-character
article per question is where per-example preprocessing spends its time. Pair encoding is
the concatenation of the two sequences' encodings plus the tokenizer's special tokens, so the
result is identical.

A window is labelled with the tokens holding the first and last character of one of the
example's answers (``label_answer``: the first annotator's, or the consensus of the annotators)
when the whole answer lies inside it, otherwise with the CLS index.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from qa_core.errors import QAError, SettingsError
from qa_core.metrics import f1_score
from qa_core.offsets import extend_ends_over_marks

if TYPE_CHECKING:  # pyarrow is imported where used: flag parsing imports FeatureConfig
    import pyarrow as pa

# Which annotator's span labels the training windows (see label_answer_index).
LABEL_ANSWERS = ("first", "consensus")

# Contexts longer than this many characters are tokenized in pieces of about this size
# (:func:`encode_context`): one encode call on a 30 MB context peaked at ~0.7 KB per token
# inside the tokenizer, plus ~120 B per token for its Python lists of ids and offsets.
CONTEXT_PIECE_CHARS = 1 << 18
# Tokenizer parts under which a space always separates two tokens and is part of neither, and
# nothing is normalized differently for what follows it: a context cut just before a space
# gives the tokens of the whole context (``tests/test_features.py`` checks this). Other
# tokenizers (byte-level BPE, SentencePiece, rules in a Sequence) get one encode call.
PIECEWISE_NORMALIZERS = frozenset({"NoneType", "BertNormalizer", "Lowercase", "NFC", "NFD",
                                   "NFKC", "NFKD", "StripAccents"})
PIECEWISE_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})


@dataclass(frozen=True)
class FeatureConfig:
    max_length: int = 384
    doc_stride: int = 128
    label_answer: str = "first"

    def __post_init__(self) -> None:
        if self.label_answer not in LABEL_ANSWERS:
            raise ValueError(f"label_answer must be one of {LABEL_ANSWERS}, "
                             f"got {self.label_answer!r}")
        if not 0 <= self.doc_stride < self.max_length:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be in [0, max_length={self.max_length})"
            )


def label_answer_index(texts: Sequence[str], rule: str) -> int:
    """Index of the annotator span that labels an example's windows.

    ``first``: the first annotator's (the Hugging Face examples' choice). ``consensus``: the
    span that agrees most with the other annotators, by summed SQuAD token F1 against them (the
    first of equals; one or two answers therefore keep the first). Evaluation takes the best
    match over all annotators, so the span most of them marked is the one worth learning: on
    SQuAD Shifts New-Wiki the first annotator is not the majority's choice for 12 % of the
    questions.
    """
    if rule == "first" or len(texts) < 3:
        return 0
    agreement = [sum(f1_score(text, other) for j, other in enumerate(texts) if j != i)
                 for i, text in enumerate(texts)]
    return agreement.index(max(agreement))


def check_tokenizer(tokenizer, max_length: int | None = None) -> None:
    """Windows and offsets need a fast (Rust) tokenizer; a slow one is refused, not worked
    around."""
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if not getattr(tokenizer, "is_fast", False):
        raise QAError(
            f"tokenizer {name!r} is not a fast tokenizer: offset mappings and sliding windows "
            "need one "
            "(load it with use_fast=True, or use a model folder that ships tokenizer.json)"
        )
    if tokenizer.cls_token_id is None and tokenizer.bos_token_id is None:
        raise QAError(f"tokenizer {name!r} has no CLS/BOS token to label no-answer windows with")
    model_max = getattr(tokenizer, "model_max_length", None)
    # above 10**6: transformers' "no limit set" placeholder
    if max_length is not None and model_max and model_max < 10**6 and max_length > model_max:
        raise SettingsError(
            f"--max_length {max_length}: exceeds the model's limit of {model_max} tokens (its "
            "tokenizer's model_max_length, or its config's max_position_embeddings)"
        )


@dataclass(frozen=True)
class PairTemplate:
    """Where the tokenizer puts its special tokens around (question, context), and their type
    ids."""

    prefix: np.ndarray          # ids before the question
    middle: np.ndarray          # ids between question and context
    suffix: np.ndarray          # ids after the context
    prefix_types: np.ndarray
    middle_types: np.ndarray
    suffix_types: np.ndarray
    question_type: int
    context_type: int
    cls_index: int              # position used as the no-answer label

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "PairTemplate":
        probe = tokenizer("question", "context", return_token_type_ids=True).encodings[0]
        ids, types, seq = np.array(probe.ids), np.array(probe.type_ids), probe.sequence_ids
        q = [i for i, s in enumerate(seq) if s == 0]
        c = [i for i, s in enumerate(seq) if s == 1]
        cls_token = (tokenizer.cls_token_id if tokenizer.cls_token_id is not None
                     else tokenizer.bos_token_id)
        prefix = ids[:q[0]]
        return cls(
            prefix=prefix, middle=ids[q[-1] + 1:c[0]], suffix=ids[c[-1] + 1:],
            prefix_types=types[:q[0]], middle_types=types[q[-1] + 1:c[0]],
            suffix_types=types[c[-1] + 1:],
            question_type=int(types[q[0]]), context_type=int(types[c[0]]),
            cls_index=(int(np.flatnonzero(prefix == cls_token)[0]) if (prefix == cls_token).any()
                       else 0),
        )


@dataclass
class FeatureStats:
    """Per-batch counts, summed by the caller."""

    features: int = 0
    answerable: int = 0
    answers_covered: int = 0          # answerable examples with >= 1 window labelled with the
                                      # answer
    features_with_answer: int = 0     # windows labelled with the answer
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)   # kept, but worth knowing

    def add(self, other: "FeatureStats") -> None:
        self.features += other.features
        self.answerable += other.answerable
        self.answers_covered += other.answers_covered
        self.features_with_answer += other.features_with_answer
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)


def answer_token_span(offsets: np.ndarray, answer_start: int,
                      answer_text: str) -> tuple[tuple[int, int] | None, bool]:
    """(first, last) token holding the answer's first and last character, and whether they cover
    exactly its characters, its surrounding whitespace aside; (None, False) when no token
    overlaps the answer at all. ``offsets``: the context's ``[N, 2]`` token offsets.

    When the first character is whitespace (held by no token) the next token starts the span.
    The span is not exact when the answer begins or ends inside a token ("believable" in
    "Unbelievable"; a Thai word inside a run that a WordPiece vocabulary reads as one [UNK]):
    the label is then the tokens around it, the best a token-level model can predict.
    """
    answer_end = answer_start + len(answer_text)
    first = int(np.searchsorted(offsets[:, 1], answer_start, side="right"))
    last = int(np.searchsorted(offsets[:, 0], answer_end, side="left")) - 1
    if first > last:
        return None, False
    exact = (int(offsets[first, 0]) == answer_end - len(answer_text.lstrip())
             and int(offsets[last, 1]) == answer_start + len(answer_text.rstrip()))
    return (first, last), exact


def splits_at_spaces(backend) -> bool:
    """Whether a tokenizers ``backend`` may encode a text in pieces cut before spaces (see
    ``PIECEWISE_PRE_TOKENIZERS``)."""
    return (type(backend.normalizer).__name__ in PIECEWISE_NORMALIZERS
            and type(backend.pre_tokenizer).__name__ in PIECEWISE_PRE_TOKENIZERS)


def context_pieces(text: str, size: int = CONTEXT_PIECE_CHARS) -> Iterator[tuple[int, int]]:
    """(start, end) character ranges covering ``text`` in order, each ending just before a space
    (the next one starts with it) and about ``size`` characters long; one longer range where
    ``text`` has no space to cut at."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + 1, start + size)
        if cut < 0:
            cut = text.find(" ", start + size)
            if cut < 0:
                break
        yield start, cut
        start = cut
    yield start, len(text)


def encode_context(backend, text: str,
                   piece_chars: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int32 token ids ``[N]`` and character offsets ``[N, 2]`` of ``text`` (no special tokens),
    what ``backend.encode(text)`` gives. A text longer than ``piece_chars`` (default
    ``CONTEXT_PIECE_CHARS``) is encoded in the pieces of :func:`context_pieces` where the
    tokenizer allows it (:func:`splits_at_spaces`): memory holds one piece's encoding and Python
    lists at a time, and the tokens, offsets shifted by the piece's start, are the whole text's."""
    size = piece_chars or CONTEXT_PIECE_CHARS
    pieces = ([(0, len(text))] if len(text) <= size or not splits_at_spaces(backend)
              else context_pieces(text, size))
    ids, offsets = zip(*(_token_arrays(backend.encode_batch([text[start:end]],
                                                            add_special_tokens=False)[0], start)
                         for start, end in pieces))
    if len(ids) == 1:
        return ids[0], offsets[0]
    return np.concatenate(ids), np.concatenate(offsets)


def _token_arrays(encoding, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids ``[N]`` and character offsets ``[N, 2]`` (moved by ``shift``) of an encoding."""
    return (np.array(encoding.ids, dtype=np.int32),
            np.array(encoding.offsets, dtype=np.int32).reshape(-1, 2) + shift)


def window_starts(num_context_tokens: int, capacity: int, doc_stride: int) -> list[int]:
    """First context token of each window: windows advance by ``capacity - doc_stride`` until
    the end is in one."""
    step = capacity - doc_stride
    starts = [0]
    while starts[-1] + capacity < num_context_tokens:
        starts.append(starts[-1] + step)
    return starts


class FeatureBuilder:
    """Builds labelled windows for batches of examples with one tokenizer and config."""

    def __init__(self, tokenizer, config: FeatureConfig, context_cache_size: int = 64) -> None:
        check_tokenizer(tokenizer, config.max_length)
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer  # what tokenizes, in one place (timed by tasks)
        self.config = config
        self.template = PairTemplate.for_tokenizer(tokenizer)
        self.with_token_types = "token_type_ids" in tokenizer.model_input_names
        self._contexts: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = context_cache_size

    def _encode_contexts(self, contexts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        missing = list(dict.fromkeys(c for c in contexts if c not in self._contexts))
        backend = self.backend
        # the short ones in one call (the tokenizer may spread it over threads), long ones in
        # pieces
        short = [c for c in missing if len(c) <= CONTEXT_PIECE_CHARS]
        encoded = dict(zip(short, map(_token_arrays, backend.encode_batch(
            short, add_special_tokens=False)))) if short else {}
        for context in missing:
            ids, offsets = encoded.get(context) or encode_context(backend, context)
            self._contexts[context] = ids, extend_ends_over_marks(context, offsets)
        result = []
        for context in contexts:
            self._contexts.move_to_end(context)
            result.append(self._contexts[context])
        while len(self._contexts) > max(self._cache_size, len(set(contexts))):
            self._contexts.popitem(last=False)
        return result

    def context_capacity(self, question_tokens: int) -> int:
        """Context tokens a window holds beside a question of ``question_tokens`` tokens."""
        return self.config.max_length - question_tokens - self.template.num_special

    def context_token_count(self, context: str) -> int:
        """Tokens of ``context`` (no special tokens), from the encoding :meth:`build` then reuses
        (the builder's context cache), so counting does not tokenize it a second time."""
        return len(self._encode_contexts([context])[0][0])

    def no_window_reason(self, question_tokens: int, context_tokens: int) -> str | None:
        """Why an example gets no window (its counted skip), or None: a context without tokens,
        or a question leaving no more than ``doc_stride`` context tokens per window."""
        if context_tokens == 0:
            return "context_has_no_tokens"
        if self.context_capacity(question_tokens) <= self.config.doc_stride:
            return "question_too_long"
        return None

    def build(self, examples: Sequence[dict]) -> tuple[pa.RecordBatch, FeatureStats]:
        """Every window of every example, labelled, as one Arrow record batch."""
        t, cfg = self.template, self.config
        stats = FeatureStats()
        questions = self.backend.encode_batch(
            [e["question"].lstrip() for e in examples], add_special_tokens=False)
        contexts = self._encode_contexts([e["context"] for e in examples])

        ids_parts, type_parts, offset_parts = [], [], []
        lengths, starts_out, ends_out, window_index, example_ids = [], [], [], [], []
        for example, question, (context_ids, context_offsets) in zip(examples, questions, contexts):
            question_ids = np.array(question.ids, dtype=np.int32)
            reason = self.no_window_reason(len(question_ids), len(context_ids))
            if reason is not None:
                stats.skipped[reason] += 1
                continue
            capacity = self.context_capacity(len(question_ids))
            answer_tokens = None
            answers = example["answers"]
            if answers["text"]:
                stats.answerable += 1
                label = label_answer_index(answers["text"], cfg.label_answer)
                answer_tokens, exact = answer_token_span(
                    context_offsets, answers["answer_start"][label], answers["text"][label])
                if answer_tokens is not None and not exact:
                    stats.notes["answer_inside_token"] += 1
            head = np.concatenate([t.prefix, question_ids, t.middle]).astype(np.int32)
            head_types = np.concatenate([t.prefix_types,
                                         np.full(len(question_ids), t.question_type),
                                         t.middle_types])
            covered = False
            for w, first in enumerate(window_starts(len(context_ids), capacity, cfg.doc_stride)):
                last = min(first + capacity, len(context_ids))  # exclusive
                n_context = last - first
                ids_parts += [head, context_ids[first:last], t.suffix]
                if self.with_token_types:
                    type_parts += [head_types, np.full(n_context, t.context_type), t.suffix_types]
                offset_parts += [np.full((len(head), 2), -1, np.int32), context_offsets[first:last],
                                 np.full((len(t.suffix), 2), -1, np.int32)]
                lengths.append(len(head) + n_context + len(t.suffix))
                if (answer_tokens is not None and first <= answer_tokens[0]
                        and answer_tokens[1] < last):
                    starts_out.append(len(head) + answer_tokens[0] - first)
                    ends_out.append(len(head) + answer_tokens[1] - first)
                    covered = True
                    stats.features_with_answer += 1
                else:
                    starts_out.append(t.cls_index)
                    ends_out.append(t.cls_index)
                window_index.append(w)
                example_ids.append(example["id"])
            stats.answers_covered += covered
            if answers["text"] and not covered:
                # every window is labelled "no answer": said, not silent
                note = "answer_has_no_tokens" if answer_tokens is None else "answer_in_no_window"
                stats.notes[note] += 1

        stats.features = len(lengths)
        return self._to_record_batch(ids_parts, type_parts, offset_parts, lengths, starts_out,
                                     ends_out, window_index, example_ids), stats

    def _to_record_batch(self, ids_parts, type_parts, offset_parts, lengths,
                         starts, ends, window_index, example_ids) -> pa.RecordBatch:
        import pyarrow as pa

        lengths = np.asarray(lengths, dtype=np.int32)
        total = int(lengths.sum())
        feature_starts = pa.array(np.append(0, np.cumsum(lengths)).astype(np.int32))

        def concat(parts, dtype, shape=(0,)):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        def per_feature(values: pa.Array) -> pa.Array:  # one list of token values per feature
            return pa.ListArray.from_arrays(feature_starts, values)

        offsets = concat(offset_parts, np.int32, (0, 2))
        token_offsets = pa.ListArray.from_arrays(  # null outside the context (offsets -1)
            pa.array(np.arange(0, 2 * total + 1, 2, dtype=np.int32)),
            pa.array(offsets.reshape(-1)), mask=pa.array(offsets[:, 0] < 0))
        columns = {
            "input_ids": per_feature(pa.array(concat(ids_parts, np.int32))),
            "attention_mask": per_feature(pa.array(np.ones(total, dtype=np.int8))),
        }
        if self.with_token_types:
            columns["token_type_ids"] = per_feature(pa.array(concat(type_parts, np.int8)))
        starts = np.asarray(starts, dtype=np.int32)
        columns.update({
            "start_positions": pa.array(starts),
            "end_positions": pa.array(np.asarray(ends, dtype=np.int32)),
            "example_id": pa.array(example_ids, type=pa.string()),
            "offset_mapping": per_feature(token_offsets),
            "window_index": pa.array(np.asarray(window_index, dtype=np.int32)),
            "has_answer": pa.array(starts != self.template.cls_index),
            "num_tokens": pa.array(lengths),
        })
        return pa.RecordBatch.from_pydict(columns)


def offsets_to_numpy(offset_mapping: pa.Array | pa.ChunkedArray,
                     pad_to: int | None = None) -> np.ndarray:
    """``offset_mapping`` column -> int32 ``[F, L, 2]``, -1 for non-context tokens and padding."""
    import pyarrow as pa

    if isinstance(offset_mapping, pa.ChunkedArray):
        offset_mapping = offset_mapping.combine_chunks()
    lengths = offset_mapping.value_lengths().to_numpy(zero_copy_only=False)
    width = int(lengths.max(initial=0)) if pad_to is None else pad_to
    tokens = offset_mapping.flatten()  # one [start, end] per token, null outside the context
    valid = tokens.is_valid().to_numpy(zero_copy_only=False)
    flat = np.full((len(tokens), 2), -1, dtype=np.int32)
    flat[valid] = tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2)
    out = np.full((len(lengths), width, 2), -1, dtype=np.int32)
    out[np.arange(width) < lengths[:, None]] = flat  # each feature's tokens, in order
    return out
