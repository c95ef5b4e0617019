"""Normalised exact match as a local `evaluate` metric (SQuAD-style normalisation; no hub download).

    exact = evaluate.load("stages/metrics/exact_match.py")   # or stages.metrics.load("exact_match")
    exact.compute(predictions=["the answer is 42."], references=["Answer is 42"])   # {'exact_match': 1.0}

Self-contained on purpose: `evaluate.load` copies this file and imports it on its own.
"""

import re
import string

import datasets
import evaluate

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_DESCRIPTION = "Share of predictions equal to their reference after normalisation."
_INPUTS = """
Args:
    predictions: generated texts.
    references: one reference text per prediction.
Returns:
    exact_match: share of pairs equal after lower-casing and dropping punctuation, articles and
    repeated spaces (nan when there are none).
"""


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al. (2016). SQuAD: 100,000+ Questions for Machine Comprehension of Text.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        matches = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"exact_match": sum(matches) / len(matches) if matches else float("nan")}
