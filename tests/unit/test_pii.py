"""PII rules: what each redacts, what it must leave alone (code above all), and their measured
precision (hand-labelled sample) and recall (planted set), as benchmarks/pii.py reports them."""

import ast
import json
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from stages import pii
from stages.cleaning import normalise
from stages.example_corpus import stdlib_records

DATA = Path(__file__).parents[1] / "data"
GOAL = 0.95


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "text",
    [
        "Use s[::2] to take every other item.",
        "Python 3.11.2.1 is a version, and so is v2.7.2.2 and pip==1.2.3.4.",
        "See section 8.2.4.44 of the HTML spec.",
        "Bind to 127.0.0.1, 0.0.0.0, ::1 or 192.168.1.1; docs use 192.0.2.1 and 2001:db8::1.",
        "Multicast 224.0.0.1 and link-local fe80::1ff:fe23:4567:890a are no one's machine.",
        "std::vector<int>, a::b and dead::beef are C++ scopes.",
        "At 12:30:45 the value 0xdeadbeef was 2047.984375.",
        "The float 0.09999999999999995, the id 1234567890 and 2023-12-04 are not PII.",
        "v3.2.0 2022-12-28 and 1.3.6...1.3.7 are release notes.",
        "A calendar row: 16171819202122 23242526272829.",
        "Message-ID: <15090.61304.110929.45684@aaa.zzz.org>",
        "References: <foo@dom.ain> <bar@dom.ain>",
        "git clone git@github.com:org/repo.git",
        'File "foo-bar@baz.py", line 7, in foo-bar@baz',
        "<a4929a40-6328-491a-aaaf-cb79ed7309a2@q2g2000vbk.googlegroups.com>",
        "<002001c144a6$8752e060$56104586@oxy.edu>",
    ],
)
def test_what_only_looks_like_pii_is_left_alone(text):
    assert pii.redact(text) == text


def test_global_addresses_and_every_kind_are_redacted_with_typed_placeholders():
    text = (
        "Mail ada@example.org, call (415) 555-2671 or 020 7946 0958, server 93.184.216.34 or "
        "2606:4700:4700::1111, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE."
    )
    counts: Counter[str] = Counter()
    assert pii.redact(text, counts) == (
        "Mail <EMAIL>, call <PHONE> or <PHONE>, server <IP_ADDRESS> or "
        "<IP_ADDRESS>, card <CARD_NUMBER>, key <SECRET>."
    )
    assert counts == {"email": 1, "phone": 2, "ip_address": 2, "card_number": 1, "secret": 1}
    assert pii.find(text) == counts


@pytest.mark.parametrize("address", ["info@uni.edu.py", "cafe@babe.com", "ada.lovelace+py@example.co.uk"])
def test_addresses_that_resemble_generated_ids_or_file_names_are_still_found(address):
    assert pii.redact(f"Write to {address} today.") == "Write to <EMAIL> today."


def test_in_code_only_string_literals_and_comments_are_redacted():
    doc = textwrap.dedent(
        """\
        Example::

            host = "93.184.216.34"  # ask ada@example.org
            step = s[::2] + phone_of(4155552671)

        >>> send("ada@example.org", 93.184)
        """
    )
    assert pii.redact(doc) == doc.replace('"93.184.216.34"', '"<IP_ADDRESS>"').replace(
        "ada@example.org", "<EMAIL>"
    )


def test_the_same_address_in_prose_is_redacted_but_not_a_code_token():
    # In code, `weights@self.data` is a matrix product; in prose it reads as an address.
    assert pii.redact(">>> y = weights@self.data") == ">>> y = weights@self.data"
    assert pii.redact("Write to weights@self.data") == "Write to <EMAIL>"


def test_precision_on_the_hand_labelled_sample_meets_the_goal():
    labels = _jsonl("pii_labels.jsonl")
    assert len(labels) >= 100 and all(isinstance(lab["label"], bool) for lab in labels)
    labelled = {(lab["window"], lab["rule"], lab["start"], lab["end"]): lab["label"] for lab in labels}
    verdicts: dict[str, Counter] = {}
    for window in dict.fromkeys(lab["window"] for lab in labels):
        found = {(window, m.rule, m.start, m.end) for m in pii.find_matches(window)}
        in_window = {key for key in labelled if key[0] == window}
        # Every match carries a label (a rule change that finds more shows up here, to be labelled
        # with `python benchmarks/pii.py --sample-labels`), and every true one is still found; a
        # false one the rules no longer find is a mistake fixed.
        assert found <= in_window, f"unlabelled matches in: {window[:200]!r}"
        assert {k for k in in_window if labelled[k]} <= found, f"a true match lost in: {window[:200]!r}"
        for key in found:
            verdicts.setdefault(key[1], Counter())[labelled[key]] += 1
    precision = {rule: c[True] / (c[True] + c[False]) for rule, c in verdicts.items()}
    assert set(precision) == {"email", "phone", "ipv4"}  # the rules that fire on real text
    assert all(p >= GOAL for p in precision.values()), precision
    assert any(lab["label"] is False for lab in labels)  # it holds look-alikes the rules must refuse


def test_recall_on_the_planted_set_meets_the_goal_for_every_rule():
    planted = _jsonl("pii_planted.jsonl")
    found: dict[str, Counter] = {}
    for item in planted:
        start = item["text"].index(item["pii"])
        end = start + len(item["pii"])
        hit = any(
            m.rule == item["rule"] and m.start <= start and m.end >= end
            for m in pii.find_matches(item["text"])
        )
        found.setdefault(item["rule"], Counter())[hit] += 1
        # Redacted, the planted value is gone from the text.
        assert not hit or item["pii"] not in pii.redact(item["text"])
    assert set(found) == set(pii.RULES)
    recall = {rule: c[True] / (c[True] + c[False]) for rule, c in found.items()}
    assert all(r >= GOAL for r in recall.values()), recall
    assert sum(found["phone"].values()) >= 40  # national and international formats of several countries


# --- redaction never rewrites code: snippets found independently of stages/pii.py's own detector ---

_PROMPT = re.compile(r"^\s*(?:>>>|\.\.\.)(?: |$)")


def _snippets(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line + 1, source) of every doctest example, indented block and paragraph
    of `text` that parses as Python: a wider net than the redactor's own notion of code."""
    lines = text.split("\n")
    spans = []
    i = 0
    while i < len(lines):  # doctest examples: a >>> line and its ... continuation lines
        if lines[i].lstrip().startswith(">>>"):
            j = i + 1
            while j < len(lines) and lines[j].lstrip().startswith("..."):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    for pattern in (r"(?:^[ \t]+\S.*(?:\n|$))+", r"(?:^.*\S.*(?:\n|$))+"):  # indented blocks, paragraphs
        for m in re.finditer(pattern, text, re.MULTILINE):
            first = text.count("\n", 0, m.start())
            spans.append((first, first + m.group().rstrip("\n").count("\n") + 1))
    out = []
    for first, last in set(spans):
        source = _source(lines[first:last])
        if source is not None:
            out.append((first, last, source))
    return out


def _source(lines: list[str]) -> str | None:
    source = textwrap.dedent("\n".join(_PROMPT.sub("", line) for line in lines))
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    return source if source.strip() else None


class _MaskStrings(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.Constant("<str>") if isinstance(node.value, str | bytes) else node


def _shape(source: str) -> str:
    return ast.dump(_MaskStrings().visit(ast.parse(source)))


def test_redaction_never_changes_code_that_parses_in_the_example_corpus():
    records, _ = stdlib_records()
    checked, changed = 0, set()
    for record in records:
        text = normalise(record["output"])
        redacted = pii.redact(text)
        assert redacted.count("\n") == text.count("\n")
        after = redacted.split("\n")
        for first, last, source in _snippets(text):
            checked += 1
            # In its document and on its own (no doctest prompt or `::` to say it is code), the
            # snippet still parses to the same program: only string literals' contents may differ.
            for new in (_source(after[first:last]), pii.redact(source)):
                assert new is not None and _shape(new) == _shape(source), (record["id"], source)
                if new != source:
                    changed.add(record["id"])
    assert checked > 900
    # The one kind of change: addresses inside string literals of smtplib.SMTP.sendmail's doctest.
    assert changed == {"smtplib.SMTP.sendmail"}
