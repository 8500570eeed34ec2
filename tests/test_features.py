"""Sliding windows and labels (qa_core.features) against the tokenizer's own overflow windows."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import corpus, long_text

import qa_core.features as features_module
from qa_core.features import (
    FeatureBuilder,
    FeatureConfig,
    FeatureStats,
    check_tokenizer,
    context_pieces,
    encode_context,
    label_answer_index,
    offsets_to_numpy,
    splits_at_spaces,
    window_starts,
)

TOKENIZERS = ["bert_tok_dir", "roberta_tok_dir", "minilm_path"]
SETTINGS = [(32, 4), (40, 12), (48, 16), (64, 0), (128, 32), (384, 128)]


@pytest.fixture(params=TOKENIZERS)
def tok(request, load_tok):
    return load_tok(request.getfixturevalue(request.param))


def make_examples() -> list[dict]:
    """Questions over long multi-byte contexts; two share a context, one has no answer."""
    examples = []
    sentences = corpus()
    for i in range(6):
        context = long_text(12 + 6 * i, seed=10 + i)
        # answer: a whole sentence-internal word run after multi-byte text
        words = context.split(" ")
        k = (len(words) * (i + 1)) // 8
        answer = " ".join(words[k:k + 1 + i % 3]).strip(".,?!")
        start = context.index(answer, len(" ".join(words[:k])))
        examples.append({"id": f"e{i}",
                         "question": " ".join(sentences[i + 20].split()[:4]).rstrip(".?!,") + "?",
                         "context": context,
                         "answers": {"text": [answer], "answer_start": [start]}})
    examples.append(dict(examples[1], id="e1b", question="Which words are these?"))
    examples.append({"id": "none", "question": "Is there no answer?",
                     "context": long_text(25, seed=99),
                     "answers": {"text": [], "answer_start": []}})
    return examples


def reference(tokenizer, example: dict, max_length: int, stride: int):
    return tokenizer(example["question"], example["context"], truncation="only_second",
                     max_length=max_length, stride=stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True,
                     return_token_type_ids="token_type_ids" in tokenizer.model_input_names)


def rows_of(batch: pa.RecordBatch, example_id: str) -> list[dict]:
    rows = [r for r in batch.to_pylist() if r["example_id"] == example_id]
    assert [r["window_index"] for r in rows] == list(range(len(rows)))
    return rows


def holding(offsets: list, char: int) -> int | None:
    """Index of the context token whose [start, end) holds character ``char``."""
    for i, span in enumerate(offsets):
        if span is not None and span[0] <= char < span[1]:
            return i
    return None


def check_labels(rows: list[dict], example: dict, cls_index: int) -> int:
    """Labelled windows point at the tokens holding the answer's first/last char; CLS windows
    really lack them. Returns how many windows are labelled."""
    labelled = 0
    answers = example["answers"]
    for row in rows:
        start, end, offsets = row["start_positions"], row["end_positions"], row["offset_mapping"]
        if not answers["text"]:
            assert start == end == cls_index
            continue
        a0 = answers["answer_start"][0]
        a1 = a0 + len(answers["text"][0]) - 1
        first, last = holding(offsets, a0), holding(offsets, a1)
        if first is not None and last is not None:
            assert (start, end) == (first, last)
            assert (offsets[start][0] <= a0 < offsets[start][1]
                    and offsets[end][0] <= a1 < offsets[end][1])
            assert row["has_answer"]
            labelled += 1
        else:
            assert start == end == cls_index and not row["has_answer"]
    return labelled


@pytest.mark.parametrize("max_length,stride", SETTINGS)
def test_windows_equal_tokenizer_overflow(tok, max_length, stride):
    examples = make_examples()
    builder = FeatureBuilder(tok, FeatureConfig(max_length, stride))
    batch, stats = builder.build(examples)
    with_types = "token_type_ids" in tok.model_input_names
    assert ("token_type_ids" in batch.schema.names) == with_types
    total_windows = covered = 0
    for example in examples:
        ref = reference(tok, example, max_length, stride)
        rows = rows_of(batch, example["id"])
        assert len(rows) == len(ref["input_ids"]), example["id"]
        for w, row in enumerate(rows):
            assert row["input_ids"] == ref["input_ids"][w]
            assert row["attention_mask"] == [1] * len(row["input_ids"])
            assert row["num_tokens"] == len(row["input_ids"]) <= max_length
            if with_types:
                assert row["token_type_ids"] == ref["token_type_ids"][w]
            # offsets: the tokenizer's offsets inside the context, null everywhere else
            seq = ref.sequence_ids(w)
            expected = [list(o) if s == 1 else None for o, s in zip(ref["offset_mapping"][w], seq)]
            assert row["offset_mapping"] == expected
        covered += check_labels(rows, example, builder.template.cls_index) > 0
        total_windows += len(rows)
    assert stats.features == total_windows == batch.num_rows
    assert stats.answerable == len(examples) - 1
    assert stats.answers_covered == covered
    if max_length >= 64:
        assert covered == stats.answerable  # long enough windows always hold these short answers
    assert sum(len(reference(tok, e, max_length, stride)["input_ids"]) > 1 for e in examples) >= (
        len(examples) if max_length <= 48 else 1)


def test_build_is_batch_independent(load_tok, bert_tok_dir):
    tok = load_tok(bert_tok_dir)
    examples = make_examples()
    builder = FeatureBuilder(tok, FeatureConfig(48, 16), context_cache_size=2)
    whole, _ = builder.build(examples)
    parts = [FeatureBuilder(tok, FeatureConfig(48, 16)).build(examples[i:i + 3])[0]
             for i in range(0, len(examples), 3)]
    assert pa.Table.from_batches(parts).to_pylist() == whole.to_pylist()
    empty, stats = builder.build([])
    assert empty.num_rows == 0 and stats.features == 0 and empty.schema == whole.schema


# ---------------------------------------------------------------------------------------------
# Answers at window edges
# ---------------------------------------------------------------------------------------------

def layout(tok, question: str, context: str, max_length: int, stride: int):
    """Per reference window: the global indices of its context tokens (tokens of the context
    alone)."""
    alone = tok.backend_tokenizer.encode(context, add_special_tokens=False)
    index_of = {tuple(o): i for i, o in enumerate(alone.offsets)}
    ref = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    windows = []
    for w in range(len(ref["input_ids"])):
        seq = ref.sequence_ids(w)
        windows.append([index_of[tuple(o)]
                        for o, s in zip(ref["offset_mapping"][w], seq) if s == 1])
    for a, b in zip(windows, windows[1:]):
        assert a[-stride:] == b[:stride] if stride else True
    return alone.offsets, windows


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_answers_at_window_edges(request, load_tok, tok_name):
    tok = load_tok(request.getfixturevalue(tok_name))
    max_length, stride = 40, 10
    question = "Who wrote it?"
    context = long_text(20, seed=5)
    offsets, windows = layout(tok, question, context, max_length, stride)
    assert len(windows) >= 4
    w0, w1, w2 = windows[0], windows[1], windows[2]
    last0, first1 = w0[-1], w1[0]
    assert first1 <= last0 - 3  # windows overlap

    def example_for(first_token: int, last_token: int, eid: str) -> dict:
        start, end = offsets[first_token][0], offsets[last_token][1]
        return {"id": eid, "question": question, "context": context,
                "answers": {"text": [context[start:end]], "answer_start": [start]}}

    cases = {
        # (first, last context token) -> windows expected to be labelled
        "ends_on_last_token_of_w0": ((w0[0] if first1 > w0[0] + 1 else last0 - 1), last0, {0}),
        "straddles_w0_end": (last0 - 1, last0 + 1, {1}),              # CLS in w0, covered by w1
        # CLS in w0 and w1, never covered
        "longer_than_overlap": (first1 - 1, last0 + 1, set()),
        "only_in_overlap": (first1, last0, {0, 1}),
        "first_token_of_w1": (first1, first1, {0, 1}),
        "first_context_token": (0, 0, {0}),
        "last_context_token": (len(offsets) - 1, len(offsets) - 1,
                               {len(windows) - 1} | ({len(windows) - 2}
                                                     if len(offsets) - 1 in windows[-2]
                                                     else set())),
        "only_in_w2_tail": (w2[-1], w2[-1], {w for w, win in enumerate(windows) if w2[-1] in win}),
    }
    # skip cases whose token span starts or ends on a character no single token holds
    examples = {name: example_for(a, b, name) for name, (a, b, _) in cases.items()}
    builder = FeatureBuilder(tok, FeatureConfig(max_length, stride))
    batch, stats = builder.build(list(examples.values()))
    cls = builder.template.cls_index
    for name, (a, b, expected) in cases.items():
        rows = rows_of(batch, name)
        assert len(rows) == len(windows)
        labelled = {r["window_index"] for r in rows if r["start_positions"] != cls}
        assert labelled == expected, name
        for row in rows:
            if row["window_index"] in expected:
                start, end = row["start_positions"], row["end_positions"]
                assert row["offset_mapping"][start] == list(offsets[a])
                assert row["offset_mapping"][end] == list(offsets[b])
                # the end label of "ends_on_last_token_of_w0" is the last context position of
                # window 0
                if name == "ends_on_last_token_of_w0":
                    assert row["offset_mapping"][end + 1] is None
            else:
                assert row["start_positions"] == row["end_positions"] == cls
        check_labels(rows, examples[name], cls)
    assert stats.answers_covered == len(cases) - 1


def test_no_answer_labels_cls_everywhere(load_tok, roberta_tok_dir, minilm_path):
    for folder in (roberta_tok_dir, minilm_path):
        tok = load_tok(folder)
        example = {"id": "n", "question": "What?", "context": long_text(30, seed=3),
                   "answers": {"text": [], "answer_start": []}}
        builder = FeatureBuilder(tok, FeatureConfig(32, 8))
        batch, stats = builder.build([example])
        assert batch.num_rows > 3
        assert (set(batch.column("start_positions").to_pylist())
                == {builder.template.cls_index} == {0})
        assert set(batch.column("end_positions").to_pylist()) == {0}
        assert not any(batch.column("has_answer").to_pylist())
        assert stats.answerable == stats.answers_covered == 0


def test_label_answer_index_picks_the_span_the_annotators_agree_on():
    three = ["Jerry Siegel and Joe Shuster", "Siegel and Shuster", "Siegel and Shuster."]
    assert label_answer_index(three, "first") == 0
    assert label_answer_index(three, "consensus") == 1  # agrees fully with the third
    # no two equal: the one overlapping most with the others
    assert label_answer_index(["in 1938", "June 1938 issue", "1938"], "consensus") == 2
    assert label_answer_index(["x y z", "y", "y z", "y z w"], "consensus") == 2
    # one or two answers, or all alike: the first
    assert label_answer_index(["a b", "c"], "consensus") == 0
    assert label_answer_index(["same", "same", "same"], "consensus") == 0
    with pytest.raises(ValueError, match="label_answer"):
        FeatureConfig(64, 16, "majority")


def test_consensus_labels_the_windows_with_the_majority_span(load_tok, minilm_path):
    tok = load_tok(minilm_path)
    context = "The comic book Action Comics #1 was written by Jerry Siegel and Joe Shuster in 1938."
    texts = ["Jerry Siegel and Joe Shuster"] + ["Siegel and Joe Shuster"] * 2
    starts = [context.index(text) for text in texts]
    example = {"id": "c", "question": "Who created it?", "context": context,
               "answers": {"text": texts, "answer_start": starts}}

    def labelled_span(rule: str) -> str:
        batch, _ = FeatureBuilder(tok, FeatureConfig(64, 16, rule)).build([example])
        row = batch.to_pylist()[0]
        offsets = row["offset_mapping"]
        return context[offsets[row["start_positions"]][0]:offsets[row["end_positions"]][1]]

    assert labelled_span("first") == "Jerry Siegel and Joe Shuster"
    assert labelled_span("consensus") == "Siegel and Joe Shuster"


def test_offsets_to_numpy_round_trip(load_tok, bert_tok_dir):
    tok = load_tok(bert_tok_dir)
    examples = make_examples()[:3]
    batch, _ = FeatureBuilder(tok, FeatureConfig(40, 10)).build(examples)
    column = batch.column("offset_mapping")
    arr = offsets_to_numpy(column)
    lengths = batch.column("num_tokens").to_pylist()
    assert arr.shape == (batch.num_rows, max(lengths), 2) and arr.dtype == np.int32
    for f, row in enumerate(column.to_pylist()):
        for t, span in enumerate(row):
            assert list(arr[f, t]) == (span if span is not None else [-1, -1])
        assert (arr[f, len(row):] == -1).all()
    padded = offsets_to_numpy(pa.chunked_array([column.slice(0, 2), column.slice(2)]), pad_to=64)
    assert padded.shape == (batch.num_rows, 64, 2)
    assert (padded[:, :arr.shape[1]] == arr).all() and (padded[:, arr.shape[1]:] == -1).all()
    assert offsets_to_numpy(column.slice(0, 0)).shape == (0, 0, 2)


def test_slow_tokenizer_refused(load_tok, bert_tok_dir, tmp_path):
    from transformers.models.bert import BertTokenizerLegacy

    fast = load_tok(bert_tok_dir)
    vocab = sorted(fast.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("\n".join(token for token, _ in vocab) + "\n",
                                        encoding="utf-8")
    slow = BertTokenizerLegacy(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False)
    assert not slow.is_fast
    with pytest.raises(ValueError, match="not a fast tokenizer"):
        FeatureBuilder(slow, FeatureConfig(64, 16))


def test_config_and_tokenizer_checks(load_tok, minilm_path):
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(64, 64)
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(64, -1)
    with pytest.raises(ValueError, match="model_max_length"):
        check_tokenizer(load_tok(minilm_path), 1024)
    assert window_starts(10, 10, 3) == [0]
    assert window_starts(11, 10, 3) == [0, 7]
    assert window_starts(0, 10, 3) == [0]


def test_question_too_long_is_counted_skip(load_tok, bert_tok_dir):
    tok = load_tok(bert_tok_dir)
    long_question = " ".join(["Who discovered the Higgs boson at CERN"] * 8) + "?"
    examples = [
        {"id": "long", "question": long_question, "context": long_text(5, seed=1),
         "answers": {"text": [], "answer_start": []}},
        {"id": "ok", "question": "Who?", "context": "Peter Higgs did.",
         "answers": {"text": ["Peter Higgs"], "answer_start": [0]}},
        {"id": "blank", "question": "Who?", "context": "   ",
         "answers": {"text": [], "answer_start": []}},
    ]
    batch, stats = FeatureBuilder(tok, FeatureConfig(32, 8)).build(examples)
    assert set(batch.column("example_id").to_pylist()) == {"ok"}
    assert stats.skipped == {"question_too_long": 1, "context_has_no_tokens": 1}
    assert stats.answers_covered == stats.answerable == 1


def test_an_answer_inside_a_token_is_labelled_by_its_tokens_and_counted(load_tok, minilm_path):
    """The label of an answer that begins or ends inside a token is the tokens around it (the
    best a token-level model can predict), as before, but it is no longer silent: the note
    ``answer_inside_token`` counts it. Exact answers, with or without surrounding whitespace,
    are not counted."""
    tok = load_tok(minilm_path)
    context = "It was unbelievable, said Ann Lee in Paris."
    examples = [
        {"id": "inside", "question": "What was it?", "context": context,
         "answers": {"text": ["believable"], "answer_start": [context.index("believable")]}},
        {"id": "exact", "question": "Who said it?", "context": context,
         "answers": {"text": ["Ann Lee"], "answer_start": [context.index("Ann Lee")]}},
        {"id": "padded", "question": "Where?", "context": context,
         "answers": {"text": [" Paris"], "answer_start": [context.index(" Paris")]}},
    ]
    batch, stats = FeatureBuilder(tok, FeatureConfig(64, 16)).build(examples)
    assert stats.notes == {"answer_inside_token": 1}
    assert stats.answers_covered == 3
    row = rows_of(batch, "inside")[0]
    start, end = row["start_positions"], row["end_positions"]
    assert context[row["offset_mapping"][start][0]:row["offset_mapping"][end][1]] == \
        "unbelievable"
    merged = FeatureStats()
    merged.add(stats)
    merged.add(stats)
    assert merged.notes == {"answer_inside_token": 2}


def test_decomposed_accents_stay_inside_the_tokens_they_follow(load_tok, minilm_path):
    """The uncased MiniLM tokenizer strips accents, so "Cafe\\u0301" (NFD) was one token ending
    before the accent: a gold answer ending in it could not be predicted (EM 0), and "e\\u0301te"
    was labelled one mark short. Token ends now move past the marks no token holds."""
    from qa_core.offsets import extend_ends_over_marks

    tok = load_tok(minilm_path)
    context = "Wir trinken Cafe\u0301 im e\u0301te\u0301, sagt Ann, und \u092e\u093e\u0901."
    examples = [
        {"id": "mother", "question": "Wer?", "context": context,  # a run begun inside a token
         "answers": {"text": ["\u092e\u093e\u0901"], "answer_start": [context.index("\u092e")]}},
        {"id": "cafe", "question": "Was trinken wir?", "context": context,
         "answers": {"text": ["Cafe\u0301"], "answer_start": [context.index("Cafe")]}},
        {"id": "ete", "question": "Wann?", "context": context,
         "answers": {"text": ["e\u0301te\u0301"], "answer_start": [context.index("e\u0301t")]}},
    ]
    batch, stats = FeatureBuilder(tok, FeatureConfig(64, 16)).build(examples)
    assert stats.notes == {} and stats.answers_covered == 3
    for example in examples:
        row = rows_of(batch, example["id"])[0]
        start, end = row["start_positions"], row["end_positions"]
        assert (context[row["offset_mapping"][start][0]:row["offset_mapping"][end][1]]
                == example["answers"]["text"][0])
    # an end moves only over marks no token holds, never into the next token
    held = np.array([[0, 1], [1, 2], [2, 3]], dtype=np.int32)  # the mark is a token of its own
    assert extend_ends_over_marks("a\u0301b", held).tolist() == held.tolist()
    stripped = np.array([[0, 1], [4, 5]], dtype=np.int32)
    assert extend_ends_over_marks("a\u0301\u0302 b", stripped).tolist() == [[0, 3], [4, 5]]
    assert extend_ends_over_marks("plain", stripped).tolist() == stripped.tolist()
    # a run of marks that starts inside the token: the spacing mark is held, the nasal
    # sign after it was dropped (Devanagari "माँ": the label was "मा")
    mother = "\u092e\u093e\u0901 x"
    assert extend_ends_over_marks(mother, np.array([[0, 2], [4, 5]])).tolist() == [[0, 3], [4, 5]]


@pytest.mark.parametrize(("answer", "config", "note"), [
    ("\u200b", FeatureConfig(64, 16), "answer_has_no_tokens"),
    (" ".join(["word"] * 40), FeatureConfig(24, 4), "answer_in_no_window"),
])
def test_an_answer_no_window_holds_is_counted(load_tok, minilm_path, answer, config, note):
    """Its windows are all labelled "no answer"; that was silent (only answers_covered fell)."""
    tok = load_tok(minilm_path)
    context = f"Before it: {answer} and after it comes more text to fill a few windows here."
    examples = [{"id": "x", "question": "What?", "context": context,
                 "answers": {"text": [answer], "answer_start": [context.index(answer)]}}]
    batch, stats = FeatureBuilder(tok, config).build(examples)
    assert stats.answerable == 1 and stats.answers_covered == 0
    assert stats.notes == {note: 1}
    assert set(batch.column("start_positions").to_pylist()) == {0}


# ---------------------------------------------------------------------------------------------
# Long contexts are tokenized in pieces (memory), with the tokens of the whole text
# ---------------------------------------------------------------------------------------------

EDGE_TEXT = ("Cafe\u0301  \u0301x \t\n \u03a3 \u03a3\u03a3 a\u00a0b \u4e2d\u6587\u5b57 \x00\ufffd "
             + "x" * 150 + " Unbelievable, naïve  résumé.  end ")


class RecordingBackend:
    """A tokenizers backend that records the length of every text it is asked to encode."""

    def __init__(self, backend) -> None:
        self.backend, self.lengths = backend, []

    def encode_batch(self, texts, **kwargs):
        self.lengths += [len(text) for text in texts]
        return self.backend.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_context_pieces_cover_the_text_and_cut_before_spaces():
    text = "ab cd  efgh ijklmnopqrstuvwxyz x"
    pieces = list(context_pieces(text, 5))
    assert "".join(text[a:b] for a, b in pieces) == text
    assert [b for _, b in pieces[:-1]] == [a for a, _ in pieces[1:]]
    assert all(text[a] == " " for a, _ in pieces[1:])
    assert list(context_pieces("x" * 20, 5)) == [(0, 20)]  # nowhere to cut: one piece


def test_long_contexts_are_encoded_in_pieces_with_the_whole_texts_tokens(tok, monkeypatch):
    FeatureBuilder(tok, FeatureConfig())  # as every caller: the backend no longer truncates
    backend = tok.backend_tokenizer
    monkeypatch.setattr(features_module, "CONTEXT_PIECE_CHARS", 40)
    for text in (long_text(30, seed=5), EDGE_TEXT, " " + long_text(8, seed=6) + "  "):
        whole = backend.encode(text, add_special_tokens=False)
        recording = RecordingBackend(backend)
        ids, offsets = encode_context(recording, text)
        assert ids.tolist() == whole.ids
        assert offsets.tolist() == [list(pair) for pair in whole.offsets]
        if splits_at_spaces(backend):  # WordPiece: pieces of ~40 characters (one long word more)
            assert len(recording.lengths) > 1 and max(recording.lengths) <= 160
        else:  # byte-level BPE: spaces belong to tokens, so one call on the whole text
            assert recording.lengths == [len(text)]
    assert splits_at_spaces(backend) == (tok.name_or_path.find("roberta") < 0)


def test_windows_are_the_same_whether_contexts_are_encoded_in_pieces(tok, monkeypatch):
    examples = make_examples() + [{"id": "edge", "question": "What is it?", "context": EDGE_TEXT,
                                   "answers": {"text": ["naïve"],
                                               "answer_start": [EDGE_TEXT.index("naïve")]}}]
    whole, whole_stats = FeatureBuilder(tok, FeatureConfig(48, 16)).build(examples)
    monkeypatch.setattr(features_module, "CONTEXT_PIECE_CHARS", 30)
    builder = FeatureBuilder(tok, FeatureConfig(48, 16))
    recording = RecordingBackend(tok.backend_tokenizer)
    builder.backend = recording
    pieces, piece_stats = builder.build(examples)
    assert pieces.equals(whole)
    assert piece_stats == whole_stats
    if splits_at_spaces(tok.backend_tokenizer):  # no context went to the tokenizer whole
        assert max(recording.lengths) <= 160 < min(len(e["context"]) for e in examples)
