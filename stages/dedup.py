"""Cross-partition deduplication, keeping the first record in a stable order.

Exact duplicates are found by a hash of the normalised response (case, whitespace and
punctuation folded), so `os.stat` and `posix.stat` with the same docstring collapse to one.
Near duplicates are found by MinHash LSH (stages/near_dedup.py) with signatures cached by content.
"""

import hashlib
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.decontamination import record_text
from stages.near_dedup import lsh_join, minhash_signatures, words
from stages.workers import map_chunks

_NON_WORD = re.compile(r"[\W_]+")


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
    first = exact_duplicate_of([r["response_hash"] for r in records])
    kept = [r for i, r in enumerate(records) if i not in first]
    duplicates = [{**records[i], "duplicate_of": records[j]["id"]} for i, j in first.items()]
    return kept, duplicates


def exact_duplicate_of(hashes: list[str]) -> dict[int, int]:
    """{index: index of the first with the same hash} for every later one, in index order."""
    first_by_hash: dict[str, int] = {}
    duplicate_of = {}
    for i, digest in enumerate(hashes):
        j = first_by_hash.setdefault(digest, i)
        if j != i:
            duplicate_of[i] = j
    return duplicate_of


def content_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def cached_signatures(texts: list[str], cache_file: Path, num_perm: int, ngram: int) -> np.ndarray:
    """MinHash signatures, computed only for texts not seen before (cache keyed by content hash).

    A data fix that edits one record recomputes one signature; the LSH join still runs over all.
    """
    keys = [content_key(t) for t in texts]
    stored_keys, stored = np.zeros(0, dtype="<U40"), np.zeros((0, num_perm), dtype=np.uint32)
    if cache_file.is_file():
        with np.load(cache_file) as cached:
            stored_keys, stored = cached["keys"], cached["signatures"]
    # Rows of one array, not a dict of row views (1M views took ~200 MB more, benchmarks/scale.py).
    row_of = dict(zip(stored_keys.tolist(), range(len(stored_keys)), strict=True))
    missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in row_of}
    if missing:
        order = sorted(missing)
        sign = partial(minhash_signatures, num_perm=num_perm, ngram=ngram)  # per text: on every core
        fresh = np.concatenate(
            [np.zeros((0, num_perm), np.uint32), *map_chunks(sign, [missing[k] for k in order])]
        )
        row_of.update(zip(order, range(len(stored_keys), len(stored_keys) + len(order)), strict=True))
        stored_keys = np.concatenate([stored_keys, np.array(order)])
        stored = np.concatenate([stored, fresh])
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, keys=stored_keys, signatures=stored)
        tmp.replace(cache_file)
    return stored[np.array([row_of[k] for k in keys], dtype=np.int64)]


def near_dedup(
    records: list[dict[str, Any]],
    cache_file: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, near duplicates) by MinHash LSH on the responses; keeps the first in input order."""
    dropped = near_duplicate_of(
        [r["messages"][-1]["content"] for r in records], cache_file, threshold, ngram, num_perm, min_words
    )
    kept = [r for i, r in enumerate(records) if i not in dropped]
    near = [{**records[i], "duplicate_of": records[j]["id"]} for i, j in dropped.items()]
    return kept, near


def near_duplicate_of(
    responses: list[str], cache_file: Path, threshold: float, ngram: int, num_perm: int, min_words: int
) -> dict[int, int]:
    """{index: index of the kept response it near-duplicates}, in index order (MinHash LSH).

    Responses under `min_words` words are left to exact dedup: "10% of the words edited" is not a
    near-duplicate of a five-word answer, it is a different answer.
    """
    long_enough = [ok for part in map_chunks(partial(_at_least, min_words), responses) for ok in part]
    eligible = [i for i, ok in enumerate(long_enough) if ok]
    duplicate_of = lsh_join(
        cached_signatures([responses[i] for i in eligible], cache_file, num_perm, ngram), threshold
    )
    return {eligible[j]: eligible[d] for j, d in enumerate(duplicate_of) if d is not None}


def _at_least(min_words: int, texts: list[str]) -> list[bool]:
    return [len(words(text)) >= min_words for text in texts]


def residual_duplicate_of(
    hashes: list[str],
    responses: list[str],
    cache_file: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
) -> list[tuple[int, int]]:
    """(index, index it duplicates): exact duplicates first, then near ones, each in index order.

    What the `duplicate_rate` gate measures after dedup: with `min_words` below dedup's own, it
    also sees the short near-copies dedup leaves alone, so it is not zero by construction.
    """
    exact = exact_duplicate_of(hashes)
    kept = [i for i in range(len(hashes)) if i not in exact]
    near = near_duplicate_of([responses[i] for i in kept], cache_file, threshold, ngram, num_perm, min_words)
    return list(exact.items()) + [(kept[i], kept[j]) for i, j in near.items()]


def responses(table: pa.Table) -> list[str]:
    """The last message's content of every row (the response dedup compares), read from Arrow."""
    if not table.num_rows:
        return []
    messages = table.column("messages").combine_chunks()
    last = pc.subtract(messages.offsets[1:], 1)
    return messages.values.field("content").take(last).to_pylist()


def conversation_texts(table: pa.Table) -> list[str]:
    """`record_text` of every row, a batch of rows at a time."""
    messages = table.select(["messages"])
    return [record_text(r) for batch in messages.to_batches(8192) for r in batch.to_pylist()]


def with_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    return table.append_column(name, pa.array(values, pa.string()))
