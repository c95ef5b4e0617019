"""Near-dedup speed and quality: stages.near_dedup against a plain per-document datasketch loop.

    python benchmarks/dedup.py [--docs N] [--json] [--threshold T] [--ngram N]

The baseline needs datasketch (`pip install datasketch`); the stage itself needs only numpy.

Builds N documents (default 20,000): the standard library's docstrings, synthetic documents made
of random docstring lines, and planted copies of some of them with up to 10% of their words
substituted, deleted or inserted. Both methods run on the same texts in this process, with the
same shingles, threshold and num_perm, and are timed from raw text to duplicate_of. A planted copy
is found when it lands in its source's cluster; a flagged document is correct when its cluster
holds a planted partner of it or a document whose exact shingle Jaccard with it reaches the
threshold (the docstrings have real near-duplicates of their own, e.g. os.stat and posix.stat).
"""

import sys
from pathlib import Path

# The repository root instead of this folder, whose tokenize.py would shadow the standard library's.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from datasketch import MinHash, MinHashLSH  # noqa: E402

from stages.example_corpus import stdlib_records  # noqa: E402
from stages.near_dedup import near_duplicates, words  # noqa: E402

NUM_PERM = 128
PLANTED_SHARE = 0.15  # of all documents; sources are drawn with replacement, so some get 2-3 copies
MAX_EDIT_SHARE = 0.10  # "near-duplicate" here means at most 10% of the words edited
MIN_SOURCE_WORDS = 20  # below this, one edited word is already more than 10%
_WORD_SPLIT = re.compile(r"(\w+)")


def build_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """(texts in a shuffled order, planted (source index, copy index) pairs)."""
    rng = random.Random(seed)
    records, _ = stdlib_records()
    base = [r["output"] for r in records if r["output"].strip()]
    lines = sorted({line.strip() for doc in base for line in doc.splitlines() if len(words(line)) >= 4})
    vocab = sorted({w for doc in base for w in words(doc)})
    n_planted = int(n_docs * PLANTED_SHARE)
    distinct = base[: n_docs - n_planted]
    while len(distinct) < n_docs - n_planted:
        distinct.append("\n".join(rng.sample(lines, rng.randint(3, 10))))
    sources = [i for i, doc in enumerate(distinct) if len(words(doc)) >= MIN_SOURCE_WORDS]
    planted = []
    for source in rng.choices(sources, k=n_planted):
        planted.append((source, edit_words(distinct[source], rng.uniform(0.0, MAX_EDIT_SHARE), vocab, rng)))
    texts = distinct + [copy for _, copy in planted]
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    pairs = [(position[s], position[len(distinct) + k]) for k, (s, _) in enumerate(planted)]
    return [texts[i] for i in order], pairs


def edit_words(text: str, share: float, vocab: list[str], rng: random.Random) -> str:
    """`text` with int(share * words) words substituted, deleted or given a word inserted after them."""
    parts = _WORD_SPLIT.split(text)  # words at odd positions, the text between them at even ones
    word_positions = range(1, len(parts), 2)
    for i in rng.sample(word_positions, int(share * len(word_positions))):
        match rng.choice(["substitute", "delete", "insert"]):
            case "substitute":
                parts[i] = rng.choice(vocab)
            case "delete":
                parts[i] = ""
            case "insert":
                parts[i] = f"{parts[i]} {rng.choice(vocab)}"
    return "".join(parts)


def shingles(text: str, ngram: int) -> set[str]:
    """The same word n-grams near_dedup hashes, as strings (the way a new user writes it)."""
    w = words(text)
    if len(w) < ngram:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + ngram]) for i in range(len(w) - ngram + 1)}


def jaccard(a: str, b: str, ngram: int) -> float:
    grams_a, grams_b = shingles(a, ngram), shingles(b, ngram)
    return len(grams_a & grams_b) / len(grams_a | grams_b) if grams_a | grams_b else 1.0


def datasketch_loop(texts: list[str], threshold: float, ngram: int) -> list[int | None]:
    """The baseline: one MinHash per document, query the LSH index for an earlier match, then insert."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    duplicate_of: list[int | None] = []
    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=NUM_PERM)
        for shingle in shingles(text, ngram):
            minhash.update(shingle.encode())
        found = lsh.query(minhash)
        duplicate_of.append(min(found) if found else None)
        lsh.insert(i, minhash)
    return duplicate_of


def score(
    texts: list[str],
    pairs: list[tuple[int, int]],
    duplicate_of: list[int | None],
    threshold: float,
    ngram: int,
) -> tuple[float, float]:
    """(recall over planted pairs, precision over flagged documents).

    A flagged document is correct when its cluster holds a planted partner of it, or a document
    whose exact shingle Jaccard with it reaches the threshold: chains (A' ~ A ~ B) merge clusters.
    """

    def cluster(i: int) -> int:  # the kept document at the end of i's duplicate_of chain
        while duplicate_of[i] is not None:
            i = duplicate_of[i]
        return i

    recall = sum(cluster(s) == cluster(c) for s, c in pairs) / len(pairs)
    members: dict[int, list[int]] = {}
    for i in range(len(texts)):
        members.setdefault(cluster(i), []).append(i)
    planted_group = {c: s for s, c in pairs} | {s: s for s, _ in pairs}
    flagged = [i for i, kept in enumerate(duplicate_of) if kept is not None]
    correct = 0
    for i in flagged:
        others = [j for j in members[cluster(i)] if j != i]
        if i in planted_group and any(planted_group.get(j) == planted_group[i] for j in others):
            correct += 1
            continue
        correct += any(jaccard(texts[i], texts[j], ngram) >= threshold for j in others)
    return recall, correct / len(flagged) if flagged else 1.0


def timed(fn, *args) -> tuple[list[int | None], float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents to build")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="Jaccard threshold for both (stage default)"
    )
    parser.add_argument("--ngram", type=int, default=3, help="words per shingle for both (stage default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    texts, pairs = build_corpus(args.docs)
    project, project_s = timed(near_duplicates, texts, args.threshold, NUM_PERM, args.ngram)
    baseline, baseline_s = timed(datasketch_loop, texts, args.threshold, args.ngram)
    recall, precision = score(texts, pairs, project, args.threshold, args.ngram)
    baseline_recall, baseline_precision = score(texts, pairs, baseline, args.threshold, args.ngram)
    result = {
        "docs": len(texts),
        "planted": len(pairs),
        "threshold": args.threshold,
        "ngram": args.ngram,
        "project_docs_per_s": round(len(texts) / project_s),
        "baseline_docs_per_s": round(len(texts) / baseline_s),
        "speedup": round(baseline_s / project_s, 2),
        "recall": round(recall, 4),
        "precision": round(precision, 4),
        "baseline_recall": round(baseline_recall, 4),
        "baseline_precision": round(baseline_precision, 4),
    }
    if args.json:
        print(json.dumps(result))
        return
    setup = f"threshold {args.threshold}, {args.ngram}-word shingles, {NUM_PERM} permutations"
    print(f"{len(texts)} documents, {len(pairs)} planted near-duplicates, {setup}")
    print(f"{'method':<22}{'seconds':>9}{'docs/s':>10}{'recall':>9}{'precision':>11}")
    for name, seconds, rec, prec in [
        ("stages.near_dedup", project_s, recall, precision),
        ("datasketch loop", baseline_s, baseline_recall, baseline_precision),
    ]:
        print(f"{name:<22}{seconds:>9.2f}{len(texts) / seconds:>10.0f}{rec:>9.3f}{prec:>11.3f}")
    print(f"speedup: {result['speedup']}x")


if __name__ == "__main__":
    main()
