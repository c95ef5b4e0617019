"""A prompt variant applied to records: the conversation each record is asked in.

    conversations(variant, records, pool, seed)   # what the model sees before its answer

Context and similar examples come from `pool`, training records with a prompt, ranked by TF-IDF
cosine (scikit-learn: installed with MLflow, no model to download; a 135M model's own embeddings
would cost a forward pass per pool record). A held-out question never sees itself: the pool is
training data, which decontamination keeps apart from the eval sets.
"""

import hashlib
import json
import string
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from stages.chat import prompt_messages, response_text
from stages.prompt_config import PLAIN, PromptVariant
from stages.split import eval_score

MAX_EXAMPLE_CHARS = 400  # examples shown whole: short answers keep a few-shot prompt within ~600 tokens


def question(record: dict[str, Any]) -> str:
    """The record's last user turn ('' for a document)."""
    return next((m["content"] for m in reversed(record["messages"]) if m["role"] == "user"), "")


def example_pool(train: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Original (not augmented) training records with a prompt: what examples and context come from."""
    return [
        r for r in train if r.get("augmentation", "none") == "none" and r["schema"] != "text" and question(r)
    ]


class Retriever:
    """The pool records most similar to a question: TF-IDF over each record's question and answer."""

    def __init__(self, pool: list[dict[str, Any]]):
        if not pool:
            raise ValueError("no training records with a prompt to retrieve from: context and similar "
                             "examples need instruction or chat records in the training set")  # fmt: skip
        self.pool = pool
        # Character 3-5-grams within words: `json.dump` finds `json.dumps`, which whole words miss (a
        # question names an object; the closest records name the same module or a sibling).
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform([f"{question(r)}\n{response_text(r)}" for r in pool])

    def nearest(self, queries: list[str], k: int, max_chars: int | None = None) -> list[list[dict[str, Any]]]:
        """The k most similar pool records to each query (ties: pool order); `max_chars` filters out
        longer answers first."""
        allowed = np.array([max_chars is None or len(response_text(r)) <= max_chars for r in self.pool])
        scores = (self.vectorizer.transform(queries) @ self.matrix.T).toarray()
        scores[:, ~allowed] = -1.0
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self.pool[i] for i in row if scores[q, i] >= 0] for q, row in enumerate(order)]


def random_examples(pool: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """k short pool records chosen by a stable hash: the same examples for every question and run."""
    short = [r for r in pool if len(response_text(r)) < MAX_EXAMPLE_CHARS]
    return sorted(short, key=lambda r: eval_score(r["id"], seed + 7))[:k]


def conversations(
    variant: PromptVariant, records: list[dict[str, Any]], pool: list[dict[str, Any]], seed: int
) -> list[list[dict[str, str]]]:
    """The prompt (messages before the answer) `variant` gives each record; a document is unchanged."""
    needs_index = variant.context or (variant.examples and variant.examples.select == "similar")
    retriever = Retriever(pool) if needs_index else None
    queries = [question(r) for r in records]
    context = retriever.nearest(queries, variant.context.k) if retriever and variant.context else None
    if variant.examples and variant.examples.select == "similar":
        examples = retriever.nearest(queries, variant.examples.k, MAX_EXAMPLE_CHARS)
    elif variant.examples:
        examples = [random_examples(pool, variant.examples.k, seed)] * len(records)
    else:
        examples = [[]] * len(records)
    return [
        ask(variant, record, examples[i], context[i] if context else []) for i, record in enumerate(records)
    ]


def ask(
    variant: PromptVariant,
    record: dict[str, Any],
    examples: list[dict[str, Any]],
    context: list[dict[str, Any]],
) -> list[dict[str, str]]:
    """One record's prompt: the variant's system message (else the record's own), the examples as
    earlier turns, the record's earlier turns, and its question put into the template."""
    earlier = prompt_messages(record)
    turns = [m for m in earlier if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        return earlier  # a document: nothing to put into a template
    system = (
        [{"role": "system", "content": variant.system}]
        if variant.system
        else [m for m in earlier if m["role"] == "system"]
    )
    shots = [m for shot in examples for m in shot["messages"] if m["role"] != "system"]
    cut = variant.context.max_chars if variant.context else 0
    reference = "\n\n".join(f"{question(r)}\n{response_text(r)[:cut]}" for r in context)
    user = variant.template.format(instruction=turns[-1]["content"], context=reference)
    return [*system, *shots, *turns[:-1], {"role": "user", "content": user}]


def applies(variant: PromptVariant, records: list[dict[str, Any]]) -> bool:
    """A variant other than the plain one needs a record with a prompt; on documents alone it would
    be the plain variant again."""
    return variant.name == PLAIN or any(r["schema"] != "text" for r in records)


def variant_hash(variant: PromptVariant) -> str:
    """The version of a variant's text: the data version of its partitions, the registry's dedup key."""
    return hashlib.sha256(json.dumps(variant.text(), sort_keys=True).encode()).hexdigest()[:16]


def registry_template(variant: PromptVariant) -> list[dict[str, str]]:
    """The variant as an MLflow chat prompt: system + user turn, placeholders as {{name}}."""
    user = "".join(
        literal + (f"{{{{{name}}}}}" if name is not None else "")
        for literal, name, _, _ in string.Formatter().parse(variant.template)
    )
    system = [{"role": "system", "content": variant.system}] if variant.system else []
    return [*system, {"role": "user", "content": user}]
