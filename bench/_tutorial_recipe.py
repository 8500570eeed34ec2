"""The 2023 tutorial's recipe, reimplemented for side-by-side benchmarks (``bench/vs_tutorial.py``).

What the tutorial did (a ``process_samples`` function mapped one example at a time over the
flattened TyDi ``primary_task`` English split, then the HF ``Trainer``):

* one tokenizer call per example: ``tokenizer(document_plaintext, question_text,
  truncation="only_first", padding="max_length")`` -- the *context first*, the question second,
  one window per example, everything past ``max_length`` lost (``--tutorial_order
  question_first`` gives the ``tokenizer(question, context, truncation="only_second")`` variant);
* no answer (``minimal_answers_start_byte[0] == -1``) -> both labels the CLS index;
* otherwise ``start_char = minimal_answers_start_byte[0]``, ``end_char =
  minimal_answers_end_byte[0]`` -- UTF-8 *byte* offsets used as ``str`` indices -- an
  "off by one or two characters" shift when ``doc[s-1:e-1]`` (or ``doc[s-2:e-2]``) equals
  ``doc[s:e]``, then ``char_to_token(start_char)`` / ``char_to_token(end_char - 1)``;
  a token that is not in the window (``None``) becomes ``tokenizer.model_max_length``, which
  the model's loss clamps to the sequence length and ignores;
* only ``input_ids``, ``attention_mask``, ``start_positions``, ``end_positions`` reach the model
  (``set_format(columns=...)``: no ``token_type_ids``);
* evaluation: argmax of the start logits and argmax of the end logits, separately, over all
  positions; token F1 = scikit-learn macro F1 of those against the labels; the answer text is
  ``convert_tokens_to_string`` of the tokens from start to end (empty when end < start).

For SQuAD-format data (character offsets, answer text given) the same code runs with
``start_char = answer_start[0]`` and ``end_char = start_char + len(text[0])``, which are right.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Reading: the flattened rows the tutorial's map saw
# ---------------------------------------------------------------------------------------------

def _open_text(path: Path):
    return (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz"
            else open(path, encoding="utf-8"))


def data_kind(path: str | Path) -> str:
    """``squad_json`` (SQuAD v1.1/v2 JSON) or ``tydi_jsonl`` (TyDi primary task, HF or official
    schema)."""
    name = Path(path).name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".json"):
        return "squad_json"
    if stem.endswith(".jsonl"):
        return "tydi_jsonl"
    raise ValueError(f"{path}: expected a SQuAD .json(.gz) or a TyDi .jsonl(.gz) file")


def read_rows(path: str | Path, language: str = "english", limit: int | None = None) -> list[dict]:
    """One flat dict per example, in file order: id, question_text, document_plaintext and either
    ``answer_start``/``answer_text`` (SQuAD) or the TyDi ``annotations.*`` lists."""
    path = Path(path)
    kind = data_kind(path)
    rows: list[dict] = []
    if kind == "squad_json":
        with _open_text(path) as handle:
            document = json.load(handle)
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    rows.append({
                        "id": str(qa["id"]), "question_text": qa["question"],
                        "document_plaintext": paragraph["context"],
                        "answer_start": int(answers[0]["answer_start"]) if answers else -1,
                        "answer_text": answers[0]["text"] if answers else "",
                    })
                    if limit is not None and len(rows) >= limit:
                        return rows
        return rows
    from qa_core.readers import raw_tydi_to_hf

    with _open_text(path) as handle:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if isinstance(record.get("annotations"), list):  # official TyDi schema -> HF schema
                record = raw_tydi_to_hf(record, f"{path}:{n}")
            if language != "all" and (record.get("language") or "").lower() != language:
                continue
            ann = record["annotations"]
            example_id = record.get("id", record.get("example_id"))
            rows.append({
                "id": str(example_id) if example_id is not None else f"{path.name}:{n}",
                "question_text": record["question_text"],
                "document_plaintext": record["document_plaintext"],
                "annotations.minimal_answers_start_byte": list(ann["minimal_answers_start_byte"]),
                "annotations.minimal_answers_end_byte": list(ann["minimal_answers_end_byte"]),
            })
            if limit is not None and len(rows) >= limit:
                break
    return rows


# ---------------------------------------------------------------------------------------------
# process_samples
# ---------------------------------------------------------------------------------------------

def make_process_samples(tokenizer, max_length: int, order: str = "context_first"):
    """The tutorial's per-example function (for ``datasets.Dataset.map`` without batching)."""
    if order not in ("context_first", "question_first"):
        raise ValueError(f"order must be context_first or question_first, got {order!r}")
    context_index = 0 if order == "context_first" else 1
    unreachable = tokenizer.model_max_length

    def process_samples(sample: dict) -> dict:
        context, question = sample["document_plaintext"], sample["question_text"]
        if order == "context_first":
            tokenized = tokenizer(context, question, truncation="only_first", padding="max_length",
                                  max_length=max_length)
        else:
            tokenized = tokenizer(question, context, truncation="only_second", padding="max_length",
                                  max_length=max_length)
        input_ids = tokenized["input_ids"]
        cls_index = input_ids.index(tokenizer.cls_token_id)

        if "answer_start" in sample:  # SQuAD: character offsets and the answer text
            start_char = sample["answer_start"]
            end_char = start_char + len(sample["answer_text"]) if start_char != -1 else -1
        else:  # TyDi: UTF-8 byte offsets, used as character offsets (the tutorial's bug)
            start_char = sample["annotations.minimal_answers_start_byte"][0]
            end_char = sample["annotations.minimal_answers_end_byte"][0]
        if start_char == -1:
            start_position = end_position = cls_index
        else:
            gold_text = context[start_char:end_char]
            if context[start_char - 1:end_char - 1] == gold_text:     # "off by one character"
                start_char, end_char = start_char - 1, end_char - 1
            elif context[start_char - 2:end_char - 2] == gold_text:   # "off by two characters"
                start_char, end_char = start_char - 2, end_char - 2
            start_token = tokenized.char_to_token(start_char, sequence_index=context_index)
            end_token = tokenized.char_to_token(end_char - 1, sequence_index=context_index)
            start_position = unreachable if start_token is None else start_token  # truncated away
            end_position = unreachable if end_token is None else end_token
        return {"input_ids": input_ids, "attention_mask": tokenized["attention_mask"],
                "start_positions": start_position, "end_positions": end_position}

    return process_samples


COLUMNS_TO_RETURN = ["input_ids", "attention_mask", "start_positions", "end_positions"]


def build_dataset(rows: list[dict], tokenizer, max_length: int, order: str = "context_first"):
    """``Dataset.from_list(rows).map(process_samples)`` -- unbatched, as the tutorial -- then
    ``set_format("torch", columns=COLUMNS_TO_RETURN)``."""
    import datasets

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_list(rows)
    dataset = dataset.map(make_process_samples(tokenizer, max_length, order),
                          load_from_cache_file=False)
    dataset.set_format(type="torch", columns=COLUMNS_TO_RETURN)
    return dataset


def column(dataset, name: str) -> np.ndarray:
    """A column of a mapped dataset as numpy (lists of equal length -> 2-D)."""
    values = dataset.data.column(name)
    return np.array(values.to_pylist()) if hasattr(values.type, "value_type") else values.to_numpy()


# ---------------------------------------------------------------------------------------------
# Checks and decoding (not part of the timed recipe)
# ---------------------------------------------------------------------------------------------

def window_offsets(tokenizer, row: dict, max_length: int, order: str = "context_first") -> list:
    """Character offsets (into the context) of each token of the tutorial's window; None
    elsewhere."""
    context, question = row["document_plaintext"], row["question_text"]
    if order == "context_first":
        enc = tokenizer(context, question, truncation="only_first", padding="max_length",
                        max_length=max_length)
        context_index = 0
    else:
        enc = tokenizer(question, context, truncation="only_second", padding="max_length",
                        max_length=max_length)
        context_index = 1
    encoding = enc.encodings[0]
    return [off if seq == context_index else None
            for off, seq in zip(encoding.offsets, encoding.sequence_ids)]


def argmax_answers(tokenizer, input_ids: np.ndarray, start_logits: np.ndarray,
                   end_logits: np.ndarray) -> list[str]:
    """Separate argmax of start and end; the tokens between them as text ("" when end < start)."""
    starts, ends = start_logits.argmax(axis=1), end_logits.argmax(axis=1)
    answers = []
    for ids, start, end in zip(input_ids, starts, ends):
        if end < start:
            answers.append("")
            continue
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in ids[start:end + 1]])
        answers.append(tokenizer.convert_tokens_to_string(tokens))
    return answers
