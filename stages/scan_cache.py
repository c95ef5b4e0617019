"""Remember which texts a whole-dataset scan already found clean, so a rerun scans only new text.

The blocking checks re-scan every training record on every run (PII patterns, eval n-gram
overlap). After a one-record edit, all but that record were scanned before with the same rules:
their keys are kept in a small file under the state folder, salted with what the verdict depends
on (the scanner's source, the eval set), so any change of rules starts afresh. A text's key is
its content hash, or for a record its `record_key` (stages/content.py), which the record carries:
then the texts already found clean are never built or hashed again.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from stages.workers import map_chunks

T = TypeVar("T")


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


@dataclass
class Texts:
    """Texts to scan, held in Arrow, with the key a scan remembers each by (it changes with the text)."""

    keys: list[str]
    array: pa.StringArray

    @classmethod
    def of(cls, texts: list[str]) -> "Texts":
        """Plain texts, each keyed by its content hash."""
        return cls([digest(t) for t in texts], pa.array(texts, pa.string()))

    def __len__(self) -> int:
        return len(self.keys)

    def __add__(self, other: "Texts") -> "Texts":
        return Texts(self.keys + other.keys, pa.concat_arrays([self.array, other.array]))

    def take(self, rows: list[int]) -> list[str]:
        return self.array.take(pa.array(rows, pa.int64())).to_pylist()


class CleanSet:
    """Content hashes of texts a scan found clean under `salt`, kept in a small JSON file."""

    def __init__(self, path: Path, salt: str):
        self.path, self.salt = path, salt
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.clean: set[str] = set(saved.get("clean", [])) if saved.get("salt") == salt else set()

    def scan(self, texts: Texts, find: Callable[[str], T]) -> list[T | None]:
        """`find(text)` where it is truthy, None elsewhere (texts known clean are neither built nor
        scanned; the rest on every core); then remember this scan's clean keys too.

        Two scans share a file when they ask the same question (train against the eval sets, in
        dedup and again in the gate), so the file keeps what both found clean; once it holds more
        than twice this scan's clean texts, it keeps only those (edited records drop out)."""
        todo = [i for i, key in enumerate(texts.keys) if key not in self.clean]
        hits: list[T | None] = [None] * len(texts)
        for i, hit in (pair for part in map_chunks(partial(_found, find), list(zip(todo, texts.take(todo), strict=True)))
                       for pair in part):  # fmt: skip
            hits[i] = hit
        clean = {key for key, hit in zip(texts.keys, hits, strict=True) if not hit}
        merged = self.clean | clean
        if len(merged) > 2 * max(len(clean), 1):
            merged = clean
        if merged != self.clean:  # a fix changes a few keys; rewriting an unchanged file costs ~1 s at 1M
            self.clean = merged
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")  # two steps may scan at once
            tmp.write_text(json.dumps({"salt": self.salt, "clean": sorted(self.clean)}))
            tmp.replace(self.path)
        return hits


def _found(find: Callable[[str], T], indexed: list[tuple[int, str]]) -> list[tuple[int, T]]:
    """(index, result) for the texts where `find` finds something: only those travel back."""
    return [(i, hit) for i, text in indexed if (hit := find(text))]


def source_salt(*modules: object) -> str:
    """A salt from the source files of the modules a verdict depends on."""
    data = b"".join(Path(m.__file__).read_bytes() for m in modules)  # type: ignore[attr-defined]
    return hashlib.sha256(data).hexdigest()[:16]
