"""n-gram decontamination of train against every eval set (13 words by default, as GPT-3 did).

A train record that shares any word n-gram with an eval record is removed and counted: it would
let the model see the answer it is later scored on.
"""

import re
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stages.code_version import code_version
from stages.scan_cache import CleanSet, Texts, digest
from stages.workers import LOCAL, Engine, map_chunks

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def record_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def eval_ngrams(eval_records: Iterable[dict[str, Any]], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for record in eval_records:
        grams |= ngrams(record_text(record), n)
    return grams


def _word_ids(words: list[str]) -> list[int]:
    return [zlib.crc32(w.encode()) for w in words]


def _hashes(text: str, n: int, stable: bool = False) -> set[int]:
    """The hashes of a text's word n-grams. `hash` of words is salted per process: fine for forked
    workers, which share the salt; a Ray worker's hashes must meet the driver's, so `stable` hashes
    each word once (crc32) and each n-gram as the tuple of its words' ids (ints are not salted).
    That is as fast as `hash` (26 us a text here), where blake2b of each n-gram's text (54 us) made
    the decontamination scan on Ray 2.1 x the local one at 100k records (benchmarks/ray_profile.py).
    Collisions only make candidates: every hit is checked word for word."""
    if not stable:
        return {hash(g) for g in ngrams(text, n)}
    ids = _word_ids(_words(text))
    return {hash(tuple(ids[i : i + n])) for i in range(len(ids) - n + 1)}


def _stable_ngrams(text: str, n: int) -> Iterable[tuple[int, tuple[str, ...]]]:
    """(hash as `_hashes(stable=True)` gives it, n-gram) of each of a text's word n-grams."""
    words = _words(text)
    ids = _word_ids(words)
    for i in range(len(words) - n + 1):
        yield hash(tuple(ids[i : i + n])), tuple(words[i : i + n])


def contamination(
    texts: Texts,
    eval_records: list[dict[str, Any]],
    n: int,
    cache_file: Path | None = None,
    engine: Engine = LOCAL,
) -> dict[int, str]:
    """{index of a text sharing an n-gram with an eval record: the first shared n-gram}, in index order.

    With `cache_file`, each text's verdict against this very eval set is remembered (clean, or the
    n-gram it shares), so a rerun scans only the texts it has no verdict for, and builds the eval
    n-grams only if there are any.
    """
    eval_texts = [record_text(r) for r in eval_records]
    if cache_file is None:
        return _contamination(texts.take(list(range(len(texts)))), eval_texts, n, engine)
    # Keyed by this code's version too: a verdict found by other matching code is not reused.
    cache = CleanSet(cache_file, f"{code_version(__name__)}:{n}:{digest(chr(0).join(sorted(eval_texts)))}")
    found = {i: cache.found[key] for i, key in enumerate(texts.keys) if key in cache.found}
    if todo := cache.unknown(texts.keys):
        found |= {
            todo[j]: gram for j, gram in _contamination(texts.take(todo), eval_texts, n, engine).items()
        }
    cache.remember(texts.keys, found)
    return dict(sorted(found.items()))


FEW = 0.01  # texts per eval text below which the texts' own n-grams are the side held in memory


def _contamination(texts: list[str], eval_texts: list[str], n: int, engine: Engine = LOCAL) -> dict[int, str]:
    """The scan itself, from whichever side is smaller."""
    if len(texts) <= FEW * len(eval_texts):
        return _few_scanned(texts, eval_texts, n)
    return _all_scanned(texts, eval_texts, n, engine)


def _few_scanned(texts: list[str], eval_texts: list[str], n: int) -> dict[int, str]:
    """A rerun's few edited texts: their n-grams are held, and each eval text's words are read once,
    with an n-gram built only where a word starts one of theirs. Every eval n-gram, hashed, took
    2.9 s for one edited text against 46k eval records (benchmarks/scale.py's 1M fix)."""
    grams = [ngrams(text, n) for text in texts]
    wanted: set[tuple[str, ...]] = set().union(*grams)
    first_words = {gram[0] for gram in wanted}
    in_eval: set[tuple[str, ...]] = set()
    for text in eval_texts if wanted else ():
        words = _words(text)
        in_eval |= {
            gram
            for i in range(len(words) - n + 1)
            if words[i] in first_words and (gram := tuple(words[i : i + n])) in wanted
        }
    return {
        i: " ".join(min(shared)) for i, text_grams in enumerate(grams) if (shared := text_grams & in_eval)
    }


def _all_scanned(texts: list[str], eval_texts: list[str], n: int, engine: Engine = LOCAL) -> dict[int, str]:
    """Every text against the eval n-grams. The eval n-grams are held as hashes (an int each, where tuples of words
    took ~200 bytes: ~1 GB for 50k eval records), and the texts are scanned on every core; texts
    whose hashes meet the eval set's are then checked word for word, so a hash collision never
    counts."""
    stable = engine.kind != "local"  # forked workers share this process's `hash`
    grams: set[int] = set()
    for text in eval_texts:
        grams |= _hashes(text, n, stable)

    def shared_hashes(chunk: list[tuple[int, str]]) -> list[tuple[int, set[int]]]:
        return [
            (i, hit) for i, text in chunk if (hit := _hashes(text, n, stable) & grams)
        ]  # only hits travel back

    parts = map_chunks(shared_hashes, list(enumerate(texts)), engine=engine)
    candidates = dict(pair for part in parts for pair in part)
    if not candidates:
        return {}
    wanted = set().union(*candidates.values())
    if stable:
        exact = {g for text in eval_texts for h, g in _stable_ngrams(text, n) if h in wanted}
    else:
        exact = {g for text in eval_texts for g in ngrams(text, n) if hash(g) in wanted}
    found = {}
    for i in candidates:
        if shared := ngrams(texts[i], n) & exact:
            found[i] = " ".join(min(shared))
    return found


def decontaminate(
    train: list[dict[str, Any]],
    eval_records: list[dict[str, Any]],
    n: int,
    cache_file: Path | None = None,
    text: Callable[[dict[str, Any]], str] = record_text,
    engine: Engine = LOCAL,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean train, contaminated train records, each with the first shared n-gram).

    `text` is what is scanned of each train record (all its messages by default). With
    `cache_file`, train texts already found clean against this very eval set are not scanned
    again, and the ones found clean now are remembered for the next run.
    """
    found = contamination(Texts.of([text(r) for r in train]), eval_records, n, cache_file, engine)
    clean = [r for i, r in enumerate(train) if i not in found]
    contaminated = [{**train[i], "shared_ngram": shared} for i, shared in sorted(found.items())]
    return clean, contaminated
