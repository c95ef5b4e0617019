"""Per-record work on every core: forked workers give the single-process result, in order."""

import os

import pyarrow as pa
import pytest

from stages.chat import tokenize_cached, tokenize_records
from stages.cleaning import Rules, clean_all, clean_records
from stages.decontamination import decontaminate
from stages.model_source import _smollm2_tokenizer
from stages.workers import cores, map_chunks


@pytest.fixture
def parallel(monkeypatch):
    """Workers even for a handful of items."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: map_chunks runs everything in this process")
    monkeypatch.setattr("stages.workers.MIN_PARALLEL", 1)
    monkeypatch.setenv("TUNEGRAPH_WORKERS", "2")


def _rec(i: int, response: str) -> dict:
    return {"id": f"r{i}", "source_file": "a.jsonl", "source_line": i, "schema": "instruction",
            "messages": [{"role": "user", "content": f"Explain item {i}."},
                         {"role": "assistant", "content": response}]}  # fmt: skip


def test_chunks_run_in_other_processes_and_come_back_in_order(parallel):
    squares = map_chunks(lambda chunk: [(x * x, os.getpid()) for x in chunk], list(range(1000)))
    flat = [pair for part in squares for pair in part]
    assert [s for s, _ in flat] == [x * x for x in range(1000)]
    assert len(squares) == 8 and os.getpid() not in {pid for _, pid in flat}


def test_one_core_runs_here(monkeypatch):
    monkeypatch.setenv("TUNEGRAPH_WORKERS", "1")
    assert cores() == 1
    assert map_chunks(lambda chunk: [os.getpid()] * len(chunk), list(range(5000))) == [[os.getpid()] * 5000]


def test_cleaning_tokenising_and_decontamination_match_one_process(parallel, tmp_path):
    records = [_rec(i, f"Answer {i}: mail ada{i}@example.org or see   the docs.") for i in range(40)]
    records[7] = _rec(7, "x")  # dropped: too short
    one, many = clean_records(records, Rules()), clean_all(records, Rules())
    assert (many.kept, many.dropped, many.pii) == (one.kept, one.dropped, one.pii)
    assert many.pii["email"] == 39 and len(many.dropped) == 1

    tok = _smollm2_tokenizer()
    tokens, fresh = tokenize_cached(
        tok, [pa.Table.from_pylist(one.kept[:10]), pa.Table.from_pylist(one.kept[10:])], tmp_path / "tokens"
    )
    assert fresh == 39 and tokens.table().to_pylist() == tokenize_records(tok, one.kept)

    passage = " ".join(f"w{i}" for i in range(13))
    train = [_rec(i, passage if i % 10 == 3 else f"clean answer number {i}") for i in range(40)]
    clean, bad = decontaminate(train, [_rec(99, passage)], 13)
    assert [r["id"] for r in bad] == ["r3", "r13", "r23", "r33"] and len(clean) == 36
    assert bad[0]["shared_ngram"] == passage


def _pid(chunk: list[int]) -> list[int]:
    return [os.getpid()] * len(chunk)


def test_kept_workers_end_when_the_next_call_runs_here(monkeypatch):
    """A small call after the per-file stages (a one-record fix's dedup) still ends their workers."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: map_chunks keeps no workers")
    from stages import workers

    monkeypatch.setenv("TUNEGRAPH_WORKERS", "2")
    kept_pids = {pid for part in map_chunks(_pid, list(range(4000)), keep_workers=True) for pid in part}
    assert workers._kept is not None and os.getpid() not in kept_pids
    assert map_chunks(_pid, [1, 2]) == [[os.getpid()] * 2]  # below MIN_PARALLEL: here
    assert workers._kept is None
    for pid in kept_pids:  # reaped by the pool's shutdown
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
