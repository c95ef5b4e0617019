"""HTML markup removal that never rewrites code: only real HTML elements are markup.

`<b>bold</b>`, `<a href="x">`, `<br/>`, `<!-- -->` and `&amp;` are markup; `std::vector<int>`,
`List<Object>`, `a<b>c`, `x < y > z`, `#include <map>`, `cmd <data >out`, `"<b>"` in a string
literal, `<user@example.com>` and `&params` are text. A tag is markup only when its name is an
HTML element written as HTML writes it (all lower or all upper case: `<Object>` is a type, `<P>`
alone a type parameter) and its context says so: a closing tag follows it, it has `name=value`
attributes, or it is an element that stands alone (`<br>`, `<img src=...>`, an unclosed `<p>` or
`<li>`) not glued to a word.
Code spans, code fences, doctest lines, `//` comments and `#include` lines are never touched.
"""

import html
import re

# The WHATWG HTML element names, with the obsolete ones still common in scraped pages.
# fmt: off
HTML_ELEMENTS = frozenset({
    "a", "abbr", "address", "area", "article", "aside", "audio", "b", "base", "bdi", "bdo",
    "blockquote", "body", "br", "button", "canvas", "caption", "cite", "code", "col", "colgroup",
    "data", "datalist", "dd", "del", "details", "dfn", "dialog", "div", "dl", "dt", "em", "embed",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "head",
    "header", "hgroup", "hr", "html", "i", "iframe", "img", "input", "ins", "kbd", "label", "legend",
    "li", "link", "main", "map", "mark", "math", "menu", "meta", "meter", "nav", "noscript", "object",
    "ol", "optgroup", "option", "output", "p", "picture", "pre", "progress", "q", "rp", "rt", "ruby",
    "s", "samp", "script", "search", "section", "select", "slot", "small", "source", "span", "strong",
    "style", "sub", "summary", "sup", "svg", "table", "tbody", "td", "template", "textarea", "tfoot",
    "th", "thead", "time", "title", "tr", "track", "u", "ul", "var", "video", "wbr", "acronym", "big",
    "center", "font", "strike", "tt"
})
VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"
})
# fmt: on
# Void elements that mean something without attributes: `<input>` alone is a placeholder.
BARE_VOID = frozenset({"br", "hr", "wbr"})
UNCLOSED = frozenset({"p", "li", "dt", "dd", "tr", "td", "th"})  # often left open in real pages

_ATTRIBUTES = r"""(?:\s+[A-Za-z_:@][-\w:.@]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*"""
# Comments are found apart (`_without_comments`): a regex would rescan the text from every unclosed `<!--`.
_TAGS = re.compile(  # one literal "<" first: re then skips to each "<" instead of trying every position
    r"<(?:(?P<declaration>![Dd][Oo][Cc][Tt][Yy][Pp][Ee]\s[^<>]*|\?xml\s[^<>]*\?)>"
    r"|/(?P<close>[A-Za-z][A-Za-z0-9]*)\s*>"
    rf"|(?P<open>[A-Za-z][A-Za-z0-9]*)(?P<attributes>{_ATTRIBUTES})\s*(?P<slash>/?)>)"
)
_CLOSING = re.compile(r"</([A-Za-z][A-Za-z0-9]*)\s*>")
# Only entities with their semicolon: html.unescape also decodes legacy prefixes (`&params` -> `¶ms`).
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_CODE = re.compile(r"```.*?```|`[^`\n]+`|^[ \t]*(?:>>>|//|#[ \t]*(?:include|import)\b)[^\n]*", re.S | re.M)


def strip_markup(text: str) -> str:
    """`text` without its HTML tags and comments, entities decoded; code and code-like text kept."""
    if "<" not in text and "&" not in text:  # most records (98 % of the example corpus)
        return text
    out, done = [], 0
    for code in _CODE.finditer(text):
        out += [_strip(text[done : code.start()]), code.group()]
        done = code.end()
    out.append(_strip(text[done:]))
    return "".join(out)


def _strip(text: str) -> str:
    text = _without_comments(text)
    last_close = {m.group(1).lower(): m.start() for m in _CLOSING.finditer(text)}
    opened: dict[str, list[bool]] = {}  # per element, whether each still-open opening was markup
    out, done, in_html = [], 0, False
    for tag in _TAGS.finditer(text):
        name = (tag["close"] or tag["open"] or "").lower()
        if tag["close"]:  # as its opening was judged (`"<b>x</b>"` stays whole); a stray one is markup
            markup = _html_name(tag["close"]) and (opened[name].pop() if opened.get(name) else True)
        elif tag["open"]:
            markup = _html_name(tag["open"]) and _opening_is_markup(
                tag, text, last_close.get(name, -1), in_html
            )
            opened.setdefault(name, []).append(markup)
        else:
            markup = True  # a doctype or an XML declaration
        if markup:
            in_html = True
            out.append(text[done : tag.start()])
            done = tag.end()
    out.append(text[done:])
    return _ENTITY.sub(lambda m: html.unescape(m.group()), "".join(out))


def _without_comments(text: str) -> str:
    out, done = [], 0
    while (start := text.find("<!--", done)) != -1 and (end := text.find("-->", start + 4)) != -1:
        out.append(text[done:start])
        done = end + 3
    out.append(text[done:])
    return "".join(out)


def _html_name(name: str) -> bool:
    return name.lower() in HTML_ELEMENTS and name in (name.lower(), name.upper())


def _opening_is_markup(tag: re.Match, text: str, last_close: int, in_html: bool) -> bool:
    """`in_html`: markup was found before it, so an unclosed `<p>` glued to a word is a paragraph too."""
    name, before = tag["open"], text[tag.start() - 1] if tag.start() else " "
    if before in "\"'":  # `"<b>"`: inside a string literal, code
        return False
    if tag["slash"]:
        return True
    if name.lower() in VOID:
        return bool(tag["attributes"].strip()) or name.lower() in BARE_VOID
    if (
        last_close > tag.start() or "=" in tag["attributes"]
    ):  # closed, or `<a href="x">`: no generic has these
        return True
    glued = before.isalnum() or before == "_"  # `vector<data>`, `a<p>b`: a generic or a comparison
    type_parameter = len(name) == 1 and name.isupper()  # `fun <P> f()`
    return name.lower() in UNCLOSED and (in_html or not glued) and not type_parameter
