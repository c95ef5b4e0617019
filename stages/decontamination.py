"""n-gram decontamination of train against every eval set (13 words by default, as GPT-3 did).

A train record that shares any word n-gram with an eval record is removed and counted: it would
let the model see the answer it is later scored on.
"""

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stages.scan_cache import CleanSet, digest

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def record_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def eval_ngrams(eval_records: Iterable[dict[str, Any]], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for record in eval_records:
        grams |= ngrams(record_text(record), n)
    return grams


def decontaminate(
    train: list[dict[str, Any]],
    eval_records: list[dict[str, Any]],
    n: int,
    cache_file: Path | None = None,
    text: Callable[[dict[str, Any]], str] = record_text,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean train, contaminated train records, each with the first shared n-gram).

    `text` is what is scanned of each train record (all its messages by default). With
    `cache_file`, train texts already found clean against this very eval set are not scanned
    again, and the ones found clean now are remembered for the next run.
    """
    grams = eval_ngrams(eval_records, n)
    texts = [text(r) for r in train]

    def shared_ngrams(text: str) -> set[tuple[str, ...]]:
        return ngrams(text, n) & grams

    if cache_file is None:
        hits: list[set[tuple[str, ...]] | None] = [shared_ngrams(t) for t in texts]
    else:
        eval_digest = digest(chr(0).join(sorted(record_text(r) for r in eval_records)))
        hits = CleanSet(cache_file, f"{n}:{eval_digest}").scan(texts, shared_ngrams)
    clean, contaminated = [], []
    for record, shared in zip(train, hits, strict=True):
        if shared:
            contaminated.append({**record, "shared_ngram": " ".join(min(shared))})
        else:
            clean.append(record)
    return clean, contaminated
