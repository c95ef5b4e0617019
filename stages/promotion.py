"""Champion vs challenger: which candidate a run puts forward, and whether it takes the champion alias.

The champion is a rival whenever one exists, also when it is one of this run's candidates (a
re-evaluated fine-tune beside the DPO model trained from it): a new model must beat it by the
margin. A candidate that is the champion does not have to beat itself, only the baselines.
"""

from dataclasses import dataclass
from typing import Any

LOWER_IS_BETTER = {"perplexity": True, "loss": True, "rouge_l": False, "exact_match": False}


def relative_gain(candidate: float, reference: float, metric: str) -> float:
    """How much better `candidate` is than `reference`, as a fraction of the reference (>0 = better)."""
    if reference == 0:
        return float("inf") if candidate != reference else 0.0
    gain = (reference - candidate) / abs(reference)
    return gain if LOWER_IS_BETTER[metric] else -gain


@dataclass(frozen=True)
class Candidate:
    """A model this run evaluated for promotion: its registered version and its held-out scores."""

    version: str
    scores: dict[str, Any]


@dataclass(frozen=True)
class Promotion:
    """The decision, which explains itself in `reason`."""

    candidate: str  # the best candidate's name (fine_tuned, preference)
    version: str  # its registered version
    promoted: bool  # it beat every rival it had to: newly crowned, or kept as the champion
    alias: str | None  # the alias to set on `version`; None: the champion keeps its alias, nothing moves
    champion_version: str | None  # the champion after this decision
    reason: str


def choose(
    candidates: dict[str, Candidate],
    champion_version: str | None,
    champion_scores: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any] | None],
    metric: str,
    margin: float,
) -> Promotion:
    """The best candidate by `metric`, promoted only if it beats every rival by more than `margin`.

    Rivals: the champion first (its scores are the candidate's own when it is a candidate), then
    each baseline with a score. Ties between candidates go to the champion, then to the first listed.
    """
    if not candidates:
        raise ValueError("no candidates to choose from: model_evaluation needs a fine-tuned model")
    incumbent = next((n for n, c in candidates.items() if c.version == champion_version), None)
    if incumbent is not None:
        champion_scores = candidates[incumbent].scores  # scored in this run, beside the others
    if champion_version is not None and (champion_scores or {}).get(metric) is None:
        raise ValueError(f"champion v{champion_version} has no {metric} score: evaluate it before deciding")
    sign = 1 if LOWER_IS_BETTER[metric] else -1
    order = list(candidates)
    best = min(order, key=lambda n: (sign * candidates[n].scores[metric], n != incumbent, order.index(n)))
    chosen = candidates[best]
    label, value = f"{best} v{chosen.version}", f"{metric} {chosen.scores[metric]:.4g}"
    rivals = {name: scores for name, scores in baselines.items() if scores and scores.get(metric) is not None}

    if best == incumbent:
        others = [f"{n} v{c.version}" for n, c in candidates.items() if n != best]
        beaten = (
            f"; {' and '.join(others)} {'does' if len(others) == 1 else 'do'} not beat it" if others else ""
        )
        stays = f"{label} is the champion and the best candidate ({value}){beaten}"
        shortfall = _shortfall(chosen.scores, rivals, metric, margin)
        if shortfall is None:
            reason = f"{stays}; it beats the baselines by more than {margin:.2%}"
        else:
            reason = (
                f"{stays}, but {shortfall}; it stays champion until a candidate beats it and the baselines"
            )
        return Promotion(best, chosen.version, shortfall is None, None, champion_version, reason)
    if champion_version is not None:
        rivals = {f"the champion v{champion_version}": champion_scores, **rivals}
    shortfall = _shortfall(chosen.scores, rivals, metric, margin)
    if shortfall is not None:
        return Promotion(best, chosen.version, False, "challenger", champion_version, f"{label}: {shortfall}")
    against = (
        f"the champion v{champion_version} and the baselines"
        if champion_version is not None
        else "the baselines (no champion yet)"
    )
    reason = f"{label}: {value} beats {against} by more than {margin:.2%}"
    return Promotion(best, chosen.version, True, "champion", chosen.version, reason)


def _shortfall(
    scores: dict[str, Any], rivals: dict[str, dict[str, Any]], metric: str, margin: float
) -> str | None:
    """Why `scores` do not beat the first rival they fall short of by `margin`; None if they beat all."""
    for name, rival in rivals.items():
        gain = relative_gain(scores[metric], rival[metric], metric)
        if gain <= margin:
            return (
                f"{metric} {scores[metric]:.4g} does not beat {name} ({rival[metric]:.4g}) "
                f"by the promotion margin {margin:.2%} (gain {gain:.2%})"
            )
    return None
