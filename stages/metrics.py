"""Evaluation metrics, all offline: ROUGE-L (rouge-score), normalised exact match, perplexity."""

import math
import re
import string
from functools import cache

from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of word tokens)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def perplexity(mean_nll: float) -> float:
    # Guard the overflow of exp for a useless model instead of returning inf silently.
    return math.exp(min(mean_nll, 50.0))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
