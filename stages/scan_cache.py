"""Remember which texts a whole-dataset scan already found clean, so a rerun scans only new text.

The blocking checks re-scan every training record on every run (PII patterns, eval n-gram
overlap). After a one-record edit, all but that record were scanned before with the same rules:
their keys are kept in a small file under the state folder, salted with what the verdict depends
on (the scanner's code version from stages/code_version.py, the eval set), so any change of rules
starts afresh. A text's key is its content hash, or for a record its `record_key`
(stages/content.py), which the record carries: then the texts already found clean are never built
or hashed again.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from stages.workers import LOCAL, Engine, map_chunks

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
    """What a scan under `salt` concluded per text key, kept in a small JSON file: the keys found
    clean, and for the others what was found where the caller remembers it (`remember`)."""

    def __init__(self, path: Path, salt: str):
        self.path, self.salt = path, salt
        saved = json.loads(path.read_text()) if path.is_file() else {}
        same = saved.get("salt") == salt
        self.clean: set[str] = set(saved.get("clean", [])) if same else set()
        self.found: dict[str, Any] = dict(saved.get("found", {})) if same else {}

    def unknown(self, keys: list[str]) -> list[int]:
        """Indices of the keys with no verdict yet."""
        return [i for i, key in enumerate(keys) if key not in self.clean and key not in self.found]

    def remember(self, keys: list[str], found: dict[int, Any], keep_found: bool = True) -> None:
        """Record a scan of `keys` (each key's index is its text's): `found` holds what was found in
        the texts that are not clean. With `keep_found`, those findings are kept too and handed back
        by `found` in later runs; without, only the clean keys are (the rest are scanned again).

        Two scans share a file when they ask the same question (train against the eval sets, in
        dedup and again in the gate), so the file keeps what both concluded; once it holds more
        than twice this scan's verdicts, it keeps only those (edited records drop out)."""
        clean = {key for i, key in enumerate(keys) if i not in found}
        hits = {keys[i]: value for i, value in found.items()} if keep_found else {}
        merged_clean, merged_found = self.clean | clean, {**self.found, **hits}
        if len(merged_clean) + len(merged_found) > 2 * max(len(clean) + len(hits), 1):
            merged_clean, merged_found = clean, hits
        if merged_clean != self.clean or merged_found != self.found:
            # A fix changes a few keys; rewriting an unchanged file costs ~1 s at 1M records.
            self.clean, self.found = merged_clean, merged_found
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")  # two steps may scan at once
            # In set order: sorting 1M keys for a file only this class reads cost ~0.4 s a write.
            tmp.write_text(json.dumps({"salt": self.salt, "clean": list(self.clean), "found": self.found}))
            tmp.replace(self.path)

    def scan(self, texts: Texts, find: Callable[[str], T], engine: Engine = LOCAL) -> list[T | None]:
        """`find(text)` where it is truthy, None elsewhere: texts known clean are neither built nor
        scanned, the rest are scanned on every core (a finding is not remembered: scanned again)."""
        todo = [i for i, key in enumerate(texts.keys) if key not in self.clean]
        hits: list[T | None] = [None] * len(texts)
        todo_texts = list(zip(todo, texts.take(todo), strict=True))
        for i, hit in (
            pair for part in map_chunks(partial(_found, find), todo_texts, engine=engine) for pair in part
        ):
            hits[i] = hit
        self.remember(texts.keys, {i: hit for i, hit in enumerate(hits) if hit}, keep_found=False)
        return hits


def _found(find: Callable[[str], T], indexed: list[tuple[int, str]]) -> list[tuple[int, T]]:
    """(index, result) for the texts where `find` finds something: only those travel back."""
    return [(i, hit) for i, text in indexed if (hit := find(text))]
