"""Stable train/eval split: a record's side depends only on its id and the seed.

Adding or removing other records never moves a record between train and eval, so eval scores
stay comparable across data fixes.
"""

import hashlib
from typing import Any

import numpy as np


def eval_score(record_id: str, seed: int) -> float:
    return int.from_bytes(_digest(record_id, seed), "big") / 2**64


def eval_scores(record_ids: list[str], seed: int) -> np.ndarray:
    """`eval_score` of every id, as one array: one call per id took 1.4 s at 1M records."""
    digests = b"".join(_digest(i, seed) for i in record_ids)
    return np.frombuffer(digests, ">u8").astype(np.float64) / 2**64


def _digest(record_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8]


def split_records(
    records: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train, held_out = [], []
    for record in records:
        (held_out if eval_score(record["id"], seed) < eval_fraction else train).append(record)
    return train, held_out
