"""Reading landing files: every format and schema, and bad rows quarantined with a reason."""

import json
from pathlib import Path

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


FORMATS = Path(__file__).parents[1] / "data" / "formats"


def test_csv_line_numbers_match_the_file_with_multi_line_cells(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(
        "prompt,completion\n"
        'One?,"first line\nsecond line"\n'  # lines 2-3
        "\n"  # line 4: blank, no record
        'Two?,"a\n\nb\nc"\n'  # lines 5-8
        "Three?\n"  # line 9: no completion column
        "Four?,done\n"  # line 10
    )
    result = read_file(path, "qa.csv")
    assert [r["source_line"] for r in result.records] == [2, 5, 10]
    assert result.records[1]["messages"][-1]["content"] == "a\n\nb\nc"
    assert [(q["source_line"], q["reason"]) for q in result.quarantine] == [(9, "missing_field")]
    # The committed test file: each record starts on the line its id is on.
    lines = (FORMATS / "prompt_completion.csv").read_text().split("\n")
    for r in read_file(FORMATS / "prompt_completion.csv", "pc.csv").records:
        assert lines[r["source_line"] - 1].startswith(r["id"] + ",")


def test_sharegpt_conversations_are_read_without_configuration():
    result = read_file(FORMATS / "sharegpt.jsonl", "sharegpt.jsonl")
    assert result.quarantine == [] and len(result.records) == 7
    first, second = result.records[0], result.records[1]
    assert first["schema"] == "chat"
    # from/value with human/gpt (and a system turn), then user/assistant: the same canonical turns.
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user", "assistant"]
    raw = json.loads((FORMATS / "sharegpt.jsonl").read_text().splitlines()[0])
    assert [m["content"] for m in first["messages"]] == [t["value"] for t in raw["conversations"]]


def test_other_role_and_key_names_map_with_corpus_fields():
    fields = {"messages": "dialogue", "role": "speaker", "content": "text",
              "role.user": "customer", "role.assistant": "agent"}  # fmt: skip
    result = read_file(FORMATS / "sharegpt_custom_roles.jsonl", "support.jsonl", fields=fields)
    assert result.quarantine == [] and len(result.records) == 6
    assert [m["role"] for m in result.records[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    unmapped = read_file(
        FORMATS / "sharegpt_custom_roles.jsonl", "support.jsonl", fields={"messages": "dialogue"}
    )
    assert unmapped.records == [] and {q["reason"] for q in unmapped.quarantine} == {"wrong_type"}
    assert "map others with corpus.fields, e.g. role.assistant: bot" in unmapped.quarantine[0]["detail"]


def test_openai_chat_keeps_system_turns_and_whole_dialogues():
    result = read_file(FORMATS / "openai_chat.jsonl", "openai.jsonl")
    assert result.quarantine == [] and len(result.records) == 8
    roles = [[m["role"] for m in r["messages"]] for r in result.records]
    assert roles[0] == ["system", "user", "assistant", "user", "assistant"]
    assert roles[1] == ["user", "assistant", "user", "assistant"]
    assert roles[3] == ["user", "assistant"]


def test_alpaca_json_array_and_the_other_committed_files():
    alpaca = read_file(FORMATS / "alpaca.json", "alpaca.json")
    assert alpaca.quarantine == [] and len(alpaca.records) == 10
    assert {r["schema"] for r in alpaca.records} == {"instruction"}
    assert alpaca.records[0]["messages"][0]["content"].endswith(
        "\n\nAnswer for Python 3.12."
    )  # input appended
    expected = {"instruction.jsonl": ("instruction", 10), "prompt_completion.csv": ("prompt_completion", 10),
                "text.jsonl": ("text", 16), "notes.md": ("text", 1)}  # fmt: skip
    for name, (schema, n) in expected.items():
        result = read_file(FORMATS / name, name)
        assert result.quarantine == [] and [r["schema"] for r in result.records] == [schema] * n, name
