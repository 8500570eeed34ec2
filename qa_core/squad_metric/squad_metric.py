"""SQuAD v1.1/v2.0 exact match and F1 as a local ``evaluate`` module.

Load it with ``qa_core.metrics.load_evaluate_metric()`` (or
``evaluate.load("<path to this folder>")``); nothing is fetched from the hub.
The scores come from ``qa_core.metrics.squad_scores`` so both entry points
always agree.
"""

import datasets
import evaluate

from qa_core.metrics import squad_scores

_DESCRIPTION = """\
Stanford Question Answering Dataset metric: exact match and token-overlap F1
after the official answer normalisation, maximised over the gold answers.
Questions without gold answers (SQuAD v2.0) have "" as their only gold answer
and add a HasAns_/NoAns_ breakdown to the result.
"""

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str], "answer_start": [int]}}.
Returns:
    exact_match, f1 (percentages), total, missing_predictions and, when some
    question is unanswerable, HasAns_exact/HasAns_f1/HasAns_total and
    NoAns_exact/NoAns_f1/NoAns_total.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadMetric(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                    },
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.features.Sequence(
                            {
                                "text": datasets.Value("string"),
                                "answer_start": datasets.Value("int32"),
                            }
                        ),
                    },
                }
            ),
        )

    def _compute(self, predictions, references):
        return squad_scores({p["id"]: p["prediction_text"] for p in predictions},
                            {r["id"]: list(r["answers"]["text"]) for r in references})
