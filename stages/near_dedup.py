"""Near-duplicate detection with MinHash LSH, keeping the first text in input order.

Exact dedup misses a response copied with a few words changed; this finds texts (pass each
record's response, `record["messages"][-1]["content"]`) whose word n-gram sets overlap by at least
`threshold` (Jaccard). Signatures are per-text work, vectorised in numpy and stable across
processes, so they can be cached by content hash; `lsh_join` is the corpus-wide step that buckets
signatures by band and verifies each candidate's estimated Jaccard.

Defaults are 3-word shingles at Jaccard 0.5, sized for "up to 10% of the words edited": each
edited word breaks up to 3 trigrams, so such a copy keeps ~0.9**3 = 73% of them (Jaccard ~0.57).
The web-scale 5-grams at 0.8 only catch copies with under ~2% of words edited.
"""

import hashlib
import re
from functools import lru_cache

import numpy as np
import pandas as pd

_WORD = re.compile(r"\w+")
# a*x + b mod p over 32-bit shingle hashes x, as datasketch does; with a, b < 2**32 the product fits
# in uint64 without overflow, and p = 2**61 - 1 > 2**32 makes the family universal.
_PRIME = np.uint64((1 << 61) - 1)
_LOW_32 = np.uint64((1 << 32) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier folding a sequence of hashes into one, order-sensitive
_BAND_ROWS = 1 << 15  # signature rows folded into band keys at a time
_CHUNK_SHINGLES = 2048  # shingles per numpy block: [num_perm, 2048] uint64 (2 MB) stays near the CPU cache


def words(text: str) -> list[str]:
    """Lowercased `\\w+` words, what shingles are made of."""
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
        gram_hash = gram_hash * _MIX + padded[k : n_starts + k]
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


def _permute(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[num_perm, len(x)] uint32: (a * x + b) mod (2**61 - 1), low 32 bits, as datasketch keeps.

    In place, with the Mersenne-prime reduction (v mod p = (v & p) + (v >> 61), less p if that
    reaches p) instead of `%`, which is about twice as slow in numpy.
    """
    v = a[:, None] * x[None, :]
    v += b[:, None]
    high = v >> np.uint64(61)
    v &= _PRIME
    v += high
    v[v >= _PRIME] -= _PRIME
    return (v & _LOW_32).astype(np.uint32)


def minhash_signatures(texts: list[str], num_perm: int = 128, ngram: int = 3, seed: int = 1) -> np.ndarray:
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
        hashed = _permute(shingles[offsets[first] : offsets[last]], a, b)
        rows = first + np.flatnonzero(n_shingles[first:last])
        if not len(rows):  # a last block of texts with no words
            continue
        signatures[rows] = np.minimum.reduceat(hashed, offsets[rows] - offsets[first], axis=1).T
    return signatures


@lru_cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive and false negative areas at `threshold`.

    datasketch's `_optimal_param`, integrated numerically, with false negatives weighted 4:1:
    candidates are verified here, so a false positive costs one comparison, a miss a duplicate.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    s = np.linspace(0.0, 1.0, 2001)
    below, above = s <= threshold, s >= threshold
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            collide = 1.0 - (1.0 - s**rows) ** bands
            false_positive = np.trapezoid(collide[below], s[below])
            false_negative = np.trapezoid(1.0 - collide[above], s[above])
            error = 0.2 * false_positive + 0.8 * false_negative
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[bands, n] uint64: each band's `rows` signature values folded into one key per row.

    Each band starts from its own salt, so equal values in two bands give different keys; two
    bands still meeting on a key only add a candidate, which `lsh_join` rejects by its estimated
    Jaccard. Folded _BAND_ROWS rows at a time over contiguous [_BAND_ROWS, bands, rows] blocks: a column
    at a time over the whole [n, num_perm] array read a cache line per row per column (2.5 s of
    lsh_join's 7.9 s on 950k signatures, 2026-12-04; 0.5 s this way).
    """
    n = len(signatures)
    keys = np.empty((bands, n), dtype=np.uint64)
    salt = (np.arange(1, bands + 1, dtype=np.uint64) * _MIX)[None, :]
    for a in range(0, n, _BAND_ROWS):
        block = signatures[a : a + _BAND_ROWS, : bands * rows].reshape(-1, bands, rows).astype(np.uint64)
        key = block[:, :, 0] + salt
        for column in range(1, rows):
            key *= _MIX
            key += block[:, :, column]
        keys[:, a : a + len(block)] = key.T
    return keys


def lsh_join(signatures: np.ndarray, threshold: float = 0.5) -> list[int | None]:
    """For each row, the kept row it near-duplicates (estimated Jaccard >= threshold), else None.

    Keep-first: a row is compared with every earlier row sharing a band, takes the most similar
    one that reaches the threshold (the earliest on ties), and points at that row's kept row. So
    B, a near-copy of a dropped A', still joins A's cluster (single linkage, as union-find does).
    """
    n, num_perm = signatures.shape
    keys = band_keys(signatures, *lsh_params(threshold, num_perm))
    # A key no other row has in its band cannot pair: found by hashing (pandas), not by sorting,
    # and only rows with a shared key reach the loop (about 15% of them at 1M records).
    shared = np.stack([pd.Series(band).duplicated(keep=False).to_numpy() for band in keys])
    # Each pairable row's shared keys, flat, with where each row's start: lists of only these are
    # a fraction of every key of every pairable row as Python ints.
    row, band = np.nonzero(shared.T)
    pairable, starts = np.unique(row, return_index=True)
    shared_keys = keys[band, row].tolist()
    ends = [*starts[1:].tolist(), len(shared_keys)] if len(starts) else []
    kept_row = list(range(n))
    duplicate_of: list[int | None] = [None] * n
    members: dict[int, list[int]] = {}
    for i, start, end in zip(pairable.tolist(), starts.tolist(), ends, strict=True):
        mine = shared_keys[start:end]
        candidates = sorted({j for key in mine for j in members.get(key, ())})
        best_equal = 0
        if candidates:
            equal = np.count_nonzero(signatures[candidates] == signatures[i], axis=1)
            best = int(np.argmax(equal))
            best_equal = int(equal[best])
            if best_equal / num_perm >= threshold:  # the estimated Jaccard
                kept_row[i] = kept_row[candidates[best]]
                duplicate_of[i] = kept_row[i]
        # An identical signature would only lengthen the buckets: its twin already answers for it.
        if best_equal < num_perm:
            for key in mine:
                members.setdefault(key, []).append(i)
    return duplicate_of


def near_duplicates(
    texts: list[str], threshold: float = 0.5, num_perm: int = 128, ngram: int = 3
) -> list[int | None]:
    """For each text, the index of the earlier kept text it near-duplicates, else None (see lsh_join)."""
    return lsh_join(minhash_signatures(texts, num_perm=num_perm, ngram=ngram), threshold)


def clusters(duplicate_of: list[int | None]) -> dict[int, list[int]]:
    """Kept index -> indices of its duplicates, for texts that have any (for reporting)."""
    groups: dict[int, list[int]] = {}
    for i, kept in enumerate(duplicate_of):
        if kept is not None:
            groups.setdefault(kept, []).append(i)
    return groups
