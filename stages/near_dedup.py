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

_WORD = re.compile(r"\w+")
# a*x + b mod p over 32-bit shingle hashes x, as datasketch does; with a, b < 2**32 the product fits
# in uint64 without overflow, and p = 2**61 - 1 > 2**32 makes the family universal.
_PRIME = np.uint64((1 << 61) - 1)
_LOW_32 = np.uint64((1 << 32) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier folding a sequence of hashes into one, order-sensitive
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


def _band_buckets(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] bucket id of each row in each band, distinct across bands; equal bands share one.

    A band's rows are folded into one 64-bit key; two different bands meeting on a key only add a
    candidate, which `lsh_join` then rejects by its estimated Jaccard.
    """
    buckets = np.empty((len(signatures), bands), dtype=np.int64)
    for band in range(bands):
        key = np.zeros(len(signatures), dtype=np.uint64)
        for column in range(band * rows, (band + 1) * rows):
            key = key * _MIX + signatures[:, column]
        buckets[:, band] = np.unique(key, return_inverse=True)[1] + band * len(signatures)
    return buckets


def lsh_join(signatures: np.ndarray, threshold: float = 0.5) -> list[int | None]:
    """For each row, the kept row it near-duplicates (estimated Jaccard >= threshold), else None.

    Keep-first: a row is compared with every earlier row sharing a band, takes the most similar
    one that reaches the threshold (the earliest on ties), and points at that row's kept row. So
    B, a near-copy of a dropped A', still joins A's cluster (single linkage, as union-find does).
    """
    n, num_perm = signatures.shape
    buckets = _band_buckets(signatures, *lsh_params(threshold, num_perm))
    shared = np.bincount(buckets.ravel(), minlength=buckets.size) > 1
    kept_row = list(range(n))
    duplicate_of: list[int | None] = [None] * n
    members: dict[int, list[int]] = {}
    # Only rows sharing a bucket with another row can be, or have, a duplicate: most rows skip this.
    for i in np.flatnonzero(shared[buckets].any(axis=1)).tolist():
        keys = [key for key in buckets[i].tolist() if shared[key]]
        candidates = sorted({j for key in keys for j in members.get(key, ())})
        best_similarity = 0.0
        if candidates:
            similarity = (signatures[candidates] == signatures[i]).mean(axis=1)
            best = int(np.argmax(similarity))
            best_similarity = float(similarity[best])
            if best_similarity >= threshold:
                kept_row[i] = kept_row[candidates[best]]
                duplicate_of[i] = kept_row[i]
        # An identical signature would only lengthen the buckets: its twin already answers for it.
        if best_similarity < 1.0:
            for key in keys:
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
