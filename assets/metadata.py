"""Small helpers that turn stage results into Dagster metadata a user wants to read."""

import base64
from pathlib import Path
from typing import Any

import dagster as dg


def md_table(
    rows: list[dict[str, Any]], columns: list[str], limit: int = 5, width: int = 80
) -> dg.MetadataValue:
    """A markdown table of the first `limit` rows, cells shortened to `width` characters."""

    def cell(value: Any) -> str:
        text = str(value).replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows[:limit]]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: dict[str, int], key: str = "reason") -> dg.MetadataValue:
    rows = [{key: k, "count": v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return md_table(rows, [key, "count"], limit=50) if rows else dg.MetadataValue.md("(none)")


def png(path: Path, title: str) -> dg.MetadataValue:
    """An image inline in the asset's metadata (the Dagster UI renders markdown images)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{data})")
