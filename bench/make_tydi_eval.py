#!/usr/bin/env python
"""Build a TyDi QA evaluation file (official raw layout) from SQuAD-format articles, and the
complementary training file (the other articles, SQuAD JSON).

    python bench/make_tydi_eval.py --squad ../shared/data/squadshifts/new_wiki_v1.0.json.gz \\
        --eval_articles 4 --eval_out runs/tydi_newwiki/eval.jsonl.gz \\
        --train_out runs/tydi_newwiki/train.json.gz

The last ``--eval_articles`` articles (New-Wiki: articles 45-48, the demo's held-out ones) become
TyDi examples, one per question: ``document_plaintext`` is the whole article (its paragraphs
joined by "\\n", as in ``../shared/data/tydi_format/new_wiki_primary.jsonl.gz``), the passage
candidates are the paragraphs' UTF-8 byte ranges (end exclusive), and each example has three
annotations from the question's own crowd answers (the first three; a question with fewer gets
null annotators for the rest): minimal answer = the answer's byte span, passage = its paragraph,
``yes_no_answer`` "NONE". So that the metric's 2-of-3 rule has work to do, a deterministic share
of the questions (by a hash of the question id) keeps only its first annotator's answer
(``--one_annotator_share``), and another share has none (``--no_answer_share``): gold null for
TyDi's scorer. ``example_id`` is a signed 64-bit integer from the question id's SHA-256 (about
half negative, nearly all beyond 2**53, where a float would round them). The other articles are
written unchanged as SQuAD v1.1 JSON, for training. Both files are gzipped with mtime 0, so they
are reproducible. Last line: a JSON summary.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ANNOTATORS = 3


def signed_id(text: str) -> int:
    """A signed 64-bit integer from ``text`` (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def share_bucket(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (SHA-256 of it, salted so it is not the id's)."""
    digest = hashlib.sha256(b"share:" + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def null_annotation() -> dict:
    return {"passage_answer": {"candidate_index": -1},
            "minimal_answer": {"plaintext_start_byte": -1, "plaintext_end_byte": -1},
            "yes_no_answer": "NONE"}


def article_document(article: dict) -> tuple[str, list[tuple[int, int]], list[int]]:
    """(the article's text, each paragraph's byte range, each paragraph's first byte's char
    offset): paragraphs joined by "\\n", ranges end exclusive (the "\\n" belongs to none)."""
    contexts = [p["context"] for p in article["paragraphs"]]
    ranges, char_starts, byte_at, char_at = [], [], 0, 0
    for context in contexts:
        size = len(context.encode("utf-8"))
        ranges.append((byte_at, byte_at + size))
        char_starts.append(char_at)
        byte_at += size + 1
        char_at += len(context) + 1
    return "\n".join(contexts), ranges, char_starts


def answer_annotation(context: str, paragraph_byte_start: int, paragraph: int,
                      answer: dict) -> dict:
    """One crowd answer as a TyDi annotation (byte offsets into the whole document)."""
    start = answer["answer_start"]
    text = answer["text"]
    if context[start:start + len(text)] != text:
        raise ValueError(f"answer {text!r} does not match its context at {start}")
    start_byte = paragraph_byte_start + len(context[:start].encode("utf-8"))
    return {"passage_answer": {"candidate_index": paragraph},
            "minimal_answer": {"plaintext_start_byte": start_byte,
                               "plaintext_end_byte": start_byte + len(text.encode("utf-8"))},
            "yes_no_answer": "NONE"}


def tydi_records(article: dict, one_annotator_share: float,
                 no_answer_share: float) -> list[dict]:
    """Every question of ``article`` as an official-raw TyDi record (see the module's text)."""
    document, ranges, _ = article_document(article)
    candidates = [{"plaintext_start_byte": s, "plaintext_end_byte": e} for s, e in ranges]
    records = []
    for p, paragraph in enumerate(article["paragraphs"]):
        for qa in paragraph["qas"]:
            annotations = [answer_annotation(paragraph["context"], ranges[p][0], p, answer)
                           for answer in qa["answers"][:ANNOTATORS]]
            bucket = share_bucket(qa["id"])
            if bucket < no_answer_share:
                annotations = []
            elif bucket < no_answer_share + one_annotator_share:
                annotations = annotations[:1]
            annotations += [null_annotation()] * (ANNOTATORS - len(annotations))
            for number, annotation in enumerate(annotations):
                annotation["annotation_id"] = signed_id(f"{qa['id']}:{number}") & (2**63 - 1)
            records.append({
                "example_id": signed_id(qa["id"]), "language": "english",
                "question_text": qa["question"], "document_title": article.get("title", ""),
                "document_url": "", "document_plaintext": document,
                "passage_answer_candidates": candidates, "annotations": annotations,
            })
    return records


def write_gzip(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as handle:
        handle.write(text.encode("utf-8"))


def non_null_counts(records: list[dict]) -> dict[str, int]:
    """Examples by their number of non-null minimal answers ("0".."3")."""
    counts: dict[str, int] = {}
    for record in records:
        key = str(sum(a["minimal_answer"]["plaintext_start_byte"] >= 0
                      for a in record["annotations"]))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def build(squad: dict, eval_articles: int, one_annotator_share: float,
          no_answer_share: float) -> tuple[list[dict], dict[str, Any]]:
    """(the TyDi records of the last ``eval_articles`` articles, SQuAD JSON of the others)."""
    articles = squad["data"]
    held_out, kept = articles[-eval_articles:], articles[:-eval_articles]
    records = [r for article in held_out
               for r in tydi_records(article, one_annotator_share, no_answer_share)]
    return records, {**squad, "data": kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", required=True,
                        help="SQuAD v1.1 JSON(.gz) (e.g. SQuAD Shifts new_wiki_v1.0.json.gz)")
    parser.add_argument("--eval_articles", type=int, default=4,
                        help="the last N articles become the TyDi evaluation file")
    parser.add_argument("--eval_out", required=True, help="TyDi official-raw .jsonl(.gz)")
    parser.add_argument("--train_out", required=True, help="SQuAD JSON(.gz) of the other articles")
    parser.add_argument("--one_annotator_share", type=float, default=0.15,
                        help="share of questions that keep only their first annotator's answer")
    parser.add_argument("--no_answer_share", type=float, default=0.1,
                        help="share of questions whose three annotators give no answer")
    args = parser.parse_args(argv)
    if not 0 <= args.one_annotator_share + args.no_answer_share <= 1 or min(
            args.one_annotator_share, args.no_answer_share) < 0:
        parser.error("--one_annotator_share and --no_answer_share: shares in [0, 1] that sum to "
                     "at most 1")
    opener = gzip.open if args.squad.endswith(".gz") else open
    try:
        with opener(args.squad, "rt", encoding="utf-8") as handle:
            squad = json.load(handle)
    except (OSError, ValueError) as err:
        parser.error(f"--squad {args.squad}: cannot read it as SQuAD JSON ({err})")
    if not 0 < args.eval_articles < len(squad.get("data", [])):
        parser.error(f"--eval_articles {args.eval_articles}: the file has "
                     f"{len(squad.get('data', []))} articles; leave at least one for training")
    records, train = build(squad, args.eval_articles, args.one_annotator_share,
                           args.no_answer_share)
    eval_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    eval_out, train_out = Path(args.eval_out), Path(args.train_out)
    if eval_out.name.endswith(".gz"):
        write_gzip(eval_out, eval_text)
    else:
        eval_out.parent.mkdir(parents=True, exist_ok=True)
        eval_out.write_text(eval_text, encoding="utf-8")
    train_text = json.dumps(train, ensure_ascii=False)
    if train_out.name.endswith(".gz"):
        write_gzip(train_out, train_text)
    else:
        train_out.parent.mkdir(parents=True, exist_ok=True)
        train_out.write_text(train_text, encoding="utf-8")
    ids = [r["example_id"] for r in records]
    print(json.dumps({
        "eval_out": str(eval_out), "train_out": str(train_out),
        "eval_articles": [a.get("title") for a in squad["data"][-args.eval_articles:]],
        "eval_examples": len(records), "train_articles": len(train["data"]),
        "train_questions": sum(len(p["qas"]) for a in train["data"] for p in a["paragraphs"]),
        "examples_by_non_null_annotators": non_null_counts(records),
        "negative_ids": sum(i < 0 for i in ids),
        "ids_beyond_2_53": sum(abs(i) > 2**53 for i in ids),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
