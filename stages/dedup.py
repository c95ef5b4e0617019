"""Cross-partition deduplication, keeping the first record in a stable order.

Exact duplicates are found by a hash of the normalised conversation (case, whitespace and
punctuation folded), so `os.stat` and `posix.stat` with the same docstring collapse to one.
"""

import hashlib
import re
from typing import Any

_NON_WORD = re.compile(r"[\W_]+")


def conversation_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def normalised_hash(text: str) -> str:
    folded = _NON_WORD.sub(" ", text.lower()).strip()
    return hashlib.sha1(folded.encode()).hexdigest()


def exact_dedup(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, duplicates); each duplicate names the id it duplicates. Input order is the keep order.

    The response alone is hashed: two prompts with the same answer teach the same thing twice.
    """
    first_by_hash: dict[str, str] = {}
    kept, duplicates = [], []
    for record in records:
        digest = normalised_hash(record["messages"][-1]["content"])
        if digest in first_by_hash:
            duplicates.append({**record, "duplicate_of": first_by_hash[digest]})
        else:
            first_by_hash[digest] = record["id"]
            kept.append(record)
    return kept, duplicates
