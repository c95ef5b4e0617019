"""The near-dedup join (`near_dedup.lsh_join`) as a shuffle, so that no worker holds every signature.

`lsh_join` walks the rows in order with every band key in one dict. Its answer depends on one
thing per row i: the best earlier row sharing a band key with it (the most equal signature values,
the earliest on ties), then a walk in row order that points each duplicate at its best's kept row.
The best is a reduction over candidate pairs, and the pairs come from buckets, so:

1. map, a block of rows at a time (`band_entries`): each row's band keys as (key, band, row), split
   into `parts` by a hash of the key, so every occurrence of a key value, in any band, meets in one part;
2. reduce, a part at a time (`part_best`): the keys shared in their band by two rows or more; the
   rows meeting on a key value are candidates of each other (lsh_join's `members` are keyed by
   value too); each pair's equal signature values, from the signatures of the part's own rows only;
   the best earlier candidate of each row;
3. resolve, on ints only (`resolve`): per row the best over the parts, then the walk in row order.

The result is `lsh_join`'s, row for row (tests/unit/test_lsh_shuffle.py). `lsh_join` also leaves a
row out of the buckets once it has an identical earlier candidate; that only shortens buckets,
since the identical earlier row is in every bucket the later one would be in and wins every tie.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd

from stages.near_dedup import _MIX, band_keys, lsh_params

PAIRS_AT_ONCE = 1 << 16  # pairs compared at a time: [65536, 128] bools, 8 MB


def band_entries(
    signatures: np.ndarray, first_row: int, bands: int, rows: int, parts: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each part, the (key, band, row) of this block's band keys whose key hashes to it."""
    keys = band_keys(signatures, bands, rows)  # [bands, n]
    key = keys.reshape(-1)
    band = np.repeat(np.arange(bands, dtype=np.int16), keys.shape[1])
    row = np.tile(np.arange(first_row, first_row + keys.shape[1], dtype=np.int64), bands)
    part = ((key * _MIX) >> np.uint64(40)) % np.uint64(parts)  # the key's high bits, mixed once more
    return [(key[mine], band[mine], row[mine]) for p in range(parts) for mine in [part == p]]


def part_best(
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    signature_rows: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, its best earlier candidate in this part, their equal signature values), a row each.

    `entries` are this part's (key, band, row) from every block; `signature_rows(rows)` gives the
    signatures of sorted row numbers (only rows with a shared key are asked for).
    """
    key = np.concatenate([np.zeros(0, np.uint64), *(k for k, _, _ in entries)])
    band = np.concatenate([np.zeros(0, np.int16), *(b for _, b, _ in entries)])
    row = np.concatenate([np.zeros(0, np.int64), *(r for _, _, r in entries)])
    shared = pd.DataFrame({"key": key, "band": band}).duplicated(keep=False).to_numpy()
    key, row = key[shared], row[shared]
    order = np.lexsort((row, key))
    key, row = key[order], row[order]
    once = np.r_[True, (key[1:] != key[:-1]) | (row[1:] != row[:-1])] if len(key) else np.zeros(0, bool)
    key, row = key[once], row[once]  # a row with one key value in two bands is one member
    if not len(key):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Every pair within a bucket (one key value), the later row first: the member at position p of
    # its bucket pairs with the p members before it.
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    bucket_start = np.repeat(starts, sizes)
    position = np.arange(len(key)) - bucket_start
    later = np.repeat(np.arange(len(key)), position)
    earlier = np.repeat(bucket_start, position) + (
        np.arange(int(position.sum())) - np.repeat(np.cumsum(position) - position, position)
    )
    n = int(row.max()) + 1
    pair = np.unique(row[later] * n + row[earlier])  # a pair sharing two keys is compared once
    i, j = pair // n, pair % n
    needed = np.unique(np.concatenate([i, j]))
    signatures = signature_rows(needed)
    at_i, at_j = np.searchsorted(needed, i), np.searchsorted(needed, j)
    equal = np.concatenate(
        [np.zeros(0, np.int64)]
        + [
            np.count_nonzero(
                signatures[at_i[a : a + PAIRS_AT_ONCE]] == signatures[at_j[a : a + PAIRS_AT_ONCE]], axis=1
            )
            for a in range(0, len(pair), PAIRS_AT_ONCE)
        ]
    )
    return _best_per_row(i, j, equal)


def _best_per_row(
    i: np.ndarray, j: np.ndarray, equal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row i, its pair with the most equal values, the earliest j on ties."""
    order = np.lexsort((j, -equal, i))
    i, j, equal = i[order], j[order], equal[order]
    first = np.r_[True, i[1:] != i[:-1]] if len(i) else np.zeros(0, bool)
    return i[first], j[first], equal[first]


def resolve(
    bests: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, num_perm: int, threshold: float
) -> list[int | None]:
    """`lsh_join`'s answer from the parts' bests: a duplicate points at its best's kept row."""
    i, j, equal = (np.concatenate([np.zeros(0, np.int64), *(b[k] for b in bests)]) for k in range(3))
    kept_row = list(range(n))
    duplicate_of: list[int | None] = [None] * n
    for row, best, same in zip(*(a.tolist() for a in _best_per_row(i, j, equal)), strict=True):
        if same / num_perm >= threshold:  # the estimated Jaccard, as lsh_join computes it
            kept_row[row] = kept_row[best]
            duplicate_of[row] = kept_row[row]
    return duplicate_of


def shuffled_lsh_join(
    signatures: np.ndarray, threshold: float = 0.5, parts: int = 8, block_rows: int = 1 << 16
) -> list[int | None]:
    """`lsh_join` through the three steps above, in this process: the reference for the Ray one."""
    n, num_perm = signatures.shape
    bands, rows = lsh_params(threshold, num_perm)
    blocks = [
        band_entries(signatures[a : a + block_rows], a, bands, rows, parts) for a in range(0, n, block_rows)
    ]
    bests = [part_best([block[p] for block in blocks], lambda at: signatures[at]) for p in range(parts)]
    return resolve(bests, n, num_perm, threshold)
