"""Seeded instruction paraphrases of train records (never of eval records).

Each augmented record keeps `source_id`, so lineage goes back to the landing file. The share of
augmented records in the final training set is capped by `data.augmentation.max_share`.
"""

import hashlib
from typing import Any

# {instruction} is the original user turn; the response is unchanged.
PARAPHRASE_TEMPLATES = (
    "{instruction}",
    "Please answer the following.\n\n{instruction}",
    "{instruction} Answer in the style of the reference documentation.",
    "Question: {instruction}",
    "I need help with this: {instruction}",
)


def _rank(seed: int, record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"aug:{seed}:{record_id}".encode()).digest()[:8], "big")


def augment(train: list[dict[str, Any]], max_share: float, seed: int) -> list[dict[str, Any]]:
    """Return only the new records. len(new) / (len(train) + len(new)) <= max_share."""
    eligible = [r for r in train if r["schema"] != "text"]
    budget = int(max_share * len(train) / (1 - max_share)) if max_share < 1 else len(eligible)
    chosen = sorted(eligible, key=lambda r: _rank(seed, r["id"]))[: min(budget, len(eligible))]
    new = []
    for record in chosen:
        template = PARAPHRASE_TEMPLATES[1 + _rank(seed + 1, record["id"]) % (len(PARAPHRASE_TEMPLATES) - 1)]
        messages = [dict(m) for m in record["messages"]]
        user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[user]["content"] = template.format(instruction=messages[user]["content"])
        new.append(
            {
                **record,
                "id": f"{record['id']}#paraphrase",
                "messages": messages,
                "source_id": record["id"],
                "augmentation": "paraphrase_template",
            }
        )
    return new
