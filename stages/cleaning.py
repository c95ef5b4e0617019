"""Normalise, redact and filter canonical records; every dropped record keeps its reason.

Order: Unicode repair (ftfy) -> HTML markup stripped (never code: stages/markup.py) -> whitespace
normalised and hard wraps joined -> PII redacted -> filter rules.
Accounting: len(records) == len(kept) + len(dropped).
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ftfy

from stages import pii
from stages.markup import strip_markup
from stages.workers import LOCAL, Engine, map_chunks

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
# A line starting like this is structure (a list, a table, code, a doctest), not a wrapped sentence.
_STRUCTURE = re.compile(r"^(\s|[-*+•>|]|\d+[.)]\s|>>>|\.\.\.|[A-Za-z_][\w.]*\(.*\)\s*(->.*)?$)")


@dataclass
class CleanResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    pii: Counter[str] = field(default_factory=Counter)


def unwrap(text: str) -> str:
    """Join hard-wrapped lines into paragraphs; keep blank lines, lists, indented code, doctests."""
    paragraphs = re.split(r"\n\s*\n", text)
    out = []
    for para in paragraphs:
        lines = para.split("\n")
        joined: list[str] = []
        for line in lines:
            if joined and not _STRUCTURE.match(line) and not _STRUCTURE.match(joined[-1]) and line.strip():
                joined[-1] = joined[-1].rstrip() + " " + line.strip()
            else:
                joined.append(line.rstrip())
        out.append("\n".join(joined))
    return "\n\n".join(p for p in out if p.strip())


def _squeeze(line: str) -> str:
    """Collapse runs of spaces inside a line; keep its indentation (code blocks need it)."""
    body = line.lstrip(" \t")
    indent = line[: len(line) - len(body)].replace("\t", "    ")
    return indent + _SPACES.sub(" ", body).rstrip()


# Text ftfy provably leaves as it is: printable ASCII without "&" (its HTML unescaping), plus tab,
# newline and form feed. Every other fix it makes needs a non-ASCII character (mojibake, quotes,
# ligatures, widths, NFC), a control character or an escape sequence. Most records are such
# text, and ftfy.fix_text walks them line by line through all its fixers (~15 % of cleaning).
_FTFY_NOOP = re.compile(r"[\t\n\x0c\x20-\x25\x27-\x7e]*")
# What str.isalnum() or str.isspace() accepts, as re's \w and \s define them (Unicode): \w is
# isalnum() plus "_". `_filter_reason` counts the rest as symbols.
_ALNUM_OR_SPACE = re.compile(r"(?:[^\W_]|\s)+")


def fix_text(text: str) -> str:
    """ftfy.fix_text, without calling it on text it would return unchanged."""
    return text if _FTFY_NOOP.fullmatch(text) else ftfy.fix_text(text)


def normalise(text: str) -> str:
    text = fix_text(text.replace("\r\n", "\n").replace("\r", "\n"))
    text = strip_markup(text)  # real HTML only: generics, comparisons and code stay (stages/markup.py)
    text = "\n".join(_squeeze(line) for line in text.split("\n"))
    return unwrap(text).strip()


@dataclass(frozen=True)
class Rules:
    """Filter thresholds (see CleaningConfig for what each means)."""

    min_chars: int = 8
    max_chars: int = 4000
    max_duplicate_line_fraction: float = 0.3
    max_top_ngram_fraction: float = 0.2
    max_symbol_fraction: float = 0.5
    min_words_for_repetition: int = 20


def clean_records(records: list[dict[str, Any]], rules: Rules) -> CleanResult:
    result = CleanResult()
    for record in records:
        messages = [
            {"role": m["role"], "content": pii.redact(normalise(m["content"]), result.pii)}
            for m in record["messages"]
        ]
        response = messages[-1]["content"]
        reason = _filter_reason(messages, response, rules)
        cleaned = {**record, "messages": messages}
        if reason is None:
            result.kept.append(cleaned)
        else:
            result.dropped.append({**_provenance(cleaned), "reason": reason, "raw": response[:500]})
    return result


def clean_all(records: list[dict[str, Any]], rules: Rules, engine: Engine = LOCAL) -> CleanResult:
    """`clean_records` on every core (stages/workers.py): the same kept, dropped and counts, in order.

    Called once per landing file, so its workers are kept from one file to the next."""
    result = CleanResult()
    for part in map_chunks(partial(clean_records, rules=rules), records, keep_workers=True, engine=engine):
        result.kept += part.kept
        result.dropped += part.dropped
        result.pii.update(part.pii)
    return result


def _filter_reason(messages: list[dict[str, str]], response: str, rules: Rules) -> str | None:
    """The name of the first rule the record fails, or None. Rules in the style of Gopher/datatrove."""
    if not response or any(not m["content"] for m in messages if m["role"] != "system"):
        return "empty"  # any turn of a dialogue, not only the last answer
    if len(response) < rules.min_chars:
        return "too_short"
    if len(response) > rules.max_chars:
        return "too_long"
    symbols = len(_ALNUM_OR_SPACE.sub("", response))  # neither alphanumeric nor whitespace
    if symbols / len(response) > rules.max_symbol_fraction:
        return "symbol_ratio"
    words = _WORD.findall(response.lower())
    if len(words) >= rules.min_words_for_repetition:
        lines = [line.strip() for line in response.split("\n") if line.strip()]
        if lines and 1 - len(set(lines)) / len(lines) > rules.max_duplicate_line_fraction:
            return "repeated_lines"
        bigrams = Counter(zip(words, words[1:], strict=False))
        (top, count), chars = bigrams.most_common(1)[0], sum(len(w) for w in words)
        if count > 1 and count * (len(top[0]) + len(top[1])) / chars > rules.max_top_ngram_fraction:
            return "repeated_ngrams"
    return None


def _provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "source_file": record["source_file"],
        "source_line": record["source_line"],
        "detail": record["id"],
    }
