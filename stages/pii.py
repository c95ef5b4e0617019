"""PII and secret redaction: typed placeholders, counts per type.

Runs on every message before a record is stored downstream or shown anywhere. Patterns are
deliberately conservative for prose (dates and version numbers must not look like phones); card
numbers are only redacted when the Luhn checksum holds.
"""

import ipaddress
import re
from collections import Counter

PLACEHOLDERS = {
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "card_number": "<CARD_NUMBER>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")
_AWS_SECRET = re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)[A-Za-z0-9/+=]{40}")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){2,4}"
    r"|\(?\b\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}\b)(?![\w])"
)


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv4(match: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return False
    return True


def _ipv6(match: re.Match[str]) -> bool:
    text = match.group()
    if text.count(":") < 2 or not any(c.isalnum() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# Order matters: secrets and emails first so that their digits are not re-read as phones or IPs.
_RULES: list[tuple[str, re.Pattern[str], object]] = [
    ("secret", _PRIVATE_KEY, None),
    ("secret", _AWS_KEY, None),
    ("secret", _AWS_SECRET, None),
    ("secret", _BEARER, None),
    ("email", _EMAIL, None),
    ("card_number", _CARD, _card),
    ("ip_address", _IPV6, _ipv6),
    ("ip_address", _IPV4, _ipv4),
    ("phone", _PHONE, None),
]


def redact(text: str, counts: Counter[str] | None = None) -> str:
    """Replace PII in `text` with typed placeholders; add what was found to `counts`."""
    for kind, pattern, accept in _RULES:

        def replace(match: re.Match[str], kind: str = kind, accept: object = accept) -> str:
            if accept is not None and not accept(match):  # type: ignore[operator]
                return match.group()
            if counts is not None:
                counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text


def find(text: str) -> Counter[str]:
    """PII still present in `text` (used by the blocking check downstream)."""
    found: Counter[str] = Counter()
    redact(text, found)
    return found
