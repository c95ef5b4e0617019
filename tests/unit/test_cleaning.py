"""Cleaning and PII redaction: what is changed, what is dropped and why."""

from stages import pii
from stages.cleaning import Rules, clean_records, normalise


def _record(response: str, prompt: str = "Explain it.") -> dict:
    return {
        "id": "r",
        "source_file": "f",
        "source_line": 1,
        "schema": "instruction",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    }


def test_normalise_repairs_unicode_strips_markup_and_unwraps():
    text = "Return the\n<b>square</b> root&amp;more.\n\nSecond   para\r\n- item one\n- item two\n\n    x =  1"
    assert (
        normalise(text) == "Return the square root&more.\n\nSecond para\n- item one\n- item two\n\n    x = 1"
    )
    assert normalise("cafÃ©") == "café"  # mojibake repaired by ftfy


def test_filters_drop_with_reasons_and_accounting_holds():
    records = [_record(""), _record("short"), _record("x" * 50), _record("A good answer here.")]
    result = clean_records(records, Rules(min_chars=8, max_chars=40))
    assert [d["reason"] for d in result.dropped] == ["empty", "too_short", "too_long"]
    assert len(result.kept) == 1
    assert len(records) == len(result.kept) + len(result.dropped)


def test_pii_is_redacted_with_typed_placeholders():
    text = (
        "Mail John.Doe@Example.COM or call +44 20 7946 0958 / (415) 555-2671. "
        "Server 93.184.216.34 and 2a00:1450:4001:81c::200e. Card 4111 1111 1111 1111, "
        "key AKIAIOSFODNN7EXAMPLE, header Authorization: Bearer abcdefghijklmnop1234."
    )
    counts = __import__("collections").Counter()
    out = pii.redact(text, counts)
    assert "Example.COM" not in out and "4111" not in out and "AKIA" not in out and "93.184" not in out
    assert counts == {"email": 1, "phone": 2, "ip_address": 2, "card_number": 1, "secret": 2}
    assert "<EMAIL>" in out and "<CARD_NUMBER>" in out and "<SECRET>" in out


def test_pii_leaves_ordinary_numbers_alone():
    text = (
        "Python 3.11.7 released 2023-12-04; use range(0, 1000) and port 8080. Card-like 1234 5678 9012 3456."
    )
    assert pii.redact(text) == text  # the 16 digits fail the Luhn check


def test_private_key_block_is_one_secret():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----"
    assert pii.redact(f"key:\n{key}\ndone") == "key:\n<SECRET>\ndone"


def test_repetition_and_symbol_rules_name_the_rule():
    looping = "The byteswap of the array.\n\n" + "The byteswap is a byteswap of the array.\n\n" * 6
    spammy = "buy now " * 20
    symbols = "#### ==== **** ---- //// :::: ;;;; ~~~~ " * 3 + "ok"
    fine = "Return a new list containing all items from the iterable in ascending order. " * 1
    records = [_record(looping), _record(spammy), _record(symbols), _record(fine)]
    result = clean_records(records, Rules())
    assert [d["reason"] for d in result.dropped] == ["repeated_lines", "repeated_ngrams", "symbol_ratio"]
    assert [r["messages"][-1]["content"] for r in result.kept] == [fine.strip()]


def test_ftfy_is_skipped_only_where_it_would_change_nothing():
    import random

    import ftfy

    from stages.cleaning import _FTFY_NOOP, fix_text
    from stages.example_corpus import stdlib_records

    records, _ = stdlib_records()
    texts = [r[k] for r in records for k in ("instruction", "output")]
    # Fragments ftfy does change, mixed into printable ASCII at random.
    fragments = ["&amp;", "&lt;b&gt;", "&", "\x1b[31m", "\x0b", "\x7f", "\x00", "\r", "\u2028", "cafÃ©",
                 "\u201cquoted\u201d", "\ufb01", "\uff21", "e\u0301", "\x85", "<p>", "\t", "\x0c"]  # fmt: skip
    rng = random.Random(0)
    ascii_ = [chr(c) for c in range(0x20, 0x7F)] + ["\n"]
    for _ in range(3000):
        pieces = [
            rng.choice(fragments) if rng.random() < 0.05 else rng.choice(ascii_)
            for _ in range(rng.randrange(1, 60))
        ]
        texts.append("".join(pieces))
    skipped = [t for t in texts if _FTFY_NOOP.fullmatch(t)]
    assert len(skipped) > len(texts) // 4  # the fast path is taken ...
    assert any(not _FTFY_NOOP.fullmatch(t) and ftfy.fix_text(t) != t for t in texts)  # ... not everywhere
    assert [fix_text(t) for t in texts] == [ftfy.fix_text(t) for t in texts]


def test_symbols_are_what_is_neither_alphanumeric_nor_space():
    from stages.cleaning import _ALNUM_OR_SPACE

    every_character = (
        "".join(map(chr, range(0x110000))).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    )
    by_str = "".join(c for c in every_character if not (c.isalnum() or c.isspace()))
    assert _ALNUM_OR_SPACE.sub("", every_character) == by_str
    assert "_" in by_str and "é" not in by_str
