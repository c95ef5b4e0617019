"""The dataset card: what went in, what came out and why, per materialisation of the training data.

`deduplicated_corpus` writes the accounting into its summary (from each landing file's
clean_corpus summary); `tokenized_dataset` shows the card as Dagster metadata and the fine-tune
logs it with its MLflow run.
"""

from collections import Counter
from typing import Any


def corpus_accounting(dedup: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """documents_in, documents_kept, dropped (reason -> count) and pii (type -> count) over the
    landing files (`files`: each one's clean_corpus summary). documents_in = kept + sum(dropped)."""
    documents_in, dropped, pii = 0, Counter(), Counter()
    for clean in files.values():
        documents_in += clean["documents_in"]
        dropped.update(clean["quarantined"])
        dropped.update(clean["dropped"])
        pii.update(clean["pii"])
    dropped["duplicate"] += dedup["duplicates"]
    dropped["near_duplicate"] += dedup["near_duplicates"]
    dropped["contaminated"] += dedup["contaminated"]
    dropped["over_max_train_examples"] += dedup["capped"]
    return {
        "documents_in": documents_in,
        "documents_kept": dedup["train_examples"] + dedup["eval_examples"].get("held_out", 0),
        "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        "pii": dict(sorted(pii.items())),
        "partitions": sorted(files),
        "eval_examples": dedup["eval_examples"],
    }


def card_markdown(
    accounting: dict[str, Any], tokens: dict[str, Any], train_examples: int, methods: dict
) -> str:
    lines = [
        "## Dataset card",
        f"- landing files: {len(accounting['partitions'])}",
        f"- documents in: {accounting['documents_in']}, kept: {accounting['documents_kept']}",
        f"- train examples (after augmentation): {train_examples} ({methods})",
        f"- eval sets: {accounting['eval_examples']}",
        f"- tokens: {tokens['tokens']} in {tokens['blocks']} blocks of {tokens['block_size']} "
        f"(non-pad {tokens['non_pad_fraction']:.3f}, {tokens['truncated']} truncated), "
        f"{tokens['label_tokens']} label tokens",
        f"- dropped by packing: {tokens['dropped_no_labels']} examples whose prompt fills the "
        f"block of {tokens['block_size']} (no answer token left to learn)",
        "",
        "| dropped by rule | records |",
        "|---|---|",
        *[f"| {reason} | {count} |" for reason, count in accounting["dropped"].items()],
        "",
        "| PII redacted | count |",
        "|---|---|",
        *([f"| {kind} | {count} |" for kind, count in accounting["pii"].items()] or ["| (none) | 0 |"]),
    ]
    return "\n".join(lines)
