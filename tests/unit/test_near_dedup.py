"""Near-dedup on planted copies: distinct random documents, and copies with up to 10% of words edited."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from stages.near_dedup import clusters, lsh_join, minhash_signatures, near_duplicates, words

# A Zipf-like vocabulary, so common words recur across documents as they do in real text.
VOCAB = [f"w{i}" for i in range(3000)]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCAB))]


def document(rng: random.Random) -> str:
    return " ".join(rng.choices(VOCAB, WEIGHTS, k=rng.randint(30, 120)))


def edited(text: str, share: float, rng: random.Random) -> str:
    """`text` with int(share * words) of its words substituted, deleted or followed by an insertion."""
    tokens = text.split()
    for i in sorted(rng.sample(range(len(tokens)), int(share * len(tokens))), reverse=True):
        match rng.choice(["substitute", "delete", "insert"]):
            case "substitute":
                tokens[i] = rng.choice(VOCAB)
            case "delete":
                del tokens[i]
            case "insert":
                tokens.insert(i + 1, rng.choice(VOCAB))
    return " ".join(tokens)


def planted_corpus(seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """(300 distinct documents then 100 edited copies of some of them, copy index -> source index)."""
    rng = random.Random(seed)
    texts = [document(rng) for _ in range(300)]
    sources = rng.sample(range(300), 100)
    copies = [edited(texts[s], rng.uniform(0.0, 0.10), rng) for s in sources]
    return texts + copies, {300 + k: s for k, s in enumerate(sources)}


def exact_jaccard(a: str, b: str, ngram: int = 3) -> float:
    grams_a, grams_b = (
        {tuple(w[i : i + ngram]) for i in range(len(w) - ngram + 1)} for w in (words(a), words(b))
    )
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def test_planted_near_duplicates_are_found_with_high_recall_and_precision():
    texts, source_of = planted_corpus()
    duplicate_of = near_duplicates(texts)
    flagged = {i: kept for i, kept in enumerate(duplicate_of) if kept is not None}
    found = [copy for copy, source in source_of.items() if flagged.get(copy) == source]
    recall = len(found) / len(source_of)
    precision = len(found) / len(flagged)
    assert recall >= 0.9, f"recall {recall:.3f}"
    assert precision >= 0.95, (
        f"precision {precision:.3f}: {sorted(set(flagged) - set(found))} are not planted"
    )


def test_every_copy_at_exactly_ten_percent_edited_is_still_mostly_found():
    rng = random.Random(1)
    originals = [document(rng) for _ in range(200)]
    copies = [edited(text, 0.10, rng) for text in originals]
    duplicate_of = near_duplicates(originals + copies)
    assert duplicate_of[:200] == [None] * 200
    assert sum(duplicate_of[200 + k] == k for k in range(200)) / 200 >= 0.9


def test_exact_copies_are_found_whatever_their_case_and_punctuation():
    rng = random.Random(2)
    texts = [document(rng) for _ in range(50)]
    texts += [texts[3], texts[7].upper(), texts[11].replace(" ", ", ") + "!"]
    assert near_duplicates(texts) == [None] * 50 + [3, 7, 11]


def test_duplicates_point_at_an_earlier_kept_text_even_through_a_chain():
    rng = random.Random(3)
    texts, _ = planted_corpus(seed=3)
    rng.shuffle(texts)
    # Each link is a light edit of the one before; the last ones are too far from the first to match
    # it directly, but join its cluster through the links in between.
    chain = [document(rng)]
    for _ in range(5):
        chain.append(edited(chain[-1], 0.08, rng))
    assert exact_jaccard(chain[0], chain[-1]) < 0.5
    positions = sorted(rng.sample(range(len(texts) + len(chain)), len(chain)))
    for position, link in zip(positions, chain, strict=True):
        texts.insert(position, link)
    duplicate_of = near_duplicates(texts)
    for i, kept in enumerate(duplicate_of):
        if kept is not None:
            assert kept < i and duplicate_of[kept] is None, (i, kept)
    assert [duplicate_of[p] for p in positions] == [None] + [positions[0]] * 5
    assert clusters(duplicate_of)[positions[0]] == positions[1:]


def test_estimated_jaccard_tracks_the_exact_one():
    texts, source_of = planted_corpus(seed=4)
    signatures = minhash_signatures(texts)
    errors = [
        abs((signatures[copy] == signatures[source]).mean() - exact_jaccard(texts[copy], texts[source]))
        for copy, source in source_of.items()
    ]
    assert np.mean(errors) < 0.05 and max(errors) < 0.15


def test_signatures_are_deterministic_per_text_and_across_processes():
    texts, _ = planted_corpus(seed=5)
    signatures = minhash_signatures(texts)
    assert signatures.shape == (len(texts), 128) and signatures.dtype == np.uint32
    np.testing.assert_array_equal(signatures, minhash_signatures(texts))
    # A text's row does not depend on its batch, so rows can be cached by content hash.
    np.testing.assert_array_equal(signatures[[5, 42]], minhash_signatures([texts[5], texts[42]]))
    # Another process with another string-hash salt computes the same row.
    code = f"from stages.near_dedup import minhash_signatures; print(minhash_signatures([{texts[7]!r}])[0].tolist())"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert json.loads(other.stdout) == signatures[7].tolist()


def test_texts_sharing_no_band_have_no_duplicates():
    assert near_duplicates(["alpha beta gamma delta epsilon", "one two three four five"]) == [None, None]
    assert near_duplicates(["a single text"]) == [None] and near_duplicates([]) == []


def test_texts_without_words_are_duplicates_of_each_other_only():
    assert near_duplicates(["", "...", "some words here", "---"]) == [None, 0, None, 0]


def test_an_impossible_threshold_fails_loudly():
    with pytest.raises(ValueError, match="threshold"):
        lsh_join(minhash_signatures(["a text"]), threshold=1.5)
