"""Read one landing file into canonical records; anything unusable goes to quarantine with a reason.

Formats: JSONL, JSON array (Alpaca's files are one), CSV, Parquet, plain text (one document per
file). Schemas: instruction (instruction/input/output), prompt/completion, chat and raw text. Chat
records are OpenAI's `messages` ([{role, content}], system turns and multi-turn dialogues) or
ShareGPT's `conversations` ([{from, value}]), with the role names `user`/`human`,
`assistant`/`gpt` and `system` recognised as they are.

`corpus.fields` maps canonical names onto the names your files use: record fields
({instruction: question, output: answer}), the keys of a turn ({role: speaker, content: text}) and
role names ({role.user: customer, role.assistant: agent, role.system: context}).

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
# Role names recognised without configuration: OpenAI's, and ShareGPT's human/gpt.
ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
# What corpus.fields may map: record fields, the keys of a chat turn, and role names.
RECORD_FIELDS = ("id", "system", "instruction", "input", "output", "prompt", "completion", "messages",
                 "conversations", "text", "chosen", "rejected")  # fmt: skip
TURN_KEYS = ("role", "content")
ROLE_FIELDS = tuple(f"role.{role}" for role in sorted(ROLES))


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
            yield from _csv_rows(path)
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


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as dicts keyed by the header, each with the file line it starts on (a quoted cell may
    span lines); columns past the header are dropped, missing ones are None."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    end = reader.line_num  # the last file line read so far
    for row in reader:
        start, end = end + 1, reader.line_num
        if row:  # a blank line is no record
            yield start, {name: row[i] if i < len(row) else None for i, name in enumerate(header)}


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
        if canonical in RECORD_FIELDS and source in raw:
            row[canonical] = raw[source]
    schema, messages = _messages(row, fields)
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


def _messages(row: dict[str, Any], fields: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
    system = _text(row, "system", required=False)
    head = [{"role": "system", "content": system}] if system else []
    for name in ("messages", "conversations"):
        if name in row:
            messages = turns(row[name], fields, name)
            if messages[-1]["role"] != "assistant":
                raise BadRecordError(
                    "missing_field", "the last message must be the assistant's (the training target)"
                )
            if head and messages[0]["role"] != "system":
                messages = [*head, *messages]
            return "chat", messages
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


def turns(value: Any, fields: dict[str, str], name: str = "messages") -> list[dict[str, str]]:
    """A chat in OpenAI's ({role, content}) or ShareGPT's ({from, value}) shape -> canonical turns.

    Role names are OpenAI's, ShareGPT's human/gpt, or what corpus.fields maps (role.user: ...);
    the turn keys are role/content, from/value, or what corpus.fields maps (role: ..., content: ...).
    """
    if not isinstance(value, list) or not value:
        raise BadRecordError("wrong_type", f"'{name}' should be a non-empty list of turns")
    names = {**ROLE_NAMES, **{fields[f"role.{r}"]: r for r in ROLES if f"role.{r}" in fields}}
    out = []
    for turn in value:
        if not isinstance(turn, dict):
            raise BadRecordError("wrong_type", f"bad turn {str(turn)[:80]}: expected an object")
        role_key = next((k for k in (fields.get("role"), "role", "from") if k in turn), "role")
        content_key = next((k for k in (fields.get("content"), "content", "value") if k in turn), "content")
        name_in_file, content = turn.get(role_key), turn.get(content_key)
        role = names.get(name_in_file) if isinstance(name_in_file, str) else None
        if role is None or not isinstance(content, str):
            raise BadRecordError(
                "wrong_type",
                f"bad turn {str(turn)[:80]}: needs a role ({', '.join(sorted(names))}; map others with "
                f"corpus.fields, e.g. role.assistant: bot) and a text content",
            )
        out.append({"role": role, "content": content})
    return out


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
