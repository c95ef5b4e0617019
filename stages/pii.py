"""PII and secret redaction: typed placeholders, counts per type, and never a rewrite of code.

Runs on every message before a record is stored downstream or shown anywhere. Each rule is
measured (benchmarks/pii.py: precision on a hand-labelled sample of the example corpus, recall on
a planted set in tests/data/):
- secrets: private key blocks, AWS access keys and secret keys, bearer tokens;
- emails;
- card numbers, only when the Luhn checksum holds;
- IP addresses, only globally routable ones (as datatrove does): loopback, private, link-local,
  documentation and reserved ranges are examples, not someone's machine. IPv6 must be global
  unicast (2000::/3), so slices (`s[::2]`), C++ scopes and hex never qualify; a dotted quad after
  a version word (`Python 3.11.2.1`) is a version;
- phone numbers by libphonenumber's matcher (the `phonenumbers` package), in international
  format from any country and in the national formats of PHONE_REGIONS.

Code is never rewritten: inside a code snippet that parses as Python (a doctest example, a
reST `::` literal block, a fenced block), only string literals and comments are searched; a
match that touches a code token (a name, number or operator) is left alone.
"""

import ast
import io
import ipaddress
import re
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers

PLACEHOLDERS = {
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "card_number": "<CARD_NUMBER>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}

# National formats (no country code) are read as numbers of these regions. NANP (US) covers the
# US, Canada and the Caribbean; then the largest English-, German- and French-writing countries
# and India. Each region added is one more matcher pass and one more numbering plan that a stray
# digit group can satisfy: JP, for one, reads "03-1234-5678" but also 10-digit IDs. International
# format (+CC ...) is found whatever the region.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "AU")


@dataclass(frozen=True)
class Match:
    rule: str  # which rule found it: email, phone, ipv4, ipv6, card_number, aws_access_key, ...
    kind: str  # its placeholder type: a key of PLACEHOLDERS
    start: int
    end: int
    text: str


_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")
_AWS_SECRET = re.compile(r"(?i)(?<=aws_secret_access_key)(?:\s*[=:]\s*['\"]?)([A-Za-z0-9/+=]{40})")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}\b")
_CARD = re.compile(r"(?<![\w.,-])(?:\d[ -]?){12,18}\d(?![\w-]|[.,]\d)")
# How card numbers are written: one run, groups of four (the last may be shorter), or Amex's 4-6-5
# and Diners' 4-6-4.
_CARD_LAYOUT = re.compile(
    r"\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5}"
)
# Issuer prefixes (IIN ranges) of the card networks and their lengths: Visa, Mastercard (51-55,
# 2221-2720), Amex (34, 37), Diners (300-305, 36, 38, 39), Discover (6011, 644-649, 65), JCB
# (3528-3589), UnionPay (62), Maestro (50, 56-58, 6x). A Luhn-valid run that starts otherwise
# (a calendar row, 0000000000000000) is no card.
_CARD_NETWORKS = [
    (re.compile(r"4"), {13, 16, 19}),
    (re.compile(r"5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720"), {16}),
    (re.compile(r"3[47]"), {15}),
    (re.compile(r"30[0-5]|3[689]"), {14, 15, 16, 17, 18, 19}),
    (re.compile(r"35(?:2[89]|[3-8]\d)"), {16, 17, 18, 19}),
    (re.compile(r"6011|64[4-9]|65|62"), {16, 17, 18, 19}),
    (re.compile(r"50|5[6-8]|6"), set(range(12, 20))),
]
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
# Global unicast IPv6 starts with a 4-digit group 2000-3fff; anything else is not global.
_IPV6 = re.compile(r"(?<![\w:.])[23][0-9A-Fa-f]{3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
# A dotted quad right after one of these is a version number, not an address.
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\b(?:v|ver|version|versions|release|python|build|revision|rev|update|patch|kernel|firmware"
    r"|section|sections|chapter|rfc\s*\d+)"
    r"\s*[:=]?\s*|[=<>~^vV]|[=<>~!]=\s*)$"
)
# A cheap gate before the phone matcher: some digit group of 7+ digits with separators allowed.
_PHONE_HINT = re.compile(r"\d(?:[ ()./\-]{0,3}\d){6,}")


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _regex(rule: str, kind: str, pattern: re.Pattern[str], accept: Callable | None = None) -> Callable:
    def finder(text: str) -> Iterator[Match]:
        for m in pattern.finditer(text):
            start, end = m.span(m.lastindex or 0)
            if accept is None or accept(text, start, end):
                yield Match(rule, kind, start, end, text[start:end])

    return finder


def _card(text: str, start: int, end: int) -> bool:
    digits = re.sub(r"\D", "", text[start:end])
    return (
        bool(_CARD_LAYOUT.fullmatch(text[start:end]))
        and any(prefix.match(digits) and len(digits) in lengths for prefix, lengths in _CARD_NETWORKS)
        and luhn_valid(digits)
    )


def _email(text: str, start: int, end: int) -> bool:
    """An email address, not a generated id (a mail Message-ID or References entry: <local@host> in
    one of those headers, a local part of dotted numbers, a UUID or a long hex run, or one that
    goes on past a `$`), nor an scp-style remote (git@github.com:org/repo), nor a file name."""
    at = text.index("@", start)
    local, domain = text[start:at], text[at + 1 : end].lower()
    if (
        re.fullmatch(r"\d+(?:\.\d+)+", local)
        or _GENERATED_ID.fullmatch(local)
        or text[start - 1 : start] == "$"
        or re.match(r":[\w~/]", text[end : end + 2])
        or _file_name(domain)
    ):
        return False
    if text[start - 1 : start] == "<":
        headers = _HEADER.findall(text, max(0, start - 500), start)
        return not (headers and headers[-1].lower() in _MESSAGE_ID_HEADERS)
    return True


# 16+ hex digits, single dashes allowed (a UUID is one): what mail and news software generates.
_GENERATED_ID = re.compile(r"(?i)[0-9a-f](?:-?[0-9a-f]){15,}")
# Paraguay's .py is also Python's file extension: it registers names only under these second
# levels (com.py, ...), so `name@module.py` is a file name.
_PY_SECOND_LEVEL = {"com", "org", "net", "edu", "gov", "mil", "coop", "una", "nic"}


def _file_name(domain: str) -> bool:
    labels = domain.split(".")
    return labels[-1] == "py" and (len(labels) < 3 or labels[-2] not in _PY_SECOND_LEVEL)


_HEADER = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9-]*):(?=\s)", re.MULTILINE)
_MESSAGE_ID_HEADERS = {"message-id", "references", "in-reply-to", "content-id", "resent-message-id"}


def _global_ipv4(text: str, start: int, end: int) -> bool:
    try:
        address = ipaddress.IPv4Address(text[start:end])
    except ValueError:
        return False
    if not address.is_global or address.is_multicast:
        return False
    # 8.2.4.44, 1.2.5.3, 7.1.4.34: section and version numbers. Addresses whose first three
    # parts are all single digits are almost only public resolvers (8.8.8.8), nobody's machine.
    if all(part < 10 for part in address.packed[:3]):
        return False
    return not _VERSION_BEFORE.search(text[max(0, start - 24) : start])


def _global_ipv6(text: str, start: int, end: int) -> bool:
    try:
        address = ipaddress.IPv6Address(text[start:end])
    except ValueError:
        return False
    return address.is_global and address in _GLOBAL_UNICAST


_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _phones(text: str) -> Iterator[Match]:
    if not _PHONE_HINT.search(text):
        return
    seen: set[tuple[int, int]] = set()
    for region in PHONE_REGIONS:
        for m in phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
        ):
            if (m.start, m.end) not in seen and _written_like_a_phone(text, m):
                seen.add((m.start, m.end))
                yield Match("phone", "phone", m.start, m.end, m.raw_string)


_DATE = re.compile(r"\b(?:1[89]|20)\d\d[-/.]\d\d?[-/.]\d\d?\b|\b\d\d?[-/.]\d\d?[-/.](?:1[89]|20)\d\d\b")


def _written_like_a_phone(text: str, m: phonenumbers.PhoneNumberMatch) -> bool:
    """libphonenumber says the digits form a valid number, grouped as a number of that country
    is written (STRICT_GROUPING); this says they stand alone and are not a float, a date or a row
    of small numbers. Valid numbering plans cover most digit strings: real text (the stdlib's
    sources, package docs) is full of valid "numbers" that are floats, dates, versions, table
    columns and part numbers (benchmarks/pii.py lists them).
    """
    raw = m.raw_string
    if m.number.extension:  # "+1 (212) 555-0199, ext. 4": judge the number, redact it all
        raw = re.split(r"(?i)[,;#]|\s*(?:ext|x)", raw)[0]
    before, after = text[max(0, m.start - 2) : m.start], text[m.end : m.end + 2]
    if re.search(r"\w[.,:/_\-]$", before) or re.match(r"[.,]\d|[%\w]", after):
        return False  # part of a longer token: 1.3.6...1.3.7, aix-6107-1415-32, +6073641856.9
    if re.search(r"[^\d +().\-/]|\.\.", raw) or _DATE.search(raw):
        return False  # an en dash, an ellipsis, a date
    groups = re.findall(r"\d+", raw)
    international = raw.startswith(("+", "00"))  # +33 1 42 68 53 00, 0033 1 42 68 53 00
    if len(groups[-1]) < 2 or (not international and any(len(g) < 2 for g in groups[1:-1])):
        return False  # "16 0.016 0.016", "0 1 2 3 4 5 6 7 8 9": numbers in a row, not a phone
    if international:
        return True
    # National format: a bare run of digits is an id, a count or a timestamp far more often than
    # a phone number, and one dot makes a float (9876.543210); a lone leading digit is a trunk "1".
    return len(groups) > 1 and raw.count(".") != 1 and (len(groups[0]) > 1 or groups[0] == "1")


# In priority order: secrets first, so their digits are not read as phones or cards; an IP-shaped
# text that is not global still keeps the phone rule off it (`_SHAPES`).
_RULES: list[Callable[[str], Iterator[Match]]] = [
    _regex("private_key", "secret", _PRIVATE_KEY),
    _regex("aws_access_key", "secret", _AWS_KEY),
    _regex("aws_secret_key", "secret", _AWS_SECRET),
    _regex("bearer_token", "secret", _BEARER),
    _regex("email", "email", _EMAIL, _email),
    _regex("card_number", "card_number", _CARD, _card),
    _regex("ipv6", "ip_address", _IPV6, _global_ipv6),
    _regex("ipv4", "ip_address", _IPV4, _global_ipv4),
    _phones,
]
RULES = ("private_key", "aws_access_key", "aws_secret_key", "bearer_token", "email", "card_number",
         "ipv6", "ipv4", "phone")  # fmt: skip
# Dotted quads and versions; five dotted pairs (01.42.68.53.00) are how the French write phones.
_SHAPES = (_IPV4, re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){2,3}(?![\w.])"))


def find_matches(text: str) -> list[Match]:
    """Every PII match in `text`: non-overlapping, in text order, none touching a code token."""
    taken: list[Match] = []
    shapes = [m.span() for pattern in _SHAPES for m in pattern.finditer(text)]
    code: list[tuple[int, int]] | None = None
    for rule in _RULES:
        for match in rule(text):
            if any(match.start < e and s < match.end for s, e in ((t.start, t.end) for t in taken)):
                continue
            if match.kind == "phone" and any(match.start < e and s < match.end for s, e in shapes):
                continue
            if code is None:
                code = code_token_spans(text)  # only computed for texts with a candidate
            if any(match.start < e and s < match.end for s, e in code):
                continue
            taken.append(match)
    return sorted(taken, key=lambda m: m.start)


def redact(text: str, counts: Counter[str] | None = None) -> str:
    """Replace PII in `text` with typed placeholders; add what was found to `counts`."""
    matches = find_matches(text)
    if not matches:
        return text
    pieces, pos = [], 0
    for m in matches:
        pieces += [text[pos : m.start], PLACEHOLDERS[m.kind]]
        pos = m.end
        if counts is not None:
            counts[m.kind] += 1
    return "".join(pieces) + text[pos:]


def find(text: str) -> Counter[str]:
    """PII still present in `text` (used by the blocking check downstream)."""
    return Counter(m.kind for m in find_matches(text))


# --- code snippets -------------------------------------------------------------------------------

_DOCTEST = re.compile(r"^([ \t]*)(>>>|\.\.\.)(?: |$)")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


@dataclass(frozen=True)
class Snippet:
    """Python code found in a text: its source and where each of its lines starts in the text."""

    source: str
    line_starts: tuple[int, ...]  # text offset of column 0 of each source line


def code_snippets(text: str) -> list[Snippet]:
    """Doctest examples (prompts removed), fenced blocks and reST `::` literal blocks that parse."""
    lines = text.split("\n")
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    found = [*_doctests(lines, offsets), *_fenced(lines, offsets), *_literal_blocks(lines, offsets)]
    return [s for s in found if _parses(s.source)]


def _doctests(lines: list[str], offsets: list[int]) -> Iterator[Snippet]:
    example: list[tuple[str, int]] = []
    for line, offset in [*zip(lines, offsets, strict=True), ("", -1)]:
        m = _DOCTEST.match(line)
        if example and (m is None or m.group(2) == ">>>"):
            yield Snippet("\n".join(s for s, _ in example), tuple(o for _, o in example))
            example = []
        if m is not None and (m.group(2) == ">>>" or example):
            cut = min(m.end(), len(line))
            example.append((line[cut:], offset + cut))


def _fenced(lines: list[str], offsets: list[int]) -> Iterator[Snippet]:
    start = None
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            if start is None:
                start = i + 1
            else:
                yield _dedented(lines[start:i], offsets[start:i])
                start = None


def _literal_blocks(lines: list[str], offsets: list[int]) -> Iterator[Snippet]:
    """The indented block after a line ending with `::` (reStructuredText's literal block)."""
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        end = j
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        if end > j:
            yield _dedented(lines[j:end], offsets[j:end])


def _dedented(lines: list[str], offsets: list[int]) -> Snippet:
    width = min((len(s) - len(s.lstrip()) for s in lines if s.strip()), default=0)
    return Snippet("\n".join(s[width:] for s in lines), tuple(o + width for o in offsets))


def _parses(source: str) -> bool:
    if not source.strip():
        return False
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


# Tokens whose text is data, not code: a placeholder there leaves the program the same program.
_TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1)}
_LAYOUT_TOKENS = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_token_spans(text: str) -> list[tuple[int, int]]:
    """Text spans of code tokens (names, numbers, operators) in the code snippets of `text`."""
    spans = []
    for snippet in code_snippets(text):
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(snippet.source).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        for tok in tokens:
            if tok.type in _TEXT_TOKENS or tok.type in _LAYOUT_TOKENS:
                continue
            (row_a, col_a), (row_b, col_b) = tok.start, tok.end
            spans.append((snippet.line_starts[row_a - 1] + col_a, snippet.line_starts[row_b - 1] + col_b))
    return spans
