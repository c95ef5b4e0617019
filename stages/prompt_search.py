"""Iterative refinement, automated: a small coordinate search over prompt variants on a dev split.

    dev, pool = dev_split(train, held_out_keys, n=16, seed=0)
    found = search(space, budget=4, metric="rouge_l", score=lambda variant: ...)

The dev split is taken from training data, never from an eval set: `dev_split` drops every record
whose key an eval set holds (decontamination already keeps them apart; a leaked one would make
the search fit the test). The search starts from the plainest candidate and changes one setting at
a time (system message, then examples, then context), keeping a change only when the dev score
improves, until `budget` candidates were scored. DSPy and MLflow's prompt optimisers were the
library options; both drive an LLM client (an optimiser model writes the candidates), which a
bundled 135M model on CPU does not serve, so the search is this explicit loop.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stages.prompt_config import ContextSpec, ExamplesSpec, PromptSearchConfig, PromptVariant
from stages.prompts import example_pool
from stages.split import eval_score

SEARCHED = "searched"  # the winner's variant name (and registry prompt)
CONTEXT_TEMPLATE = "Reference documentation of related Python objects:\n{context}\n\nQuestion: {instruction}"


def dev_split(
    train: list[dict[str, Any]], held_out_keys: set[str], n: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dev records, retrieval pool): n training originals with a prompt chosen by stable hash, and the
    other originals; a record whose record_key or id is in `held_out_keys` is in neither."""
    usable = [
        r
        for r in example_pool(train)
        if r.get("record_key") not in held_out_keys and r["id"] not in held_out_keys
    ]
    ranked = sorted(usable, key=lambda r: eval_score(r["id"], seed + 11))
    if len(ranked) < n + 1:
        raise ValueError(f"prompt_search.dev_examples {n} needs more training records with a prompt than "
                         f"the {len(ranked)} there are; lower it")  # fmt: skip
    return ranked[:n], ranked[n:]


def candidate(system: str, examples_k: int, select: str, context_k: int) -> PromptVariant:
    return PromptVariant(
        name=SEARCHED,
        system=system or None,
        template=CONTEXT_TEMPLATE if context_k else "{instruction}",
        context=ContextSpec(k=context_k) if context_k else None,
        examples=ExamplesSpec(k=examples_k, select=select) if examples_k else None,
    )


@dataclass
class SearchResult:
    winner: PromptVariant
    winner_scores: dict[str, Any]
    tried: list[dict[str, Any]] = field(default_factory=list)  # {candidate settings..., dev scores, kept}


def search(space: PromptSearchConfig, score: Callable[[PromptVariant], dict[str, Any]]) -> SearchResult:
    """Coordinate search: from (first system, no examples, no context), try each other value of each
    setting in turn, keep it if the dev `space.metric` improves; stop after `space.budget` scores."""
    better = (lambda a, b: a > b) if space.metric == "rouge_l" else (lambda a, b: a < b)
    settings = {
        "system": space.systems[0],
        "examples_k": 0,
        "select": space.example_select[0],
        "context_k": 0,
    }
    moves = [("system", s) for s in space.systems[1:]]
    moves += [("examples_k", k) for k in space.examples_k if k]
    moves += [("select", s) for s in space.example_select[1:]]
    moves += [("context_k", k) for k in space.context_k if k]
    best = score(candidate(**settings))
    result = SearchResult(candidate(**settings), best, [{**settings, **_shown(best), "kept": True}])
    for key, value in moves:
        if len(result.tried) >= space.budget:
            break
        trial = {**settings, key: value}
        if trial["examples_k"] == 0 and key == "select":
            continue  # the selection of no examples: nothing to score
        scores = score(candidate(**trial))
        kept = better(scores[space.metric], best[space.metric])
        result.tried.append({**trial, **_shown(scores), "kept": kept})
        if kept:
            settings, best = trial, scores
            result.winner, result.winner_scores = candidate(**trial), scores
    return result


def _shown(scores: dict[str, Any]) -> dict[str, Any]:
    return {f"dev_{m}": scores.get(m) for m in ("rouge_l", "perplexity", "exact_match", "prompt_tokens")}
