"""The near-dedup join as a shuffle by band-key hash gives lsh_join's answer, row for row."""

import numpy as np
import pytest

from stages.lsh_shuffle import band_entries, part_best, resolve, shuffled_lsh_join
from stages.near_dedup import lsh_join, lsh_params


def planted_signatures(
    n: int = 3000, num_perm: int = 128, seed: int = 0
) -> tuple[np.ndarray, dict[int, int]]:
    """Random signatures, then near copies (5-40% of values changed; some are copies of copies, so
    clusters chain), exact twins, and a few rows sharing only some bands by chance: copy -> source."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 1 << 32, size=(n, num_perm), dtype=np.uint64).astype(np.uint32)
    source_of = {}
    for copy in rng.choice(np.arange(n // 4, n), size=n // 4, replace=False).tolist():
        source = int(rng.integers(0, copy))
        changed = rng.random(num_perm) < rng.uniform(0.0, 0.4) if copy % 7 else np.zeros(num_perm, bool)
        sig[copy] = np.where(changed, rng.integers(0, 1 << 32, num_perm, dtype=np.uint64), sig[source])
        source_of[copy] = source
    return sig, source_of


@pytest.mark.parametrize("threshold", [0.5, 0.8])
@pytest.mark.parametrize("parts", [1, 3, 8])
def test_the_shuffled_join_is_lsh_join(threshold: float, parts: int):
    sig, source_of = planted_signatures()
    local = lsh_join(sig, threshold)
    assert shuffled_lsh_join(sig, threshold, parts=parts, block_rows=700) == local
    # Not vacuous: most planted copies are found, chained ones pointing at their cluster's first row.
    flagged = {i for i, d in enumerate(local) if d is not None}
    assert len(flagged & set(source_of)) > 0.4 * len(source_of) and all(
        local[local[i]] is None for i in flagged
    )


def test_no_part_asks_for_every_signature():
    sig, _ = planted_signatures()
    bands, rows = lsh_params(0.5, sig.shape[1])
    blocks = [band_entries(sig[a : a + 500], a, bands, rows, 8) for a in range(0, len(sig), 500)]
    asked: list[int] = []

    def rows_of(at: np.ndarray) -> np.ndarray:
        asked.append(len(at))
        return sig[at]

    bests = [part_best([block[p] for block in blocks], rows_of) for p in range(8)]
    assert resolve(bests, len(sig), sig.shape[1], 0.5) == lsh_join(sig, 0.5)
    assert len(asked) == 8 and max(asked) < 0.5 * len(sig), asked


def test_no_rows_and_no_shared_keys():
    assert shuffled_lsh_join(np.zeros((0, 128), np.uint32)) == []
    distinct = (
        np.random.default_rng(1).integers(0, 1 << 32, size=(50, 128), dtype=np.uint64).astype(np.uint32)
    )
    assert shuffled_lsh_join(distinct, parts=4) == lsh_join(distinct) == [None] * 50
