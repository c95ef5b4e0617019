"""Read one landing file into canonical records; anything unusable goes to quarantine with a reason.

Formats: JSONL, JSON array, CSV, Parquet, plain text (one document per file).
Schemas: instruction (instruction/input/output), prompt/completion, chat (messages) and raw text.
`corpus.fields` maps canonical names onto the names your files use.

A canonical record is a dict:
  id, source_file, source_line, schema, messages ([{role, content}], last one the assistant's)
Raw text records carry a single assistant message and schema "text".
"""

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from stages import pii

FORMATS_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
}
# A single JSONL line above this is refused before parsing: it is almost always a broken export.
MAX_LINE_BYTES = 1_000_000
ROLES = {"system", "user", "assistant"}


class UnreadableFileError(ValueError):
    """The whole file cannot be read (unknown format, not a Parquet file, ...)."""


@dataclass
class ReadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)


def detect_format(path: Path, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS_BY_SUFFIX))
        raise UnreadableFileError(
            f"{path.name}: unknown format '{path.suffix or '(no extension)'}'; "
            f"rename it to one of {known} or set corpus.format"
        )
    return fmt


def read_file(path: Path, key: str, fmt: str = "auto", fields: dict[str, str] | None = None) -> ReadResult:
    """Read `path` (partition `key`) into canonical records plus quarantined rows."""
    fmt = detect_format(path, fmt)
    result = ReadResult()
    for line, raw in iter_rows(path, fmt, result, key):
        try:
            result.records.append(to_record(raw, key, line, fields or {}))
        except BadRecordError as err:
            result.quarantine.append(quarantine_row(key, line, err.reason, err.detail, raw))
    return result


class BadRecordError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def quarantine_row(key: str, line: int, reason: str, detail: str, raw: Any) -> dict[str, Any]:
    """A quarantined row with its reason; the excerpt is PII-redacted like everything stored."""
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return {
        "source_file": key,
        "source_line": line,
        "reason": reason,
        "detail": detail,
        "raw": pii.redact(text[:500]),
    }


def iter_rows(path: Path, fmt: str, result: ReadResult, key: str) -> Iterator[tuple[int, Any]]:
    """(line, raw row) of a file in a known format; unparseable lines go to result.quarantine."""
    match fmt:
        case "jsonl":
            yield from _jsonl_rows(path, result, key)
        case "json":
            yield from _json_rows(path)
        case "csv":
            text = path.read_bytes().decode("utf-8-sig", errors="replace")
            # Data lines start at line 2 (line 1 is the header); multi-line cells shift this, a known limit.
            for i, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
                yield i, {k: v for k, v in row.items() if k is not None}
        case "parquet":
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as err:  # pyarrow raises several types for a corrupt file
                raise UnreadableFileError(f"{path.name}: not a readable Parquet file ({err})") from err
            yield from enumerate(rows, start=1)
        case "text":
            yield 1, {"text": path.read_bytes().decode("utf-8-sig", errors="replace")}
        case _:
            raise UnreadableFileError(f"{path.name}: unsupported corpus.format '{fmt}'")


def _jsonl_rows(path: Path, result: ReadResult, key: str) -> Iterator[tuple[int, Any]]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, line in enumerate(data.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        excerpt = line[:500].decode("utf-8", errors="replace")
        if len(line) > MAX_LINE_BYTES:
            result.quarantine.append(
                quarantine_row(key, number, "line_too_long", f"{len(line)} bytes > {MAX_LINE_BYTES}", excerpt)
            )
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            result.quarantine.append(quarantine_row(key, number, "invalid_utf8", str(err), excerpt))
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as err:
            result.quarantine.append(quarantine_row(key, number, "invalid_json", err.msg, excerpt))


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableFileError(f"{path.name}: not valid UTF-8 JSON ({err})") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UnreadableFileError(f"{path.name}: a .json landing file must hold an array of records")
    # Position in the array stands in for the line number.
    yield from enumerate(data, start=1)


def to_record(raw: Any, key: str, line: int, fields: dict[str, str]) -> dict[str, Any]:
    """One raw row -> canonical record, or BadRecordError with the reason."""
    if not isinstance(raw, dict):
        raise BadRecordError("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    row = dict(raw)
    for canonical, source in fields.items():
        if source in raw:
            row[canonical] = raw[source]
    schema, messages = _messages(row)
    rid = row.get("id")
    record_id = str(rid) if isinstance(rid, str | int) and str(rid) else f"{key}:{line}"
    return {
        "id": record_id,
        "source_file": key,
        "source_line": line,
        "schema": schema,
        "messages": messages,
    }


def _text(row: dict[str, Any], name: str, required: bool = True) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise BadRecordError("missing_field", f"'{name}' is missing")
        return ""
    if not isinstance(value, str):
        raise BadRecordError("wrong_type", f"'{name}' should be a string, got {type(value).__name__}")
    return value


def _messages(row: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    system = _text(row, "system", required=False)
    head = [{"role": "system", "content": system}] if system else []
    if "messages" in row:
        return "chat", _chat(row["messages"])
    if "instruction" in row or "output" in row:
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return "instruction", [*head, {"role": "user", "content": user}, _assistant(_text(row, "output"))]
    if "prompt" in row or "completion" in row:
        user = _text(row, "prompt")
        return "prompt_completion", [
            *head,
            {"role": "user", "content": user},
            _assistant(_text(row, "completion")),
        ]
    if "text" in row:
        return "text", [_assistant(_text(row, "text"))]
    raise BadRecordError(
        "missing_field",
        f"no known schema in fields {sorted(row)[:8]}: expected instruction/output, prompt/completion, "
        "messages or text (map yours with corpus.fields)",
    )


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def _chat(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRecordError("wrong_type", "'messages' should be a non-empty list of {role, content}")
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise BadRecordError("wrong_type", f"bad message {str(m)[:80]}: needs role in {sorted(ROLES)}")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "assistant":
        raise BadRecordError(
            "missing_field", "the last message must be the assistant's (the training target)"
        )
    return messages


def schema_problem(record: dict[str, Any]) -> str | None:
    """What makes a canonical record unusable for training, or None."""
    if not record.get("id") or not record.get("source_file"):
        return "missing id or source_file"
    messages = record.get("messages") or []
    if not messages or any(
        m.get("role") not in ROLES or not isinstance(m.get("content"), str) for m in messages
    ):
        return "messages must be a non-empty list of {role, content}"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "the last message must be a non-empty assistant answer"
    return None
