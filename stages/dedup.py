"""Cross-partition deduplication, keeping the first record in a stable order.

Exact duplicates are found by a hash of the normalised response (case, whitespace and
punctuation folded), so `os.stat` and `posix.stat` with the same docstring collapse to one.
Near duplicates are found by MinHash LSH (stages/near_dedup.py) with signatures cached by record key.
"""

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.content import KeyRows, record_key
from stages.near_dedup import lsh_join, minhash_signatures, words
from stages.workers import LOCAL, Engine, map_chunks

_NON_WORD = re.compile(r"[\W_]+")


def normalised_hash(text: str) -> str:
    folded = _NON_WORD.sub(" ", text.lower()).strip()
    return hashlib.sha1(folded.encode()).hexdigest()


def with_keys(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with `response_hash`, the exact-dedup key (a hash of the answers: every assistant
    turn of a dialogue, the one answer otherwise), and `record_key` (stages/content.py), what the
    cross-file stages' caches are keyed by. Set per landing file (clean_corpus), so a data fix
    hashes only the records of its own file."""
    return [
        {**r, "response_hash": normalised_hash(_answers(r)), "record_key": record_key(r)} for r in records
    ]


def _answers(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")


def exact_dedup(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, duplicates); each duplicate names the id it duplicates. Input order is the keep order.

    The response alone is hashed (`with_keys`): two prompts with the same answer teach the
    same thing twice.
    """
    first = exact_duplicate_of([r["response_hash"] for r in records])
    kept = [r for i, r in enumerate(records) if i not in first]
    duplicates = [{**records[i], "duplicate_of": records[j]["id"]} for i, j in first.items()]
    return kept, duplicates


def exact_duplicate_of(hashes: list[str]) -> dict[int, int]:
    """{index: index of the first with the same hash} for every later one, in index order.

    By pandas' hash table (a dict filled one hash at a time took ~0.45 s a pass at 1M records).
    """
    codes, _ = pd.factorize(np.array(hashes, dtype=object))  # numbered in order of first appearance
    seen_before = np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]]) if len(codes) else codes
    first = np.flatnonzero(codes > seen_before)  # code k's first index is first[k]
    later = np.flatnonzero(codes <= seen_before)
    return dict(zip(later.tolist(), first[codes[later]].tolist(), strict=True))


SIGNATURE_PARTS = 16  # cache parts; past this, one compacted part replaces them


def cached_signatures(
    keys: np.ndarray,
    texts: Callable[[list[int]], list[str]],
    cache_dir: Path,
    num_perm: int,
    ngram: int,
    min_words: int = 0,
    engine: Engine = LOCAL,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the records with at least `min_words` words, their MinHash signatures) of each
    record's response, `texts(indices)` giving the responses of the records whose key the cache lacks.

    Keyed by `record_key` (stages.content.key_bytes), which the records carry and which changes with their
    messages: hashing every response to look it up cost ~1 s a pass at 1M records, and reading every
    response out of the records as much again. The cache is a folder of parts, each the keys
    (raw 20 bytes), word counts and signatures as .npy files; a run adds one part with what it
    computed. One file rewritten whole on every miss cost a one-record fix ~1 s at 100k records; an
    .npz (a zip, read through Python's zipfile with its checksums) took 13.7 s to load at 1M
    records where .npy files are read at disk speed.
    """
    parts = sorted(p for p in cache_dir.glob("part-*") if p.is_dir())
    # Signatures stay in their files (memory-mapped) and only the rows asked for are gathered: each
    # 512 MB concatenation at 1M records cost seconds of first-touch page faults on this VM.
    stored = [np.load(part / "signatures.npy", mmap_mode="r") for part in parts]
    all_keys = np.concatenate([np.zeros(0, "S20"), *(np.load(part / "keys.npy") for part in parts)])
    words_of = np.concatenate([np.zeros(0, np.int64), *(np.load(part / "words.npy") for part in parts)])
    rows = KeyRows(all_keys)(keys)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        fresh_keys, first, which = np.unique(keys[missing], return_index=True, return_inverse=True)
        fresh_texts = texts(missing[first].tolist())
        rows[missing] = len(all_keys) + which
        sign = partial(_signed, num_perm=num_perm, ngram=ngram)  # per text: on every core
        done = map_chunks(sign, fresh_texts, engine=engine)
        fresh = np.concatenate([np.zeros((0, num_perm), np.uint32), *(s for s, _ in done)])
        fresh_words = np.concatenate([np.zeros(0, np.int64), *(w for _, w in done)])
        all_keys = np.concatenate([all_keys, fresh_keys])
        words_of = np.concatenate([words_of, fresh_words])
        stored.append(fresh)
        cache_dir.mkdir(parents=True, exist_ok=True)
        if len(parts) + 1 > SIGNATURE_PARTS:
            stored = [np.concatenate(stored)]
            _write_signatures(cache_dir, all_keys, words_of, stored[0])
            for part in parts:
                shutil.rmtree(part)
        else:
            _write_signatures(cache_dir, fresh_keys, fresh_words, fresh)
    eligible = np.flatnonzero(words_of[rows] >= min_words)
    return eligible, _gather(stored, rows[eligible], num_perm)


def _gather(arrays: list[np.ndarray], rows: np.ndarray, width: int) -> np.ndarray:
    """Rows of the arrays' concatenation, without building it: each array gives the rows it holds."""
    out = np.empty((len(rows), width), np.uint32)
    start = 0
    for array in arrays:
        mine = (rows >= start) & (rows < start + len(array))
        out[mine] = array[rows[mine] - start]
        start += len(array)
    return out


def _signed(texts: list[str], num_perm: int, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    return minhash_signatures(texts, num_perm=num_perm, ngram=ngram), np.array(
        [len(words(t)) for t in texts], dtype=np.int64
    )


def _write_signatures(
    cache_dir: Path, keys: np.ndarray, words_of: np.ndarray, signatures: np.ndarray
) -> None:
    tmp = cache_dir / f".tmp-{os.getpid()}-{time.time_ns()}"  # two runs may add parts at once
    tmp.mkdir()
    for name, array in (("keys", keys), ("words", words_of), ("signatures", signatures)):
        np.save(tmp / f"{name}.npy", array)
    tmp.rename(cache_dir / f"part-{time.time_ns()}")  # sorted = written order


def near_duplicate_of(
    keys: np.ndarray,
    texts: Callable[[list[int]], list[str]],
    cache_dir: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
    engine: Engine = LOCAL,
) -> dict[int, int]:
    """{index: index of the kept response it near-duplicates}, in index order (MinHash LSH), for
    records keyed by `keys` (stages.content.key_bytes); see `cached_signatures` for `texts`.

    Responses under `min_words` words are left to exact dedup: "10% of the words edited" is not a
    near-duplicate of a five-word answer, it is a different answer.
    """
    eligible, signatures = cached_signatures(keys, texts, cache_dir, num_perm, ngram, min_words, engine)
    if engine.kind == "ray":  # the same answer, as a shuffle: no Ray worker holds every signature
        from stages import ray_engine

        duplicate_of = ray_engine.lsh_join(signatures, threshold, engine)
    else:
        duplicate_of = lsh_join(signatures, threshold)
    return {int(eligible[j]): int(eligible[d]) for j, d in enumerate(duplicate_of) if d is not None}


def residual_duplicate_of(
    hashes: list[str],
    keys: np.ndarray,
    texts: Callable[[list[int]], list[str]],
    cache_dir: Path,
    threshold: float,
    ngram: int,
    num_perm: int,
    min_words: int,
    engine: Engine = LOCAL,
) -> list[tuple[int, int]]:
    """(index, index it duplicates): exact duplicates first, then near ones, each in index order.

    What the `duplicate_rate` gate measures after dedup: with `min_words` below dedup's own, it
    also sees the short near-copies dedup leaves alone, so it is not zero by construction.
    """
    exact = exact_duplicate_of(hashes)
    kept = [i for i in range(len(hashes)) if i not in exact]
    near = near_duplicate_of(
        keys[kept],
        lambda rows: texts([kept[r] for r in rows]),
        cache_dir,
        threshold,
        ngram,
        num_perm,
        min_words,
        engine,
    )
    return list(exact.items()) + [(kept[i], kept[j]) for i, j in near.items()]


def with_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    return table.append_column(name, pa.array(values, pa.string()))
