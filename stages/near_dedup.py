"""Near-duplicate detection with MinHash LSH, keeping the first text in input order.

Exact dedup misses a response copied with a few words changed; this finds texts whose word
n-gram sets overlap by at least `threshold` (Jaccard). Signatures are per-text work, vectorised in
numpy and stable across processes (so they can be cached by content hash); `lsh_join` is the
corpus-wide step that buckets signatures by band and verifies each candidate's estimated Jaccard.
"""

import hashlib
import re
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+")
# a*x + b mod p over 32-bit shingle hashes x, as datasketch does; with a, b < 2**32 the product fits
# in uint64 without overflow, and p = 2**61 - 1 > 2**32 makes the family universal.
_PRIME = np.uint64((1 << 61) - 1)
_LOW_32 = np.uint64((1 << 32) - 1)
_NGRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd, so each word's position changes the n-gram hash
_CHUNK_SHINGLES = 8192  # shingles per numpy block: [8192, num_perm] uint64 stays near the CPU cache


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word of every text, flattened; word count per text).

    Each distinct word is hashed once with blake2b, which, unlike `hash`, is not salted per process.
    """
    tokens = [words(text) for text in texts]
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w, len(vocab)) for text_words in tokens for w in text_words]
    digests = b"".join(hashlib.blake2b(w.encode(), digest_size=8).digest() for w in vocab)
    vocab_hash = np.frombuffer(digests, dtype="<u8").astype(np.uint64)
    counts = np.array([len(text_words) for text_words in tokens], dtype=np.int64)
    return vocab_hash[np.array(ids, dtype=np.int64)], counts


def _shingle_hashes(word_hash: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hash of every word n-gram, flattened; n-gram count per text).

    A text shorter than `ngram` words is one shingle of all its words; a text with none has none.
    """
    # Each text's words followed by ngram - 1 zeros, so no n-gram reaches into the next text.
    text_of_word = np.repeat(np.arange(len(counts)), counts)
    padded = np.zeros(len(word_hash) + len(counts) * (ngram - 1), dtype=np.uint64)
    padded[np.arange(len(word_hash)) + text_of_word * (ngram - 1)] = word_hash
    n_starts = len(padded) - ngram + 1
    gram_hash = padded[:n_starts]
    for k in range(1, ngram):
        gram_hash = gram_hash * _NGRAM_MIX + padded[k : n_starts + k]
    n_shingles = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    padded_start = np.cumsum(counts + ngram - 1) - (counts + ngram - 1)
    shingle_start = np.cumsum(n_shingles) - n_shingles
    index = np.repeat(padded_start - shingle_start, n_shingles) + np.arange(n_shingles.sum())
    return gram_hash[index] >> np.uint64(32), n_shingles


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(texts: list[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash signatures of each text's word n-gram set.

    Equal texts give equal rows in any process. A text with no words gets all 2**32 - 1, as an
    empty datasketch MinHash does, so texts with no words are duplicates of each other.
    """
    if num_perm < 1 or ngram < 1:
        raise ValueError(f"num_perm and ngram must be >= 1, got num_perm={num_perm}, ngram={ngram}")
    a, b = _permutations(num_perm, seed)
    shingles, n_shingles = _shingle_hashes(*_word_hashes(texts), ngram)
    offsets = np.concatenate([[0], np.cumsum(n_shingles)])  # text i's shingles: offsets[i]:offsets[i + 1]
    signatures = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    # Blocks of whole texts, a new one starting about every _CHUNK_SHINGLES shingles.
    edges = np.searchsorted(offsets, np.arange(0, offsets[-1], _CHUNK_SHINGLES))
    edges = np.unique(np.append(edges, len(texts)))
    for first, last in zip(edges[:-1], edges[1:], strict=True):
        x = shingles[offsets[first] : offsets[last], None]
        hashed = ((x * a + b) % _PRIME) & _LOW_32
        rows = first + np.flatnonzero(n_shingles[first:last])
        signatures[rows] = np.minimum.reduceat(hashed, offsets[rows] - offsets[first], axis=0)
    return signatures


@lru_cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positive + false negative area around `threshold`.

    The same choice as datasketch's `_optimal_param` with equal weights, integrated numerically.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    s = np.linspace(0.0, 1.0, 2001)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            collide = 1.0 - (1.0 - s**rows) ** bands
            below, above = s <= threshold, s >= threshold
            error = np.trapezoid(collide[below], s[below]) + np.trapezoid(1.0 - collide[above], s[above])
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def lsh_join(signatures: np.ndarray, threshold: float = 0.8) -> list[int | None]:
    """For each row, the first earlier kept row whose estimated Jaccard is >= threshold, else None.

    Only kept rows are bucketed, so every duplicate points at a kept row (keep-first).
    """
    n, num_perm = signatures.shape
    bands, rows = lsh_params(threshold, num_perm)
    # Each band of a row as one bytes key: exact, so bucket collisions are real band matches.
    band_keys = [
        np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        .view(np.dtype((np.void, rows * signatures.itemsize)))
        .ravel()
        .tolist()
        for band in range(bands)
    ]
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    duplicate_of: list[int | None] = []
    for i in range(n):
        keys = [band_keys[band][i] for band in range(bands)]
        candidates = {j for bucket, key in zip(buckets, keys, strict=True) for j in bucket.get(key, ())}
        match = None
        if candidates:
            earlier = np.array(sorted(candidates))
            similarity = (signatures[earlier] == signatures[i]).mean(axis=1)
            above = earlier[similarity >= threshold]
            match = int(above[0]) if len(above) else None
        duplicate_of.append(match)
        if match is None:
            for bucket, key in zip(buckets, keys, strict=True):
                bucket.setdefault(key, []).append(i)
    return duplicate_of


def near_duplicates(
    texts: list[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 5
) -> list[int | None]:
    """For each text, the index of the first earlier kept text it near-duplicates, else None."""
    return lsh_join(minhash_signatures(texts, num_perm=num_perm, ngram=ngram), threshold)


def clusters(duplicate_of: list[int | None]) -> dict[int, list[int]]:
    """Kept index -> indices of its duplicates, for texts that have any (for reporting)."""
    groups: dict[int, list[int]] = {}
    for i, kept in enumerate(duplicate_of):
        if kept is not None:
            groups.setdefault(kept, []).append(i)
    return groups
