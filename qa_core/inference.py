"""Answer questions about a context with a trained model folder, using the evaluation decoder.

    qa-answer --model runs/demo --context_file passage.txt --question "Who created Superman?"
    qa-answer --model runs/demo --demo        # the comic-books passage and its four questions

Each answer is printed as one JSON line; the last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from qa_core.batching import FeatureRows, model_inputs, select_first_examples
from qa_core.decode import DecodeConfig, best_answers, concat_feature_spans, feature_topk_spans
from qa_core.features import FeatureBuilder, FeatureConfig


@dataclass
class Answer:
    question: str
    answer: str
    score: float          # start logit + end logit of the chosen span
    start_char: int       # character span in the context, end exclusive
    end_char: int
    null_score: float     # CLS start + end logit (higher means "no answer" is more likely)


def demo_passage() -> dict:
    """The packaged comic-books passage and its four questions."""
    return json.loads(resources.files("qa_core").joinpath("data/comic_books.json").read_text(encoding="utf-8"))


@torch.no_grad()
def answer_questions(model, tokenizer, questions: list[str], context: str,
                     decode_config: DecodeConfig = DecodeConfig(),
                     feature_config: FeatureConfig = FeatureConfig(), batch_size: int = 16) -> list[Answer]:
    """Answer each question about ``context``; long contexts are windowed as in training."""
    examples = [{"id": str(i), "question": q, "context": context, "answers": {"text": [], "answer_start": []}}
                for i, q in enumerate(questions)]
    batch, _ = FeatureBuilder(tokenizer, feature_config).build(examples)
    table = pa.Table.from_batches([batch])
    # A question too long for any window has none: number features by question, not by appearance.
    selection = select_first_examples(table, pa.table({"id": [e["id"] for e in examples]}), None)
    features = FeatureRows(table, tokenizer.pad_token_id, selection=selection)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    spans = []
    for begin in range(0, len(features), batch_size):
        indices = np.arange(begin, min(begin + batch_size, len(features)))
        inputs = model_inputs(features.__getitems__(indices))
        inputs = {k: v.to(device) for k, v in inputs.items()
                  if k not in ("start_positions", "end_positions")}
        outputs = model(**inputs)
        offsets = features.offsets(indices)
        spans.append(feature_topk_spans(outputs.start_logits.float().cpu().numpy(),
                                        outputs.end_logits.float().cpu().numpy(), offsets,
                                        decode_config.n_best_size, decode_config.max_answer_length,
                                        spans_per_feature=1))
    model.train(was_training)
    predictions = best_answers(concat_feature_spans(spans), features.example_index,
                               [context] * len(questions), [e["id"] for e in examples],
                               decode_config)
    return [Answer(q, predictions[str(i)].text, float(predictions[str(i)].score), predictions[str(i)].start_char,
                   predictions[str(i)].end_char, float(predictions[str(i)].null_score))
            for i, q in enumerate(questions)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model folder (train_accelerate.py output)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--context", help="context text")
    source.add_argument("--context_file", help="file holding the context (UTF-8)")
    parser.add_argument("--question", action="append", default=[], help="a question; repeat for several")
    parser.add_argument("--demo", action="store_true", help="the packaged comic-books passage and its questions")
    parser.add_argument("--max_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_answer_length", type=int, default=30)
    args = parser.parse_args(argv)

    if args.demo:
        passage = demo_passage()
        context, questions = passage["context"], args.question or passage["questions"]
    else:
        context = Path(args.context_file).read_text(encoding="utf-8") if args.context_file else args.context
        questions = args.question
    if not context or not questions:
        parser.error("give a context (--context or --context_file) and at least one --question, or --demo")

    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, use_fast=True)
        model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    except OSError as err:
        print(f"qa-answer: error: cannot load model {args.model!r}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    answers = answer_questions(model, tokenizer, questions, context,
                               DecodeConfig(max_answer_length=args.max_answer_length),
                               FeatureConfig(args.max_length, args.doc_stride))
    for answer in answers:
        print(json.dumps(asdict(answer), ensure_ascii=False))
    print(json.dumps({"model": args.model, "questions": len(answers),
                      "answers": {a.question: a.answer for a in answers}}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
