"""Remember which texts a whole-dataset scan already found clean, so a rerun scans only new text.

The blocking checks re-scan every training record on every run (PII patterns, eval n-gram
overlap). After a one-record edit, all but that record were scanned before with the same rules:
their content hashes are kept in a small file under the state folder, salted with what the
verdict depends on (the scanner's source, the eval set), so any change of rules starts afresh.
"""

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from stages.workers import map_chunks

T = TypeVar("T")


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


class CleanSet:
    """Content hashes of texts a scan found clean under `salt`, kept in a small JSON file."""

    def __init__(self, path: Path, salt: str):
        self.path, self.salt = path, salt
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.clean: set[str] = set(saved.get("clean", [])) if saved.get("salt") == salt else set()

    def scan(self, texts: list[str], find: Callable[[str], T]) -> list[T | None]:
        """`find(text)` where it is truthy, None elsewhere (texts known clean are not scanned, on
        every core); then keep exactly the hashes of this scan's clean texts, so old records drop out."""
        digests = [digest(t) for t in texts]
        todo = [i for i, d in enumerate(digests) if d not in self.clean]
        hits: list[T | None] = [None] * len(texts)
        for i, hit in (pair for part in map_chunks(partial(_found, find), [(i, texts[i]) for i in todo])
                       for pair in part):  # fmt: skip
            hits[i] = hit
        self.clean = {d for d, hit in zip(digests, hits, strict=True) if not hit}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
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
