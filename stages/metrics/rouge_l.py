"""ROUGE-L F1 as a local `evaluate` metric (rouge-score underneath; no hub download).

    rouge = evaluate.load("stages/metrics/rouge_l.py")   # or stages.metrics.load("rouge_l")
    rouge.compute(predictions=["the cat lay on a mat"], references=["the cat sat on the mat"])
    # {'rouge_l': 0.666...}

Self-contained on purpose: `evaluate.load` copies this file and imports it on its own.
"""

from functools import cache

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L F1: the longest common subsequence of word tokens, averaged over examples."
_INPUTS = """
Args:
    predictions: generated texts.
    references: one reference text per prediction.
Returns:
    rouge_l: mean ROUGE-L F1 over the pairs (nan when there are none).
"""


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction against its reference."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        scores = [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"rouge_l": sum(scores) / len(scores) if scores else float("nan")}
