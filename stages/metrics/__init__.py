"""Evaluation metrics, all offline: ROUGE-L and exact match as local `evaluate` modules, perplexity.

The two text metrics are `evaluate.Metric` subclasses in this folder, loaded from the project's
files (no hub), so they have the standard compute API and combine with others:

    from stages import metrics
    metrics.load("rouge_l").compute(predictions=[...], references=[...])      # {'rouge_l': ...}
    evaluate.combine([metrics.load("rouge_l"), metrics.load("exact_match")]).compute(...)

The per-pair functions (`rouge_l`, `exact_match`) are the same code, for one pair at a time.
"""

import math
from functools import cache
from pathlib import Path
from typing import Literal

import evaluate

from stages.metrics.exact_match import exact_match, normalise_answer
from stages.metrics.rouge_l import rouge_l

__all__ = ["exact_match", "load", "mean", "normalise_answer", "perplexity", "rouge_l"]

MODULES = Path(__file__).parent


@cache
def load(name: Literal["rouge_l", "exact_match"]) -> evaluate.EvaluationModule:
    """One of this folder's metrics through `evaluate.load` (from the file, never the hub)."""
    # keep_in_memory: no Arrow cache files under ~/.cache (and no file locks between parallel runs).
    return evaluate.load(str(MODULES / f"{name}.py"), keep_in_memory=True)


def perplexity(mean_nll: float) -> float:
    # Guard the overflow of exp for a useless model instead of returning inf silently.
    return math.exp(min(mean_nll, 50.0))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
