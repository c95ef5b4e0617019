"""Reading landing files: every format and schema, and bad rows quarantined with a reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.readers import UnreadableFileError, read_file


def test_jsonl_instruction_records_keep_source_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"id": "x1", "instruction": "Say hi", "input": "politely", "output": "Hello!"})
        + "\n\n"
        + json.dumps({"instruction": "Add", "output": "2"})
        + "\n"
    )
    result = read_file(path, "a.jsonl")
    assert [r["id"] for r in result.records] == ["x1", "a.jsonl:3"]
    assert result.records[0]["messages"] == [
        {"role": "user", "content": "Say hi\n\npolitely"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert result.records[1]["source_line"] == 3
    assert result.quarantine == []


def test_bom_crlf_and_bad_rows_go_to_quarantine_with_reasons(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"}).encode()
    lines = [
        b"\xef\xbb\xbf" + good,  # BOM on the first line
        b'{"prompt": "broken"',  # invalid JSON
        b'{"prompt": "caf\xe9", "completion": "x"}',  # invalid UTF-8 (latin-1 byte)
        b'{"prompt": 3, "completion": "x"}',  # wrong type
        b'{"something": "else"}',  # no known schema
        b"[1, 2]",  # not an object
        b"\x00\x01\x02\xff binary garbage",
        b'{"text": "' + b"a" * 1_100_000 + b'"}',  # a line over the limit
        good,
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    result = read_file(path, "mixed.jsonl")
    reasons = {q["source_line"]: q["reason"] for q in result.quarantine}
    assert reasons == {
        2: "invalid_json",
        3: "invalid_utf8",
        4: "wrong_type",
        5: "missing_field",
        6: "not_an_object",
        7: "invalid_utf8",
        8: "line_too_long",
    }
    assert [r["source_line"] for r in result.records] == [1, 9]
    assert result.records[0]["messages"][-1]["content"] == "c"
    assert len(result.records) + len(result.quarantine) == len(lines)


def test_json_array_csv_parquet_text_and_chat(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "i", "output": "o"}, {"text": "raw doc"}]))
    (tmp_path / "b.csv").write_text("question,answer\nWhat?,That.\nWhy?,Because.\n", encoding="utf-8-sig")
    pq.write_table(
        pa.Table.from_pylist(
            [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}]
        ),
        tmp_path / "c.parquet",
    )
    (tmp_path / "d.txt").write_text("A whole document.\nSecond line.")

    a = read_file(tmp_path / "a.json", "a.json")
    assert [r["schema"] for r in a.records] == ["instruction", "text"]
    b = read_file(tmp_path / "b.csv", "b.csv", fields={"prompt": "question", "completion": "answer"})
    assert [r["messages"][-1]["content"] for r in b.records] == ["That.", "Because."]
    assert [r["source_line"] for r in b.records] == [2, 3]
    c = read_file(tmp_path / "c.parquet", "c.parquet")
    assert c.records[0]["schema"] == "chat" and c.records[0]["messages"][0]["role"] == "user"
    d = read_file(tmp_path / "d.txt", "d.txt")
    assert d.records[0]["messages"] == [{"role": "assistant", "content": "A whole document.\nSecond line."}]


def test_chat_must_end_with_the_assistant(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = read_file(path, "chat.jsonl")
    assert result.records == [] and result.quarantine[0]["reason"] == "missing_field"


def test_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.docx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(UnreadableFileError, match=r"notes.docx: unknown format '.docx'.*corpus.format"):
        read_file(path, "notes.docx")
