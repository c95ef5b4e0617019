"""Record fields read straight from Arrow columns, without a Python dict per record.

A one-record fix reruns every cross-file stage over the whole corpus; turning each record's
nested messages into dicts (and then joining, dumping or checking them one by one) was most of
what those reruns cost (benchmarks/scale.py: ~1 s per pass at 100k records, ~10 s at 1M). These
give the same values as `record_text`, `schema_problem` and the last answer of each record, from
the column buffers, so per-record Python is left for the records a cache has not seen.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.content import record_key
from stages.readers import ROLES, schema_problem

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def messages(table: pa.Table) -> pa.ListArray:
    """The `messages` column as one array, in the canonical list<struct<role, content>> type."""
    column = table.column("messages").combine_chunks()
    if not column.type.equals(MESSAGES):
        column = column.cast(MESSAGES)  # the same fields in another order, or large strings
    return column


def _contents(column: pa.ListArray) -> pa.ListArray:
    """Each record's list of message contents (the list offsets of `column`, its content field)."""
    return pa.ListArray.from_arrays(column.offsets, column.values.field("content"))


def record_texts(table: pa.Table) -> pa.StringArray:
    """`record_text` of every row (its messages' contents joined by newlines); '' without messages."""
    if not table.num_rows:
        return pa.array([], pa.string())
    return pc.fill_null(pc.binary_join(_contents(messages(table)), "\n"), "")


def last_contents(table: pa.Table) -> list[str]:
    """The last message's content of every row (the response dedup compares); '' without one."""
    if not table.num_rows:
        return []
    column = messages(table)
    offsets = column.offsets.to_numpy()
    has = offsets[1:] > offsets[:-1]
    contents = column.values.field("content")
    if has.all():  # every row has a message: no loop over the rows
        return pc.fill_null(contents.take(pa.array(offsets[1:] - 1, pa.int64())), "").to_pylist()
    last = contents.take(pa.array(offsets[1:][has] - 1, pa.int64())).to_pylist()
    out = [""] * table.num_rows
    for i, text in zip(np.flatnonzero(has).tolist(), last, strict=True):
        out[i] = text or ""
    return out


def last_contents_at(table: pa.Table, rows: list[int]) -> list[str]:
    """`last_contents` of these rows: taken when they are few, else read for every row in one pass
    and picked (cheaper, for most of a table, than a take of its nested rows)."""
    if len(rows) * 10 < table.num_rows:
        return last_contents(table.take(pa.array(rows, pa.int64())))
    every = last_contents(table)
    return [every[i] for i in rows]


def record_keys(rows: pa.Table | pa.RecordBatch) -> list[str]:
    """Each row's `record_key`: from its column, computed from the row where it has none."""
    n = rows.num_rows
    keys = rows.column("record_key").to_pylist() if "record_key" in rows.schema.names else [None] * n
    missing = [i for i, k in enumerate(keys) if k is None]
    if not missing:
        return keys
    for i, row in zip(missing, rows.take(pa.array(missing, pa.int64())).to_pylist(), strict=True):
        keys[i] = record_key(row)
    return keys


def schema_problems(table: pa.Table) -> dict[int, str]:
    """{row: `schema_problem` of its record} for the rows that have one.

    The checks run on the columns; only rows they flag become dicts, and `schema_problem` gives
    the message (so the verdict and its words are the per-record function's).
    """
    n = table.num_rows
    if not n:
        return {}
    if "messages" not in table.column_names or not _castable(table.column("messages").type):
        suspect = np.ones(n, dtype=bool)  # not a list of {role, content}: every row is checked
    else:
        suspect = _missing(table, "id") | _missing(table, "source_file")
        column = messages(table)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        suspect |= lengths == 0
        offsets = column.offsets.to_numpy()
        starts = offsets[:-1] - offsets[0]
        flat = column.values.slice(offsets[0], offsets[-1] - offsets[0])  # every row's messages, in order
        bad_turn = ~pc.fill_null(pc.is_in(flat.field("role"), pa.array(sorted(ROLES))), False).to_numpy(
            zero_copy_only=False
        )
        bad_turn |= pc.is_null(flat.field("content")).to_numpy(zero_copy_only=False)
        bad_turn |= pc.is_null(flat).to_numpy(zero_copy_only=False)
        has = lengths > 0
        suspect[has] |= np.add.reduceat(bad_turn.astype(np.int64), starts[has]) > 0
        rows = np.flatnonzero(has & ~suspect)
        last = (starts + lengths - 1)[rows]
        # An answer with an ASCII letter or digit is not empty by any definition of whitespace; only
        # the others become Python strings, checked with Python's own strip (what schema_problem
        # means by empty). Judged over every message, then read at the last ones: taking the last
        # answers out first copied them all (~1 s at 1M records), and all as strings cost ~2 s.
        surely = pc.and_(
            pc.equal(flat.field("role"), "assistant"),
            pc.match_substring_regex(flat.field("content"), "[A-Za-z0-9]"),
        )
        unsure = np.flatnonzero(~pc.fill_null(surely, False).to_numpy(zero_copy_only=False)[last])
        at = pa.array(last[unsure], pa.int64())
        pairs = zip(
            flat.field("role").take(at).to_pylist(), flat.field("content").take(at).to_pylist(), strict=True
        )
        empty = [role != "assistant" or not text.strip() for role, text in pairs]
        suspect[rows[unsure[np.array(empty, dtype=bool)]]] = True
    flagged = np.flatnonzero(suspect)
    records = table.take(pa.array(flagged, pa.int64())).to_pylist()
    found = {int(i): schema_problem(r) for i, r in zip(flagged, records, strict=True)}
    return {i: p for i, p in found.items() if p is not None}


def _missing(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.ones(table.num_rows, dtype=bool)
    column = table.column(name)
    if not pa.types.is_string(column.type):
        return np.ones(table.num_rows, dtype=bool)  # `not record.get(name)` is left to schema_problem
    return pc.fill_null(pc.equal(column, ""), True).to_numpy(zero_copy_only=False)


def _castable(kind: pa.DataType) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(
        kind.value_type
    ):
        return False
    fields = {
        kind.value_type.field(i).name: kind.value_type.field(i).type
        for i in range(kind.value_type.num_fields)
    }
    return set(fields) == {"role", "content"} and all(
        pa.types.is_string(t) or pa.types.is_large_string(t) for t in fields.values()
    )
