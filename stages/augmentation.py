"""Seeded instruction paraphrases of train records (never of eval records).

Each augmented record keeps `source_id`, so lineage goes back to the landing file. The share of
augmented records in the final training set is capped by `data.augmentation.max_share`.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.columns import last_contents_at, record_keys, record_texts, schema_problems
from stages.content import key_bytes
from stages.scan_cache import Texts, digest

# {instruction} is the original user turn; the response is unchanged.
PARAPHRASE_TEMPLATES = (
    "{instruction}",
    "Please answer the following.\n\n{instruction}",
    "{instruction} Answer in the style of the reference documentation.",
    "Question: {instruction}",
    "I need help with this: {instruction}",
)


def _rank(seed: int, record_id: str) -> int:
    return int.from_bytes(_rank_digest(seed, record_id), "big")


def _rank_digest(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"aug:{seed}:{record_id}".encode()).digest()[:8]


def augment(
    train: list[dict[str, Any]], max_share: float, seed: int, few_shot_k: int = 0
) -> list[dict[str, Any]]:
    """Return only the new records. len(new) / (len(train) + len(new)) <= max_share.

    Each chosen record gets an instruction paraphrase; with few_shot_k > 0, every other chosen
    record instead gets k other train examples as earlier turns (the prompt-engineering few-shot
    technique, used as training data so the model also learns to read such prompts).
    """
    chosen = choose([r["id"] for r in train], [r["schema"] for r in train], max_share, seed)
    eligible = [r for r in train if r["schema"] != "text"]
    return [
        _few_shot(train[c], eligible, few_shot_k, seed)
        if few_shot_k > 0 and i % 2 == 1 and len(eligible) > few_shot_k
        else _paraphrase(train[c], seed)
        for i, c in enumerate(chosen)
    ]


def augment_table(train: pa.Table, max_share: float, seed: int, few_shot_k: int = 0) -> list[dict[str, Any]]:
    """`augment` of a table's rows; only the chosen rows become Python dicts (without few-shot)."""
    if few_shot_k > 0 or train.num_rows == 0:  # few-shot draws its shots from every record
        return augment(train.to_pylist(), max_share, seed, few_shot_k)
    chosen = choose(train.column("id").to_pylist(), train.column("schema").to_pylist(), max_share, seed)
    rows = train.take(pa.array(chosen, pa.int64())).to_pylist()
    return [_paraphrase(r, seed) for r in rows]


def choose(ids: list[str], schemas: list[str], max_share: float, seed: int) -> list[int]:
    """Indices of the records to augment, in augmentation order: len(new) / (len(train) + len(new))
    <= max_share; `text` records have no instruction to paraphrase."""
    eligible = [i for i, schema in enumerate(schemas) if schema != "text"]
    budget = int(max_share * len(ids) / (1 - max_share)) if max_share < 1 else len(eligible)
    # _rank of each, as one array (one call per id took 1.4 s at 1M records); a stable sort keeps
    # index order on ties, as sorted() did.
    ranks = np.frombuffer(b"".join(_rank_digest(seed, ids[i]) for i in eligible), ">u8")
    return [eligible[j] for j in np.argsort(ranks, kind="stable")[: min(budget, len(eligible))].tolist()]


def _paraphrase(record: dict[str, Any], seed: int) -> dict[str, Any]:
    template = PARAPHRASE_TEMPLATES[1 + _rank(seed + 1, record["id"]) % (len(PARAPHRASE_TEMPLATES) - 1)]
    messages = [dict(m) for m in record["messages"]]
    user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[user]["content"] = template.format(instruction=messages[user]["content"])
    return {
        **record,
        "id": f"{record['id']}#paraphrase",
        "messages": messages,
        "source_id": record["id"],
        "augmentation": "paraphrase_template",
    }


def _few_shot(record: dict[str, Any], pool: list[dict[str, Any]], k: int, seed: int) -> dict[str, Any]:
    """k other train examples (stable choice per record) as earlier user/assistant turns."""
    others = sorted(
        (r for r in pool if r["id"] != record["id"]), key=lambda r: _rank(seed + 2, record["id"] + r["id"])
    )
    shots = [m for shot in others[:k] for m in shot["messages"] if m["role"] != "system"]
    system = [m for m in record["messages"] if m["role"] == "system"]
    rest = [m for m in record["messages"] if m["role"] != "system"]
    return {
        **record,
        "id": f"{record['id']}#few_shot",
        "messages": [*system, *shots, *rest],
        "source_id": record["id"],
        "augmentation": "few_shot_context",
    }


PARAPHRASE_PROMPT = (
    "Rewrite the following request in different words, keeping its meaning. "
    "Reply with the rewritten request only.\n\n{instruction}"
)


def model_paraphrases(
    instructions: list[str], generate: Callable[[list[str]], list[str]], cache_file: Path
) -> dict[str, str]:
    """instruction -> the model's paraphrase; only instructions not in the cache are generated.

    The cache file belongs to one model version (put it in the name): generation is the slow part.
    """
    cache: dict[str, str] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    missing = sorted({i for i in instructions if i not in cache})
    if missing:
        outputs = generate([PARAPHRASE_PROMPT.format(instruction=i) for i in missing])
        cache.update(zip(missing, (o.strip() for o in outputs), strict=True))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, ensure_ascii=False, sort_keys=True))
        tmp.replace(cache_file)
    return {i: cache[i] for i in instructions}


def apply_model_paraphrases(
    new: list[dict[str, Any]], train: list[dict[str, Any]], paraphrases: dict[str, str]
) -> list[dict[str, Any]]:
    """Template paraphrases whose source instruction has a usable model paraphrase get it instead."""
    by_id = {r["id"]: r for r in train}
    out = []
    for record in new:
        original = _user_turn(by_id[record["source_id"]])
        rewrite = paraphrases.get(original, "")
        if record["augmentation"] != "paraphrase_template" or not rewrite or rewrite == original:
            out.append(record)
            continue
        messages = [dict(m) for m in record["messages"]]
        messages[max(i for i, m in enumerate(messages) if m["role"] == "user")]["content"] = rewrite
        out.append({**record, "id": f"{record['source_id']}#model_paraphrase", "messages": messages,
                    "augmentation": "model_paraphrase"})  # fmt: skip
    return out


def _user_turn(record: dict[str, Any]) -> str:
    return [m for m in record["messages"] if m["role"] == "user"][-1]["content"]


def paraphrase_sources(new: list[dict[str, Any]], train: list[dict[str, Any]]) -> list[str]:
    """The original instructions behind the template paraphrases (what the model rewrites)."""
    by_id = {r["id"]: r for r in train}
    return [_user_turn(by_id[r["source_id"]]) for r in new if r["augmentation"] == "paraphrase_template"]


@dataclass
class TrainColumns:
    """The final train records as the gates read them: a list per field, read from the Arrow
    columns (as dicts, read back whole, they were the largest part of this step's memory, and
    building them most of a one-record fix's time in it)."""

    path: Path
    texts: Texts  # every message of each row, keyed by its record_key: what the scans read
    ids: list[str]
    source_ids: list[str]
    originals: list[int]  # rows not made by augmentation
    response_hashes: list[str]  # of the originals
    response_keys: np.ndarray  # of the originals: their record keys as the signature cache holds them
    problems: dict[int, str]  # row -> why it is not a valid conversation

    @classmethod
    def read(cls, path: Path) -> "TrainColumns":
        table = pq.read_table(path)
        problems = schema_problems(table)
        texts, keys = record_texts(table), record_keys(table)
        originals = [i for i, how in enumerate(_column(table, "augmentation")) if how == "none"]
        response_keys = key_bytes([keys[i] for i in originals])
        if problems:  # refused by schema_valid; the scans read them as ''
            texts = pc.if_else(
                pa.array([i in problems for i in range(table.num_rows)], pa.bool_()), "", texts
            )
            keys = [digest("") if i in problems else k for i, k in enumerate(keys)]
        at = pa.array(originals, pa.int64())
        return cls(
            path,
            Texts(keys, texts),
            _column(table, "id"),
            _column(table, "source_id"),
            originals,
            table.column("response_hash").take(at).to_pylist() if originals else [],
            response_keys,
            problems,
        )

    def responses(self, indices: list[int]) -> list[str]:
        """The answers (last messages) of these originals, read back: only the near-dup check's
        cache misses need them."""
        if not indices:
            return []
        table = pq.read_table(self.path, columns=["messages"])
        return last_contents_at(table, [self.originals[i] for i in indices])

    def rows(self, indices: list[int]) -> list[dict]:
        """The records at these rows (in this order), read back for a gate's message."""
        if not indices:
            return []
        return pq.read_table(self.path).take(pa.array(indices, pa.int64())).to_pylist()


def _column(table: pa.Table, name: str) -> list:
    """A column as a list; None for every row of a table without it (as `record.get` would give)."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
