"""Answer questions about a context with a trained model folder, using the evaluation decoder.

    qa-answer --model runs/demo --context_file passage.txt --question "Who created Superman?"
    qa-answer --model runs/demo --demo        # the comic-books passage and its four questions
    qa-answer --model runs/demo --demo --top_k 5   # and each question's 5 best spans

Each answer is printed as one JSON line; the last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from qa_core.batching import ExampleWindows
from qa_core.decode import DecodeConfig
from qa_core.errors import QAError, exit_interrupted, exit_with_error, first_line
from qa_core.evaluation import EvalAccumulator, EvalReferences, accumulate_logits
from qa_core.features import FeatureBuilder, FeatureConfig
from qa_core.modeling import (
    ModelFolderError,
    check_model_folder,
    load_qa_model,
    quiet_model_loading,
)
from qa_core.offsets import is_blank, unencodable_at


class InputError(QAError):
    """A context or question that cannot be answered; the message names the flag or file."""


@dataclass
class Answer:
    question: str
    answer: str
    score: float          # start logit + end logit of the chosen span
    start_char: int       # character span in the context, end exclusive
    end_char: int
    null_score: float     # CLS start + end logit (higher means "no answer" is more likely)
    # --top_k K > 1: the K best distinct spans, best first ({answer, score, start_char, end_char})
    top_k: list[dict] | None = None

    def as_json(self) -> dict:
        """The answer as JSON data; a NaN or infinite score is ``null`` (strict JSON has no
        ``-Infinity``)."""
        return {k: finite_or_none(v) for k, v in asdict(self).items()
                if k != "top_k" or v is not None}


def finite_or_none(value):
    """``value`` with every non-finite float (also inside lists and dicts) turned into None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def demo_passage() -> dict:
    """The packaged comic-books passage and its four questions."""
    return json.loads(resources.files("qa_core").joinpath("data/comic_books.json")
                      .read_text(encoding="utf-8"))


def demo_verdicts(answers: list[str], passage: dict) -> list[str]:
    """For each demo answer, "right" or why it is wrong, by the passage's ``key_words``: the
    answer's SQuAD-normalised words must hold all of its question's key words and none of
    another question's (an answer that runs on into the next fact is not right)."""
    from qa_core.metrics import normalize_answer

    key_words = passage["key_words"]
    verdicts = []
    for i, answer in enumerate(answers):
        words = set(normalize_answer(answer).split())
        missing = [w for w in key_words[i] if w not in words]
        extra = [w for j, keys in enumerate(key_words) if j != i for w in keys
                 if w in words and w not in key_words[i]]
        verdicts.append("wrong: " + "; ".join(
            ([f"lacks {' '.join(missing)}"] if missing else [])
            + ([f"runs into another answer ({' '.join(extra)})"] if extra else []))
            if missing or extra else "right")
    return verdicts


def answer_questions(model, tokenizer, questions: list[str], context: str,
                     decode_config: DecodeConfig = DecodeConfig(),
                     feature_config: FeatureConfig = FeatureConfig(),
                     batch_size: int = 16, top_k: int = 1) -> list[Answer]:
    """Answer each question about ``context``; long contexts are windowed as in training, and
    logits become answers through evaluation's path (:func:`accumulate_logits`). With
    ``top_k`` > 1 each answer also lists its question's ``top_k`` best distinct spans. A
    question that no window can hold is an :class:`InputError` (:func:`check_windows`)."""
    builder = FeatureBuilder(tokenizer, feature_config)
    check_windows(tokenizer, questions, context, feature_config, builder)  # encodes the context
    # the windows are built one question at a time as the model reads them: memory holds one
    # question's windows, not questions x context length
    examples = [{"id": str(i), "question": q, "context": context,
                 "answers": {"text": [], "answer_start": []}} for i, q in enumerate(questions)]
    windows = ExampleWindows(builder, examples, tokenizer.pad_token_id, batch_size)
    references = EvalReferences(
        example_ids=[e["id"] for e in examples], contexts=[context] * len(examples),
        gold_answers=[[] for _ in examples], feature_example_index=np.zeros(0, np.int32),
        start_positions=np.zeros(0, np.int32), end_positions=np.zeros(0, np.int32),
        offsets=windows.offsets)
    accumulator = EvalAccumulator(references, decode_config, spans_per_feature=top_k)
    accumulate_logits(model, windows, accumulator)
    # which question each window answers is known once every window is built (the answers
    # need nothing else: no gold labels are scored here)
    accumulator.references = replace(references, feature_example_index=windows.example_index)
    predictions, ranked = accumulator.answers(top_k)
    answers = []
    for i, question in enumerate(questions):
        best = predictions[str(i)]
        spans = [{"answer": p.text, "score": p.score, "start_char": p.start_char,
                  "end_char": p.end_char} for p in ranked.get(str(i), [])]
        answers.append(Answer(question, best.text, float(best.score), best.start_char,
                              best.end_char, float(best.null_score),
                              spans if top_k > 1 else None))
    return answers


def read_context_file(path: str) -> str:
    """The UTF-8 text of ``--context_file``; unreadable or non-UTF-8 files are an InputError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"--context_file {path}: cannot read it ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InputError(f"--context_file {path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                         f"offset {err.start}, line {line})") from None


def check_unicode(text: str, what: str) -> None:
    """``text`` must encode as UTF-8: a command-line byte that is not UTF-8 reaches Python as a
    lone surrogate (U+DC80..U+DCFF), which nothing downstream can encode."""
    at = unencodable_at(text)
    if at is not None:
        code = ord(text[at])
        found = (f"byte 0x{code - 0xDC00:02x}, not UTF-8," if 0xDC80 <= code <= 0xDCFF
                 else f"lone surrogate U+{code:04X}")
        raise InputError(f"{what} is not valid Unicode text ({found} at character {at + 1})")


def check_inputs(context: str, questions: list[str], top_k: int = 1) -> None:
    """Something to answer: a context and questions that are valid Unicode and not empty or
    only whitespace."""
    if top_k < 1:
        raise InputError(f"--top_k: must be at least 1, got {top_k}")
    if is_blank(context):
        raise InputError("the context is empty or only whitespace (or zero-width / combining "
                         "characters): nothing to answer from")
    blank = [i + 1 for i, q in enumerate(questions) if is_blank(q)]
    if blank:
        raise InputError(f"--question number {blank[0]} is empty or only whitespace (or "
                         "zero-width / combining characters)")
    check_unicode(context, "--context")
    for number, question in enumerate(questions, 1):
        check_unicode(question, f"--question number {number}")


def check_windows(tokenizer, questions: list[str], context: str,
                  feature_config: FeatureConfig, builder: FeatureBuilder | None = None) -> None:
    """Every question gets at least one window, by the rule :meth:`FeatureBuilder.build` skips
    examples with (:meth:`FeatureBuilder.no_window_reason`), which would leave it an empty
    answer. Refusals name the flag or the question (``--max_length`` above the tokenizer's
    limit: :func:`~qa_core.features.check_tokenizer`). ``builder``: the one that will build the
    windows, so the context is tokenized once for both."""
    builder = builder or FeatureBuilder(tokenizer, feature_config)
    max_length, doc_stride = feature_config.max_length, feature_config.doc_stride
    encode = tokenizer.backend_tokenizer.encode  # as FeatureBuilder.build tokenizes
    context_tokens = builder.context_token_count(context)
    for number, question in enumerate(questions, 1):
        tokens = len(encode(question.lstrip(), add_special_tokens=False).ids)
        reason = builder.no_window_reason(tokens, context_tokens)
        room = builder.context_capacity(tokens)
        if reason == "context_has_no_tokens":
            raise InputError("the context has no tokens for this model's tokenizer (only "
                             "characters it drops): nothing to answer from")
        if reason == "question_too_long" and room <= 0:
            raise InputError(f"--question number {number} is too long for --max_length "
                             f"{max_length} ({tokens} tokens): nothing left for the context")
        if reason == "question_too_long":
            raise InputError(f"--question number {number} ({tokens} tokens) leaves {room} context "
                             f"tokens per window with --max_length {max_length}, not more than "
                             f"--doc_stride {doc_stride}: lower --doc_stride or raise --max_length")


def load_model_tokenizer(model: str):
    """The tokenizer of a model folder (or hub name); a ModelFolderError names it."""
    from qa_core.pipeline import load_tokenizer

    check_model_folder(model)
    try:
        return load_tokenizer(model)
    except QAError:  # names the folder already
        raise
    except ValueError as err:  # transformers' conversion error for a hub name
        raise ModelFolderError(f"--model {model}: cannot load its tokenizer "
                               f"({first_line(err)})") from None


def check_answers(answers: list[Answer], model: str, n_best_size: int) -> None:
    """Each question must get an answer: a span, or "" where ``--allow_no_answer`` let the
    no-answer score win. With windows for every question (:func:`check_windows`), neither
    means non-finite logits (unusable weights), or no valid span among the ``n_best_size``
    best starts and ends (a setting to raise)."""
    for number, answer in enumerate(answers, 1):
        if not math.isfinite(answer.null_score):
            raise ModelFolderError(f"--model {model}: its logits are NaN or inf for --question "
                                   f"number {number}: its weights are unusable")
        if answer.start_char < 0 and not math.isfinite(answer.score):
            raise InputError(f"--question number {number}: no valid span among the "
                             f"--n_best_size {n_best_size} best start and end tokens (each end "
                             "before its start, or too far after it); raise --n_best_size")


def parse_args(argv: list[str] | None):
    """(FeatureArgs, DecodeArgs, the rest): windows and decoding are training's settings."""
    from transformers import HfArgumentParser

    from qa_core.settings import DecodeArgs, FeatureArgs, parse_dataclasses

    parser = HfArgumentParser((FeatureArgs, DecodeArgs), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a trained model folder (train_accelerate.py output)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--context", help="context text")
    source.add_argument("--context_file", help="file holding the context (UTF-8)")
    parser.add_argument("--question", action="append", default=[],
                        help="a question; repeat for several")
    parser.add_argument("--top_k", type=int, default=1,
                        help="also list each question's K best distinct spans, best first (the "
                             "windows' n_best_size best starts and ends make them)")
    parser.add_argument("--demo", action="store_true",
                        help="the packaged comic-books passage and its questions")
    features, decode, args = parse_dataclasses(parser, argv)
    if not args.demo and ((args.context is None and not args.context_file) or not args.question):
        parser.error("give a context (--context or --context_file) and at least one --question, "
                     "or --demo")
    repeated = next((q for i, q in enumerate(args.question) if q in args.question[:i]), None)
    if repeated is not None:  # the summary's answers, keyed by question, would hold it once
        parser.error(f"--question {repeated!r} is given twice")
    if args.demo and (args.context is not None or args.context_file):
        # the demo answers from its own passage: a given context would be dropped unsaid
        parser.error("--demo answers from the packaged passage: give --context/--context_file "
                     "or --demo, not both (--question may go with either)")
    return features, decode, args


def main(argv: list[str] | None = None) -> int:
    from qa_core.settings import check_settings

    features, decode, args = parse_args(argv)
    try:
        check_settings(features, decode)
        if args.demo:
            passage = demo_passage()
            context, questions = passage["context"], args.question or passage["questions"]
        else:
            questions = args.question
            context = read_context_file(args.context_file) if args.context_file else args.context
        check_inputs(context, questions, args.top_k)
        tokenizer = load_model_tokenizer(args.model)
        feature_config = FeatureConfig(features.max_length, features.doc_stride)
        check_windows(tokenizer, questions, context, feature_config)  # before loading the model
        # a model without a trained QA head would answer with a random one
        with quiet_model_loading():
            model = load_qa_model(args.model, trained_head=True)
        answers = answer_questions(model, tokenizer, questions, context,
                                   decode.decode_config(has_unanswerable=False), feature_config,
                                   top_k=args.top_k)
        check_answers(answers, args.model, decode.n_best_size)
    except QAError as err:
        return exit_with_error("qa-answer", err)
    except KeyboardInterrupt:
        return exit_interrupted("qa-answer")
    for answer in answers:  # allow_nan=False: never -Infinity or NaN, which strict JSON lacks
        print(json.dumps(answer.as_json(), ensure_ascii=False, allow_nan=False))
    print(json.dumps({"model": args.model, "questions": len(answers),
                      "answers": {a.question: a.answer for a in answers}}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
