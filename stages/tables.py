"""Parquet and JSON helpers for the files stages exchange (records keep nested messages)."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy._core import multiarray as np_multiarray

from stages.content import record_key

# Arrow's default allocator in this pyarrow is mimalloc, which on this 2-core VM made every
# allocation-heavy step several times slower than jemalloc (same process, same data, 2026-12-03:
# 32 clean partitions of 100k records read in 1.26 s vs 0.39 s, a take of 99k strings 0.32 s vs
# 0.02 s; pages handed back to the kernel and faulted in again, as glibc did to training).
# Set here, where every stage's Parquet I/O comes from; ARROW_DEFAULT_MEMORY_POOL still decides.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and "jemalloc" in pa.supported_memory_backends():
    pa.set_memory_pool(pa.jemalloc_memory_pool())

# NumPy asks for transparent huge pages (madvise) on every array of 4 MB or more. On this VM (a
# Firecracker guest that reports freed memory back to its host) a huge page faulted in after the
# memory was handed back costs ~40 x a small one: a 512 MB array took 5.8-6.1 s to fill with them
# against 0.20 s without, every time after a few seconds' pause (2026-12-03, benchmarks/scale.py's
# MinHash signatures and token ids are arrays of this size at 1M records). NUMPY_MADVISE_HUGEPAGE
# still decides where it is set.
if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
    np_multiarray._set_madvise_hugepage(False)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as Parquet; an empty list still writes a readable (column-less) file."""
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    pq.write_table(table, path)


def write_table(path: Path, table: pa.Table) -> None:
    """Write a table as `write_rows` writes its rows (an empty one as a column-less file)."""
    pq.write_table(table if table.num_rows else pa.table({}), path)


def with_new_records(train: pa.Table, new: list[dict[str, Any]]) -> pa.Table:
    """Train rows marked as originals (source_id = id, augmentation "none"), then the new records:
    what `write_rows` of the same records as dicts writes, built without a dict per train row.

    A new record's messages are its own, so its `record_key` is computed here, never copied from
    the record it was made from (the token cache would hand it its source's tokens)."""
    new = [{**r, "record_key": record_key(r)} for r in new]
    if not train.num_rows:
        return pa.Table.from_pylist(new) if new else pa.table({})
    originals = train.append_column("source_id", train.column("id")).append_column(
        "augmentation", pa.array(["none"] * train.num_rows, pa.string())
    )
    return (
        pa.concat_tables([originals, pa.Table.from_pylist(new, schema=originals.schema)])
        if new
        else originals
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def arrow_batches(
    *paths: Path, columns: list[str] | None = None, batch_size: int = 8192
) -> Iterator[pa.RecordBatch]:
    """The rows of each file in turn as Arrow record batches (never all of them at once), of the given
    columns where a file has them."""
    for path in paths:
        file = pq.ParquetFile(path)
        present = [c for c in columns if c in file.schema_arrow.names] if columns else None
        yield from file.iter_batches(batch_size=batch_size, columns=present)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Conversation records as a table a person reads: id, landing file, prompt, response."""
    return pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "source_file": [r.get("source_file") for r in rows],
            "prompt": ["\n".join(m["content"] for m in r["messages"][:-1]) for r in rows],
            "response": [r["messages"][-1]["content"] for r in rows],
        }
    )
