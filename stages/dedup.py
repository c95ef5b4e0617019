"""Cross-partition deduplication, keeping the first record in a stable order.

Exact duplicates are found by a hash of the normalised response (case, whitespace and
punctuation folded), so `os.stat` and `posix.stat` with the same docstring collapse to one.
Near duplicates are found by MinHash LSH (stages/near_dedup.py) with signatures cached by content.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from stages.near_dedup import lsh_join, minhash_signatures, words

_NON_WORD = re.compile(r"[\W_]+")


def conversation_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def normalised_hash(text: str) -> str:
    folded = _NON_WORD.sub(" ", text.lower()).strip()
    return hashlib.sha1(folded.encode()).hexdigest()


def with_response_hash(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with `response_hash`, the exact-dedup key: the answers (every assistant turn of a
    dialogue, the one answer otherwise). Set per landing file (clean_corpus), so a data fix
    re-hashes only the records of its own file."""
    return [{**r, "response_hash": normalised_hash(_answers(r))} for r in records]


def _answers(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")


def exact_dedup(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, duplicates); each duplicate names the id it duplicates. Input order is the keep order.

    The response alone is hashed (`with_response_hash`): two prompts with the same answer teach the
    same thing twice.
    """
    first_by_hash: dict[str, str] = {}
    kept, duplicates = [], []
    for record in records:
        digest = record["response_hash"]
        if digest in first_by_hash:
            duplicates.append({**record, "duplicate_of": first_by_hash[digest]})
        else:
            first_by_hash[digest] = record["id"]
            kept.append(record)
    return kept, duplicates


def content_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def cached_signatures(texts: list[str], cache_file: Path, num_perm: int, ngram: int) -> np.ndarray:
    """MinHash signatures, computed only for texts not seen before (cache keyed by content hash).

    A data fix that edits one record recomputes one signature; the LSH join still runs over all.
    """
    keys = [content_key(t) for t in texts]
    cache: dict[str, np.ndarray] = {}
    if cache_file.is_file():
        with np.load(cache_file) as stored:
            cache = dict(zip(stored["keys"].tolist(), stored["signatures"], strict=True))
    missing = sorted({k for k in keys if k not in cache})
    if missing:
        by_key = dict(zip(keys, texts, strict=True))
        fresh = minhash_signatures([by_key[k] for k in missing], num_perm=num_perm, ngram=ngram)
        cache.update(zip(missing, fresh, strict=True))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(cache)), signatures=np.stack(list(cache.values())))
        tmp.replace(cache_file)
    if not keys:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.stack([cache[k] for k in keys])


def near_dedup(
    records: list[dict[str, Any]],
    cache_file: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, near duplicates) by MinHash LSH on the responses; keeps the first in input order.

    Responses under `min_words` words are left to exact dedup: "10% of the words edited" is not a
    near-duplicate of a five-word answer, it is a different answer.
    """
    eligible = [i for i, r in enumerate(records) if len(words(r["messages"][-1]["content"])) >= min_words]
    texts = [records[i]["messages"][-1]["content"] for i in eligible]
    duplicate_of = lsh_join(cached_signatures(texts, cache_file, num_perm, ngram), threshold)
    dropped: dict[int, str] = {
        eligible[j]: records[eligible[d]]["id"] for j, d in enumerate(duplicate_of) if d is not None
    }
    kept = [r for i, r in enumerate(records) if i not in dropped]
    near = [{**records[i], "duplicate_of": first} for i, first in sorted(dropped.items())]
    return kept, near


def residual_duplicates(
    records: list[dict[str, Any]],
    cache_file: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
) -> list[dict[str, Any]]:
    """Records whose response exactly or nearly duplicates an earlier one's, each naming it.

    What the `duplicate_rate` gate measures after dedup: with `min_words` below dedup's own, it
    also sees the short near-copies dedup leaves alone, so it is not zero by construction.
    """
    kept, exact = exact_dedup(records)
    _, near = near_dedup(kept, cache_file, threshold, ngram, num_perm, min_words)
    return exact + near
