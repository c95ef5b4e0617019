"""Cleaning and PII redaction: what is changed, what is dropped and why."""

import pytest

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


# Code and prose with angle brackets that are not HTML: cleaning must return each one unchanged.
NOT_MARKUP = {
    "C++": [
        "std::vector<int> v;",
        "std::map<std::string, std::vector<int>> index;",
        "template <typename T> class Box {};",
        "template<class T, size_t N> struct Array {};",
        "auto n = static_cast<int>(x);",
        "std::unique_ptr<Node> next;",
        "std::array<int, 3> a = {1, 2, 3};",
        "std::function<void(int)> callback;",
        "std::vector<data> rows;",
        "std::optional<time> deadline;",
        "std::vector<input> inputs;",
        "#include <stdio.h>",
        "#include <map>",
        "#include <span>",
        "if (i<n && j>m) return;",
        "std::cout << x << std::endl;",
        'std::cout << "<b>" << name << "</b>";',
    ],
    "Java": [
        "List<String> names = new ArrayList<>();",
        "Map<String, List<Integer>> groups;",
        "public static <T extends Comparable<T>> T max(List<T> xs)",
        "List<Object> items;",
        "Optional<Data> found;",
        "List<Table> tables;",
        "public <P> void accept(P value) {}",
        "Class<?> type = obj.getClass();",
        "Map.Entry<K, V> entry;",
        "new HashMap<String, Object>()",
    ],
    "Rust": [
        "let v: Vec<u8> = Vec::new();",
        "fn first<T: Clone>(xs: &[T]) -> Option<T>",
        "let b: Box<dyn Fn(i32) -> i32> = Box::new(|x| x);",
        "impl<T: Display> Show for T {}",
        "fn longest<'a>(x: &'a str, y: &'a str) -> &'a str",
        "let m: HashMap<String, Vec<i32>> = HashMap::new();",
        "let n = s.parse::<i64>()?;",
        "Result<Option<T>, E>",
        "let v: Vec<b> = vec![];",
        "f(&params, &copy, &current);",
    ],
    "TypeScript": [
        "const xs: Array<number> = [];",
        "function identity<Type>(arg: Type): Type { return arg; }",
        "const [name, setName] = useState<string>('');",
        "let n = <any>value;",
        "const ref = useRef<HTMLDivElement>(null);",
        "type Pair<A, B> = [A, B];",
        "Promise<Response>",
        "Record<string, Array<Label>>",
        "el.innerHTML = '<b>' + name + '</b>';",
    ],
    "C#": [
        "Dictionary<string, List<int>> index = new();",
        "public async Task<IActionResult> Get(int id)",
        "Span<byte> buffer = stackalloc byte[16];",
        "Func<int, bool> isEven = x => x % 2 == 0;",
        "IEnumerable<Option> options;",
        "/// <summary>Gets the name.</summary>",
    ],
    "Kotlin": [
        "val m: MutableMap<String, Int> = mutableMapOf()",
        "fun <T : Comparable<T>> sort(xs: List<T>): List<T>",
        "class Box<out T>(val t: T)",
        "fun <P> wrap(p: P): List<P> = listOf(p)",
        "val xs = listOf<Int>()",
    ],
    "Go": [
        "func Map[K comparable, V any](m map[K]V) []V",
        "v := <-ch",
        "func Sum[T int | float64](xs []T) T",
    ],
    "prose": [
        "a<b>c",
        "x < y > z",
        "if a<b and c>d then swap them",
        "if x <b and c> d then stop",
        "i<j>k and p<q>r",
        "0 <i> n",
        "a < b && c > d",
        "x<a>y",
        "Write to Ada <ada.lovelace@example.org> or see <https://example.org/docs>.",
        "The default is <stdin>, or '<lambda>' for anonymous functions.",
        "Run the debugger on <a statement> and read <body> after <setup>.",
        "usage: convert <input> <output> [--force]",
        "Use `<br>` for a line break and ``<p>`` for a paragraph.",
        "The `<b>` element makes text bold.",
        "A generic <T> and a <P> parameter.",
        "Naïve résumé: a<b>c — Map<String, List<Integer>>",  # not ASCII: through ftfy, the same
    ],
    "shell": [
        "cmd <in >out",
        "sort <data >sorted.txt",
        "wc -l <input >count",
        "diff <(ls a) <(ls b)",
        "cat <<EOF > notes.txt",
        "make 2>&1 | tee build.log",
        "grep -c x </dev/null",
    ],
    "doctest": [
        ">>> ET.fromstring('<a><b>1</b></a>')",
    ],
}

# Real HTML/XML markup: removed, entities decoded, the text between tags kept.
MARKUP = [
    ("<b>bold</b> text", "bold text"),
    ("<b>café</b> crème", "café crème"),
    ('Read <a href="https://example.org">the docs</a> first.', "Read the docs first."),
    ("one<br>two", "onetwo"),
    ("one<br/>two", "onetwo"),
    ("one <br /> two", "one two"),
    ("<!-- a comment --> kept", "kept"),
    ("<!--\nmulti-line\ncomment\n-->after", "after"),
    ("Tom &amp; Jerry &lt;3 &#39;quoted&#39; &#x41;", "Tom & Jerry <3 'quoted' A"),
    ('<div class="note"><span style="color: red">red</span> text</div>', "red text"),
    ("<B>Bold</B> and <I>italic</I>", "Bold and italic"),
    ("<P>Legacy paragraph</P>", "Legacy paragraph"),
    ("<p>First paragraph<p>Second one", "First paragraphSecond one"),
    ("<ul><li>one<li>two</ul>", "onetwo"),
    ("<ol>\n  <li>first</li>\n  <li>second</li>\n</ol>", "first\n  second"),  # indentation is structure
    ('<img src="cat.png" alt="A cat"> A cat.', "A cat."),
    ("Hello<b>World</b>", "HelloWorld"),
    ("<!DOCTYPE html><html><head><title>T</title></head><body>x</body></html>", "Tx"),
    ("<table><tr><th>k</th><td>1</td></tr></table>", "k1"),
    ("Call <code>len(x)</code> to count.", "Call len(x) to count."),
    ("<h2 id=usage>Usage</h2>", "Usage"),
    ('<input type="checkbox" checked> Done', "Done"),
    ("<em>a</em> and <strong>b</strong>", "a and b"),
    ("a<hr>b", "ab"),
    ('<?xml version="1.0"?><svg width="10"><title>icon</title></svg>', "icon"),
    ("<li>an item", "an item"),
    ("<pre><kbd>Ctrl</kbd>+<kbd>C</kbd></pre>", "Ctrl+C"),
    ("<blockquote cite='x'>Said.</blockquote>", "Said."),
    ('<p class="lead">Return <var>x</var> squared.</p>', "Return x squared."),
    ('See <a href="https://example.org">the site (the page cut here)', "See the site (the page cut here)"),
    ('<div class="box">Boxed', "Boxed"),
]


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(s, id=f"{lang}-{i}")
        for lang, snippets in NOT_MARKUP.items()
        for i, s in enumerate(snippets)
    ],
)
def test_cleaning_never_rewrites_code_or_angle_brackets_in_prose(snippet):
    assert normalise(snippet) == snippet


@pytest.mark.parametrize(("text", "expected"), MARKUP, ids=[t[:30] for t, _ in MARKUP])
def test_real_html_markup_is_removed(text, expected):
    assert normalise(text) == expected


def test_a_code_record_is_kept_unchanged():
    code = "Use std::vector<int> or List<String>; a<b>c holds when b is between."
    result = clean_records([_record(code)], Rules())
    assert [r["messages"][-1]["content"] for r in result.kept] == [code]


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
