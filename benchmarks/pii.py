"""PII rules, measured: every match per rule with its context, precision on a hand-labelled sample,
recall on a planted set, and the PII counts the demo's cleaning reports.

    python benchmarks/pii.py [--json] [--list [CORPUS]] [--sample-labels N]

Corpora, all offline and written by nobody here (the texts are normalised as clean_corpus does
before it redacts):
- example: the example corpus (stages/example_corpus.py), the standard library's docstrings;
- stdlib-source: docstrings and comments of the standard library's own .py files, tests included
  (mail headers, netstat output, calendars, floats: what real text holds besides prose);
- package-docs: the long descriptions (READMEs) of the installed packages (tunegraph's own left out).

Precision: tests/data/pii_labels.jsonl holds a sample of matches, each labelled by a person who read
it in its context: `true` when the matched text is what the rule is for (an email address, a phone
number, a globally routable IP address, a card number, a credential), whether a real person's or
an example's (a rule cannot tell, and a model learns either), `false` when it is something else
that looks like one (a float, a date, a version, code). Each label keeps its context window; the
rules are re-run on the windows, so a rule change that finds other matches shows as unlabelled.
`--sample-labels N` adds every match of the rarer rules and N sampled emails, unlabelled (null),
to the file for someone to label.

Recall: tests/data/pii_planted.jsonl plants each format once per line; a planted item is found when
a match of its rule covers it.
"""

import sys
from pathlib import Path

# The repository root instead of this folder, whose tokenize.py would shadow the standard library's.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sysconfig  # noqa: E402
import tokenize  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from stages import pii  # noqa: E402
from stages.cleaning import Rules, clean_records, normalise  # noqa: E402
from stages.example_corpus import stdlib_records  # noqa: E402
from stages.readers import to_record  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
LABELS = DATA / "pii_labels.jsonl"
PLANTED = DATA / "pii_planted.jsonl"
GOAL = 0.95
CONTEXT_LINES = 3  # lines kept on each side of a match in a label's window


def example_texts() -> Iterator[tuple[str, str]]:
    records, _ = stdlib_records()
    for r in records:
        yield f"{r['id']}:instruction", normalise(r["instruction"])
        yield f"{r['id']}:output", normalise(r["output"])


def stdlib_source_texts() -> Iterator[tuple[str, str]]:
    """Each docstring of the standard library's modules, and each module's comments as one text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
        except (UnicodeDecodeError, SyntaxError, tokenize.TokenError):
            continue  # a few test files are deliberately broken
        name = path.relative_to(root).as_posix()
        comments = []
        for tok in tokens:
            if tok.type == tokenize.COMMENT:
                comments.append(tok.string.lstrip("#").strip())
            elif tok.type == tokenize.STRING and tok.string.lstrip("rRbBuU").startswith(('"""', "'''")):
                yield f"{name}:{tok.start[0]}", normalise(tok.string)
        if comments:
            yield f"{name}#comments", normalise("\n".join(comments))


def package_doc_texts() -> Iterator[tuple[str, str]]:
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        if dist.metadata["Name"] == "tunegraph":
            continue  # our own README, PII examples included, is nobody else's text
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if text.strip():
            yield dist.metadata["Name"], normalise(text)


CORPORA = {"example": example_texts, "stdlib-source": stdlib_source_texts, "package-docs": package_doc_texts}


def all_matches(corpus: str) -> list[dict[str, Any]]:
    """Every match in a corpus: its source, rule, text, context, and the source text itself."""
    out = []
    for source, text in CORPORA[corpus]():
        for m in pii.find_matches(text):
            out.append({
                "corpus": corpus, "source": source, "rule": m.rule, "match": m.text,
                "context": text[max(0, m.start - 60) : m.end + 60],
                "line": text.count("\n", 0, m.start), "text": text,
            })  # fmt: skip
    return out


def label_windows(text: str, lines_with_matches: list[int]) -> list[str]:
    """Disjoint windows of a text around the given lines (a few lines each side, overlaps merged);
    the whole text instead when the rules read a window differently (a code block cut in half)."""
    lines = text.split("\n")
    ranges: list[list[int]] = []
    for line in sorted(set(lines_with_matches)):
        first, last = max(0, line - CONTEXT_LINES), min(len(lines), line + CONTEXT_LINES + 1)
        if ranges and first <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], last)
        else:
            ranges.append([first, last])
    matches = pii.find_matches(text)
    windows = []
    for first, last in ranges:
        offset = sum(len(s) + 1 for s in lines[:first])
        window = "\n".join(lines[first:last])
        inside = [(m.rule, m.start - offset, m.end - offset) for m in matches
                  if m.start >= offset and m.end <= offset + len(window)]  # fmt: skip
        if [(m.rule, m.start, m.end) for m in pii.find_matches(window)] != inside:
            return [text]
        windows.append(window)
    return windows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def precision(labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rule: the rules re-run on every labelled window; each match must carry a label."""
    by_key = {(lab["window"], lab["rule"], lab["start"], lab["end"]): lab["label"] for lab in labels}
    per_rule: dict[str, Counter] = {rule: Counter() for rule in pii.RULES}
    for window in dict.fromkeys(lab["window"] for lab in labels):
        for m in pii.find_matches(window):
            label = by_key.get((window, m.rule, m.start, m.end))
            per_rule[m.rule]["unlabelled" if label is None else "true" if label else "false"] += 1
    # Labels whose match the rules no longer find: a false one is a mistake fixed, a true one lost.
    gone = [
        lab for lab in labels
        if not any((m.rule, m.start, m.end) == (lab["rule"], lab["start"], lab["end"])
                   for m in pii.find_matches(lab["window"]))
    ]  # fmt: skip
    out = {}
    for rule, c in per_rule.items():
        labelled = c["true"] + c["false"]
        out[rule] = {"labelled": labelled, "true": c["true"], "false": c["false"],
                     "unlabelled": c["unlabelled"], "precision": c["true"] / labelled if labelled else None}  # fmt: skip
    out["_no_longer_found"] = {
        "false": sum(not g["label"] for g in gone),
        "true": sum(bool(g["label"]) for g in gone),
    }
    return out


def recall(planted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, Counter] = {rule: Counter() for rule in pii.RULES}
    missed = []
    for item in planted:
        start = item["text"].index(item["pii"])
        end = start + len(item["pii"])
        hit = any(m.rule == item["rule"] and m.start <= start and m.end >= end
                  for m in pii.find_matches(item["text"]))  # fmt: skip
        found[item["rule"]]["planted"] += 1
        found[item["rule"]]["found"] += hit
        if not hit:
            missed.append(item)
    return {
        rule: {
            "planted": c["planted"],
            "found": c["found"],
            "recall": c["found"] / c["planted"] if c["planted"] else None,
            "missed": [m["pii"] for m in missed if m["rule"] == rule],
        }  # fmt: skip
        for rule, c in found.items()
    }


def demo_pii_counts() -> dict[str, int]:
    """PII per type as the demo reports it: the cleaning stage over the example corpus."""
    raw, _ = stdlib_records()
    records = [to_record(r, "stdlib.jsonl", i, {}) for i, r in enumerate(raw, start=1)]
    return dict(sorted(clean_records(records, Rules()).pii.items()))


def sample_labels(n_emails: int, seed: int = 0, name: str = "new") -> int:
    """Add unlabelled matches to the labels file: every match of the rarer rules and of the example
    corpus, and `n_emails` sampled emails from the other corpora. Every match in the windows around
    them is added, so that a window's matches are all judged. Existing labels are kept."""
    labels = read_jsonl(LABELS)
    have = {(lab["window"], lab["rule"], lab["start"], lab["end"]) for lab in labels}
    matches = [m for corpus in CORPORA for m in all_matches(corpus)]
    chosen = [m for m in matches if m["rule"] != "email" or m["corpus"] == "example"]
    emails = [m for m in matches if m["rule"] == "email" and m["corpus"] != "example"]
    chosen += random.Random(seed).sample(emails, min(n_emails, len(emails)))
    by_text: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in chosen:
        by_text.setdefault((m["corpus"], m["source"]), []).append(m)
    new = []
    for (corpus, source), ms in by_text.items():
        for window in label_windows(ms[0]["text"], [m["line"] for m in ms]):
            for w in pii.find_matches(window):
                if (window, w.rule, w.start, w.end) not in have:
                    have.add((window, w.rule, w.start, w.end))
                    new.append({"corpus": corpus, "source": source, "rule": w.rule, "match": w.text,
                                "label": None, "note": "", "sample": name,
                                "window": window, "start": w.start, "end": w.end})  # fmt: skip
    with LABELS.open("a") as f:
        f.writelines(json.dumps(lab, ensure_ascii=False) + "\n" for lab in new)
    return len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--list", nargs="?", const="example", choices=sorted(CORPORA),
                        help="print every match of a corpus with its context (default: example)")  # fmt: skip
    parser.add_argument(
        "--sample-labels",
        type=int,
        metavar="N",
        help="append unlabelled matches (N sampled emails) to the labels file",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the email sample")
    parser.add_argument("--sample-name", default="new", help="recorded with each new label")  # fmt: skip
    args = parser.parse_args()
    if args.sample_labels is not None:
        print(
            f"added {sample_labels(args.sample_labels, args.seed, args.sample_name)} unlabelled matches to {LABELS}"
        )
        return

    matches = {corpus: all_matches(corpus) for corpus in CORPORA}
    labels = read_jsonl(LABELS)
    prec, rec = precision(labels), recall(read_jsonl(PLANTED))
    gone = prec.pop("_no_longer_found")
    rules = {
        rule: {
            "matches": {corpus: sum(m["rule"] == rule for m in ms) for corpus, ms in matches.items()},
            **prec[rule],  # labelled, true, false, unlabelled, precision
            **rec[rule],  # planted, found, recall, missed
        }
        for rule in pii.RULES
    }
    listed = matches[args.list or "example"]
    result = {
        "goal": GOAL,
        "rules": rules,
        "labelled_matches": sum(r["labelled"] for r in rules.values()),
        # The rules were fixed looking at the "tuning" and then the "held-out" sample's mistakes;
        # "held-out-2" was drawn and labelled after the last fix.
        "precision_by_sample": {
            sample: {
                rule: r["precision"]
                for rule, r in precision([lab for lab in labels if lab["sample"] == sample]).items()
                if rule != "_no_longer_found" and r["labelled"]
            }
            for sample in sorted({lab["sample"] for lab in labels})
        },  # fmt: skip
        "labels_no_longer_found": gone,  # false: mistakes fixed; true: addresses lost
        "demo_pii_counts": demo_pii_counts(),
        "matches": [{k: m[k] for k in ("corpus", "source", "rule", "match", "context")} for m in listed],
    }
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    if args.list:
        for m in listed:
            print(f"{m['rule']:<15} {m['source']:<40} {m['context']!r}")
        print()
    corpora = list(CORPORA)
    print(f"{'rule':<15}" + "".join(f"{c:>15}" for c in corpora) + f"{'labelled':>10}{'precision':>11}"
          f"{'planted':>9}{'recall':>8}")  # fmt: skip
    for rule, r in rules.items():
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{rule:<15}" + "".join(f"{r['matches'][c]:>15}" for c in corpora)
              + f"{r['labelled']:>10}{p:>11}{r['found']:>5}/{r['planted']:<3}{rc:>8}")  # fmt: skip
    unlabelled = sum(r["unlabelled"] for r in rules.values())
    print(f"\nlabelled matches: {result['labelled_matches']} (unlabelled in the windows: {unlabelled}, "
          f"no longer found: {gone['false']} false, {gone['true']} true); goal: precision and recall >= {GOAL} per rule")  # fmt: skip
    for sample, by_rule in result["precision_by_sample"].items():
        print(f"precision on the {sample} sample: " + ", ".join(f"{k} {v:.3f}" for k, v in by_rule.items()))
    print(f"demo PII counts (cleaning stage over the example corpus): {result['demo_pii_counts']}")
    for rule, r in rules.items():
        if r["missed"]:
            print(f"missed ({rule}): {r['missed']}")


if __name__ == "__main__":
    main()
