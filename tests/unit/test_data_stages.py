"""Dedup, split, decontamination and augmentation on small hand-built inputs."""

import json
import os
from pathlib import Path

import pytest

from stages import decontamination
from stages.augmentation import augment
from stages.decontamination import decontaminate, record_text
from stages.dedup import exact_dedup, with_keys
from stages.scan_cache import digest
from stages.split import split_records


def _rec(rid: str, response: str, prompt: str = "Explain.") -> dict:
    return {
        "id": rid,
        "source_file": "f",
        "source_line": 1,
        "schema": "instruction",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    }


def test_exact_dedup_keeps_first_and_folds_case_and_punctuation():
    kept, dups = exact_dedup(
        with_keys(
            [_rec("os.stat", "Perform a stat system call."), _rec("posix.stat", "perform a STAT system call")]
        )
    )
    assert [r["id"] for r in kept] == ["os.stat"]
    assert dups[0]["duplicate_of"] == "os.stat"


def test_split_is_stable_when_other_records_change():
    records = [_rec(f"id{i}", "x") for i in range(1000)]
    train, held = split_records(records, 0.1, seed=0)
    assert 60 < len(held) < 140
    _, held_again = split_records(records[:500], 0.1, seed=0)
    assert {r["id"] for r in held_again} == {r["id"] for r in held if int(r["id"][2:]) < 500}


def test_decontamination_removes_train_records_sharing_a_13_gram():
    passage = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    train = [_rec("t1", f"Intro words. {passage}. More."), _rec("t2", "Nothing in common with the eval set.")]
    clean, bad = decontaminate(train, [_rec("e1", passage)], 13)
    assert [r["id"] for r in clean] == ["t2"] and bad[0]["id"] == "t1"


def test_cached_decontamination_remembers_verdicts_only_for_the_same_eval_set(tmp_path: Path, monkeypatch):
    passage = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    other = "a completely different sentence about parsing command line options with the argparse module"
    train = [_rec("t1", f"Intro. {passage}."), _rec("t2", f"Also: {other}."), _rec("t3", "Short.")]
    cache = tmp_path / "clean.json"
    clean, bad = decontaminate(train, [_rec("e1", passage)], 13, cache)
    assert [r["id"] for r in clean] == ["t2", "t3"] and [r["id"] for r in bad] == ["t1"]
    saved = json.loads(cache.read_text())
    assert set(saved["clean"]) == {digest(record_text(r)) for r in train[1:]}
    assert saved["found"] == {digest(record_text(train[0])): bad[0]["shared_ngram"]}
    # Every text has a verdict now: the rerun scans nothing (and builds no eval n-grams) ...
    scanned: list[list[str]] = []
    real = decontamination._contamination
    monkeypatch.setattr(
        decontamination,
        "_contamination",
        lambda t, e, n, *engine: scanned.append(t) or real(t, e, n, *engine),
    )
    assert decontaminate(train, [_rec("e1", passage)], 13, cache) == (clean, bad)
    assert scanned == []
    # ... and an edited record is the only text scanned.
    edited = [*train[:2], _rec("t3", f"Now longer: {passage}.")]
    clean, bad = decontaminate(edited, [_rec("e1", passage)], 13, cache)
    assert [r["id"] for r in bad] == ["t1", "t3"] and scanned == [[record_text(edited[2])]]
    # A new eval set voids the cache: t2, found clean before, now leaks and is caught.
    clean, bad = decontaminate(train, [_rec("e1", passage), _rec("e2", other)], 13, cache)
    assert [r["id"] for r in clean] == ["t3"] and [r["id"] for r in bad] == ["t1", "t2"]


def test_augmentation_is_seeded_capped_and_traceable():
    train = [_rec(f"t{i}", f"answer {i}", prompt=f"Explain thing {i}.") for i in range(100)]
    first, second = augment(train, 0.2, seed=3), augment(train, 0.2, seed=3)
    assert first == second
    assert len(first) / (len(train) + len(first)) <= 0.2 and len(first) == 25
    by_id = {r["id"]: r for r in train}
    for new in first:
        source = by_id[new["source_id"]]
        assert new["messages"][-1] == source["messages"][-1]  # the answer is unchanged
        assert source["messages"][0]["content"] in new["messages"][0]["content"]
        assert new["messages"][0]["content"] != source["messages"][0]["content"]


def test_few_shot_augmentation_draws_only_on_train_records():
    train = [_rec(f"t{i}", f"train answer {i}", prompt=f"Train question {i}?") for i in range(40)]
    evals = [_rec(f"e{i}", f"eval answer {i}", prompt=f"Eval question {i}?") for i in range(10)]
    new = augment(train, 0.3, seed=1, few_shot_k=2)
    assert {r["augmentation"] for r in new} == {"paraphrase_template", "few_shot_context"}
    train_texts = {m["content"] for r in train for m in r["messages"]}
    eval_texts = {m["content"] for r in evals for m in r["messages"]}
    for record in new:
        assert record["source_id"] in {r["id"] for r in train}
        for message in record["messages"][:-1]:
            assert not any(e in message["content"] for e in eval_texts)
        shots = [m["content"] for m in record["messages"][:-2]]
        assert all(s in train_texts for s in shots)
    assert new == augment(train, 0.3, seed=1, few_shot_k=2)


def test_model_paraphrases_are_cached_and_replace_template_paraphrases(tmp_path):
    from stages.augmentation import apply_model_paraphrases, model_paraphrases, paraphrase_sources

    train = [_rec(f"t{i}", f"answer {i}", prompt=f"Explain thing {i}.") for i in range(20)]
    new = augment(train, 0.2, seed=0)
    calls: list[list[str]] = []

    def fake_model(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        return [f"Tell me about {p.rsplit(' ', 1)[-1]}" for p in prompts]

    sources = paraphrase_sources(new, train)
    first = model_paraphrases(sources, fake_model, tmp_path / "cache.json")
    again = model_paraphrases(sources, fake_model, tmp_path / "cache.json")
    assert first == again and len(calls) == 1 and len(calls[0]) == len(new)
    out = apply_model_paraphrases(new, train, first)
    assert {r["augmentation"] for r in out} == {"model_paraphrase"}
    assert all(r["messages"][-2]["content"].startswith("Tell me about") for r in out)
    assert all(
        r["messages"][-1] == next(t for t in train if t["id"] == r["source_id"])["messages"][-1] for r in out
    )


def test_a_shared_clean_set_keeps_both_scans_clean_texts_and_never_a_scanned_hit(tmp_path: Path):
    from stages.scan_cache import CleanSet, Texts

    scanned: list[str] = []

    def find(text: str) -> bool:
        scanned.append(text)
        return "leak" in text

    originals = Texts.of([f"clean {i}" for i in range(6)] + ["a leak"])
    augmented = Texts.of([f"clean {i}, rephrased" for i in range(2)])
    assert CleanSet(tmp_path / "c.json", "s").scan(originals, find)[-1] is True  # dedup's scan
    scanned.clear()
    CleanSet(tmp_path / "c.json", "s").scan(originals + augmented, find)  # the gate's: only new texts
    assert scanned == ["a leak", "clean 0, rephrased", "clean 1, rephrased"]
    scanned.clear()
    CleanSet(tmp_path / "c.json", "s").scan(originals, find)  # dedup again: the augmented are still known
    assert scanned == ["a leak"]
    assert digest("a leak") not in json.loads((tmp_path / "c.json").read_text())["clean"]
    CleanSet(tmp_path / "c.json", "s").scan(Texts.of(["clean 0"]), find)  # far fewer: old keys drop out
    assert json.loads((tmp_path / "c.json").read_text())["clean"] == [digest("clean 0")]


def test_signature_cache_adds_a_part_with_only_the_records_it_had_not_seen(tmp_path: Path, monkeypatch):
    import numpy as np

    from stages.content import key_bytes, record_key
    from stages.dedup import cached_signatures
    from stages.near_dedup import minhash_signatures

    texts = [f"answer number {i} about the os module and its stat call" for i in range(5)]
    asked: list[list[int]] = []

    def signed(texts: list[str], **kw: int) -> np.ndarray:
        def of(rows: list[int]) -> list[str]:
            asked.append(rows)
            return [texts[i] for i in rows]

        keys = key_bytes([record_key({"messages": [{"role": "assistant", "content": t}]}) for t in texts])
        return cached_signatures(keys, of, tmp_path, 16, 3, **kw)

    _, signatures = signed(texts)
    texts[2] = "a fixed answer"
    _, again = signed(texts)
    assert sorted(asked[0]) == [0, 1, 2, 3, 4] and asked[1] == [2]  # then only the fixed record
    assert np.array_equal(again, minhash_signatures(texts, num_perm=16, ngram=3))
    assert np.array_equal(again[[0, 1, 3, 4]], signatures[[0, 1, 3, 4]])
    # Only records with enough words come back, with their indices (the fixed answer has 3).
    eligible, long_enough = signed(texts, min_words=4)
    assert eligible.tolist() == [0, 1, 3, 4] and np.array_equal(long_enough, signatures[[0, 1, 3, 4]])
    parts = sorted(tmp_path.glob("part-*"))
    assert [len(np.load(p / "keys.npy")) for p in parts] == [5, 1]
    monkeypatch.setattr("stages.dedup.SIGNATURE_PARTS", 2)  # a third part: compacted into one
    texts[4] = "another fixed answer"
    texts.append("another fixed answer")  # twice in one call: signed and stored once
    _, compacted = signed(texts)
    assert asked[-1] == [4]
    assert np.array_equal(compacted, minhash_signatures(texts, num_perm=16, ngram=3))
    assert [len(np.load(p / "keys.npy")) for p in tmp_path.glob("part-*")] == [7]  # every text seen, once
    with pytest.raises(ValueError, match="40-hex-digit"):
        key_bytes(["abc"])


def test_signature_rows_are_found_by_the_whole_key_not_its_first_eight_bytes():
    import numpy as np

    from stages.content import KeyRows

    head = b"A" * 8
    stored = np.array([head + b"x" * 12, b"B" * 20, head + b"x" * 12], dtype="S20")  # one key twice
    keys = np.array([head + b"y" * 12, head + b"x" * 12, b"C" * 20, b"B" * 20], dtype="S20")
    assert KeyRows(stored)(keys).tolist() == [-1, 0, -1, 1]
    assert KeyRows(np.zeros(0, "S20"))(keys).tolist() == [-1, -1, -1, -1]


def test_split_and_augmentation_ranks_in_one_pass_are_the_per_record_ones():
    from stages.augmentation import _rank, choose
    from stages.split import eval_score, eval_scores

    ids = [f"r{i}" for i in range(300)] + ["ünïcode-id", ""]
    assert eval_scores(ids, 7).tolist() == [eval_score(i, 7) for i in ids]
    schemas = ["text" if i % 5 == 0 else "instruction" for i in range(len(ids))]
    eligible = [i for i, schema in enumerate(schemas) if schema != "text"]
    by_rank = sorted(eligible, key=lambda i: _rank(3, ids[i]))
    assert choose(ids, schemas, 0.2, 3) == by_rank[: int(0.2 * len(ids) / 0.8)]


def test_a_few_texts_are_scanned_from_their_side_with_the_same_verdicts():
    from stages.decontamination import _all_scanned, _few_scanned

    eval_texts = [
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
        "Alpha beta, gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi.",
        "short eval text",
    ]
    texts = [
        "zero one two three four five six seven eight nine ten eleven twelve thirteen",  # shares 13 words
        "ALPHA beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu",  # case and commas aside
        "one two three four five six seven eight nine ten eleven twelve fifteen",  # 12 words only
        "",
        "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu omicron",
    ]
    found = _all_scanned(texts, eval_texts, 13)
    assert sorted(found) == [0, 1]
    assert _few_scanned(texts, eval_texts, 13) == found
    assert _few_scanned(texts, [], 13) == {} and _few_scanned([], eval_texts, 13) == {}


def test_stable_ngram_hashes_are_the_same_in_every_process_where_hash_is_not():
    """A Ray worker's n-gram hashes must meet the driver's: `stable` ones do under any hash salt."""
    import subprocess
    import sys

    from stages.decontamination import _hashes, _stable_ngrams

    text = "Ünïcode words, and the same words again: words and more words."
    code = (
        "from stages.decontamination import _hashes\n"
        f"print(sorted(_hashes({text!r}, 3, stable=True)), sorted(_hashes({text!r}, 3)))"
    )
    root = Path(__file__).resolve().parents[2]
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split("] [")  # fmt: skip
        for seed in ("1", "2")
    ]
    assert outputs[0][0] == outputs[1][0] and outputs[0][1] != outputs[1][1]
    pairs = list(_stable_ngrams(text, 3))
    assert {h for h, _ in pairs} == _hashes(text, 3, stable=True) and len(pairs) == 9
    assert pairs[0][1] == ("ünïcode", "words", "and")
