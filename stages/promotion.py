"""Champion vs challenger: promote only a model that is better by a margin."""

from typing import Any

LOWER_IS_BETTER = {"perplexity": True, "loss": True, "rouge_l": False, "exact_match": False}


def relative_gain(candidate: float, reference: float, metric: str) -> float:
    """How much better `candidate` is than `reference`, as a fraction of the reference (>0 = better)."""
    if reference == 0:
        return float("inf") if candidate != reference else 0.0
    gain = (reference - candidate) / abs(reference)
    return gain if LOWER_IS_BETTER[metric] else -gain


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]],
    metric: str,
    margin: float,
) -> tuple[bool, str]:
    """(promote?, reason). The candidate must beat the champion and every baseline by `margin`."""
    rivals = {name: m for name, m in baselines.items() if m and m.get(metric) is not None}
    if champion is not None:
        rivals["champion"] = champion
    for name, rival in rivals.items():
        gain = relative_gain(candidate[metric], rival[metric], metric)
        if gain <= margin:
            return False, (
                f"{metric} {candidate[metric]:.4g} does not beat {name} ({rival[metric]:.4g}) "
                f"by the promotion margin {margin:.2%} (gain {gain:.2%})"
            )
    against = "the champion and the baselines" if champion is not None else "the baselines (no champion yet)"
    return True, f"{metric} {candidate[metric]:.4g} beats {against} by more than {margin:.2%}"
