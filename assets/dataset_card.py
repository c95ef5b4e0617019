"""The dataset card: what went in, what came out and why, per materialisation of the training data.

Built from the published summaries of the data assets; shown as Dagster metadata on
`tokenized_dataset` and logged with the fine-tune's MLflow run.
"""

from collections import Counter
from typing import Any

from resources.settings import Paths
from stages.tables import read_json


def summary(paths: Paths, asset: str, name: str = "summary.json", partition: str | None = None) -> dict:
    """An asset's published summary file, or {} if it has not been materialised."""
    if not paths.has_latest(asset, partition):
        return {}
    path = paths.latest(asset, partition) / name
    return read_json(path) if path.is_file() else {}


def corpus_accounting(paths: Paths) -> dict[str, Any]:
    """documents_in, documents_kept, dropped (reason -> count) and pii (type -> count) over the
    landing files the current training data was built from. documents_in = kept + sum(dropped)."""
    dedup = summary(paths, "deduplicated_corpus")
    if not dedup:
        return {}
    documents_in, dropped, pii = 0, Counter(), Counter()
    for key in dedup["partitions"]:
        raw, clean = (
            summary(paths, "raw_corpus", partition=key),
            summary(paths, "clean_corpus", partition=key),
        )
        documents_in += raw.get("documents_in", 0)
        dropped.update(raw.get("quarantined", {}))
        dropped.update(clean.get("dropped", {}))
        pii.update(clean.get("pii", {}))
    dropped["duplicate"] += dedup["duplicates"]
    dropped["near_duplicate"] += dedup.get("near_duplicates", 0)
    dropped["contaminated"] += dedup["contaminated"]
    dropped["over_max_train_examples"] += dedup.get("capped", 0)
    return {
        "documents_in": documents_in,
        "documents_kept": dedup["train_examples"] + dedup["eval_examples"].get("held_out", 0),
        "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        "pii": dict(sorted(pii.items())),
        "partitions": dedup["partitions"],
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
