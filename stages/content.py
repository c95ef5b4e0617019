"""Content hashes: the data version of a file or an output (same content, same version).

Dagster decides what is stale from data versions, so a version must change exactly when the
content does: a landing file re-ingested unchanged, or an asset rebuilt into identical files,
keeps its version and leaves everything downstream up to date.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CHUNK = 1 << 20


def file_hash(path: Path) -> str:
    """16 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def content_hash(*paths: Path, ignore: tuple[str, ...] = ()) -> str:
    """16 hex digits over the names and bytes of the given files and of every file in the given folders.

    Pass only what the output *is* (records, weights), not files that record how it was made
    (timings, cache hit counts, a model card naming its runs), or identical content would get a
    new version; `ignore` leaves out files of these names inside the folders.
    """
    digest = hashlib.sha256()
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ignore)
        else:
            files = [path]
        for file in files:
            name = file.relative_to(path).as_posix() if path.is_dir() else file.name
            digest.update(name.encode() + b"\0")
            with file.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(CHUNK), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def record_key(record: dict[str, Any]) -> str:
    """What a record's tokens and scan verdicts depend on: a hash of its messages (roles and texts).

    Set where a record's messages are made (clean_corpus, augmentation: the `record_key` column),
    so the cross-file stages look their caches up by it instead of re-reading every record.
    """
    return hashlib.sha1(json.dumps(record["messages"], sort_keys=True).encode()).hexdigest()


def key_bytes(record_keys: list[str]) -> np.ndarray:
    """`record_key`s (40 hex digits) as raw 20-byte keys, what the per-record caches store."""
    joined = "".join(record_keys)
    if len(joined) != 40 * len(record_keys):
        raise ValueError("record keys must be 40-hex-digit sha1 digests (stages.content.record_key)")
    return np.frombuffer(bytes.fromhex(joined), dtype="S20").copy()


class KeyRows:
    """The first row of `stored` (20-byte keys) holding each key asked for, -1 where none does.

    Looked up by the keys' first 8 bytes in a pandas hash index, then confirmed on all 20: a dict
    of 1M bytes keys cost ~1 s to build and query at 1M records; this ~0.2 s. Built once, asked
    a batch at a time.
    """

    def __init__(self, stored: np.ndarray):
        self.stored = stored
        head = pd.Index(_head(stored))
        self.first = np.flatnonzero(~head.duplicated())  # two cache parts may hold the same key
        self.index = pd.Index(head[self.first])

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.stored):
            return np.full(len(keys), -1, np.int64)
        at = self.index.get_indexer(_head(keys))
        rows = np.where(at >= 0, self.first[np.maximum(at, 0)], -1)
        rows[(rows >= 0) & (self.stored[np.maximum(rows, 0)] != keys)] = -1  # a shared 8-byte head only
        return rows


def _head(keys: np.ndarray) -> np.ndarray:
    return np.frombuffer(keys.tobytes(), dtype=[("head", "<u8"), ("rest", "S12")])["head"]
