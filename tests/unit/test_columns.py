"""The column readers give what the per-record functions give, on records built to differ."""

import pyarrow as pa

from stages.columns import last_contents, record_keys, record_texts, schema_problems
from stages.content import record_key
from stages.decontamination import record_text
from stages.readers import schema_problem


def _m(*turns: tuple[str, str | None]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


ROWS = [
    {"id": "ok", "source_file": "f", "messages": _m(("user", "q"), ("assistant", "a"))},
    {"id": "", "source_file": "f", "messages": _m(("user", "q"), ("assistant", "a"))},
    {"id": "b", "source_file": None, "messages": _m(("user", "q"), ("assistant", "a"))},
    {"id": "c", "source_file": "f", "messages": []},
    {"id": "d", "source_file": "f", "messages": None},
    {"id": "e", "source_file": "f", "messages": _m(("user", "q"), ("bot", "a"))},
    # Python's strip takes \x1c (a separator) and U+2003 as blanks: an empty answer here
    {"id": "g", "source_file": "f", "messages": _m(("user", "q"), ("assistant", " \u2003\x1c "))},
    {"id": "h", "source_file": "f", "messages": _m(("user", None), ("assistant", "x"))},
    {"id": "i", "source_file": "f", "messages": _m(("assistant", "x"), ("user", "y"))},
    {"id": "j", "source_file": "f", "messages": _m(("system", "s"), ("user", "q"), ("assistant", "fine"))},
    {"id": "k", "source_file": "f", "messages": _m(("user", "q"), ("assistant", " \t\n "))},
    # an answer without an ASCII letter or digit is checked with Python's strip too
    {"id": "l", "source_file": "f", "messages": _m(("user", "q"), ("assistant", "ünï çödé …"))},
]


def test_schema_problems_are_schema_problem_on_every_row():
    expected = {i: p for i, r in enumerate(ROWS) if (p := schema_problem(r)) is not None}
    assert schema_problems(pa.Table.from_pylist(ROWS)) == expected
    assert sorted(expected) == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    # A slice (offsets not starting at zero) and messages with their fields in another order.
    assert schema_problems(pa.Table.from_pylist(ROWS).slice(5)) == {
        i - 5: p for i, p in expected.items() if i >= 5
    }
    swapped = [
        {**r, "messages": [{"content": m["content"], "role": m["role"]} for m in r["messages"] or []]}
        for r in ROWS
    ]
    assert schema_problems(pa.Table.from_pylist(swapped)) == {**expected, 4: expected[3]}  # None became []


def test_texts_keys_and_answers_are_the_per_record_ones():
    valid = [r for r in ROWS if schema_problem(r) is None or r["id"] in {"i", "e"}]
    table = pa.Table.from_pylist(valid).slice(1)
    rows = valid[1:]
    assert record_texts(table).to_pylist() == [record_text(r) for r in rows]
    assert last_contents(table) == [r["messages"][-1]["content"] for r in rows]  # every row has messages
    with_empty = pa.Table.from_pylist(ROWS).slice(2)  # and rows without: '' for them
    assert last_contents(with_empty) == [
        (r["messages"] or [{"content": ""}])[-1]["content"] or "" for r in ROWS[2:]
    ]
    keyed = table.append_column(
        "record_key", pa.array([record_key(rows[0]), None, *([None] * (len(rows) - 2))])
    )
    assert record_keys(keyed) == [record_key(r) for r in rows]
    assert record_keys(table) == [record_key(r) for r in rows]
