"""The Ray backend of the data stages' seam gives the local results, and survives a worker that dies.

A Ray of 2 CPUs is started once for the module (about 5 s here); tests marked slow as a whole
(this file takes ~25 s), `make test-slow` runs them.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stages.chat import tokenize_cached
from stages.cleaning import Rules, clean_all, clean_records
from stages.decontamination import decontaminate
from stages.dedup import cached_signatures
from stages.model_source import _smollm2_tokenizer
from stages.near_dedup import lsh_join
from stages.workers import Engine, map_chunks

pytestmark = pytest.mark.slow
# Ray reads its auth settings once, on import: a token in the environment rather than in ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return []


@pytest.fixture(scope="module")
def engine(lines: list[str]):
    """A Ray of 2 CPUs in a short temp dir (its sockets' paths must stay under 108 bytes)."""
    temp = tempfile.mkdtemp(prefix="tg-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    yield Engine("ray", log=lines.append)
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _rec(i: int, response: str) -> dict:
    return {"id": f"r{i}", "source_file": "a.jsonl", "source_line": i, "schema": "instruction",
            "messages": [{"role": "user", "content": f"Explain item {i}."},
                         {"role": "assistant", "content": response}]}  # fmt: skip


def test_cleaning_tokenising_signatures_and_decontamination_match_local(
    engine: Engine, lines: list[str], tmp_path: Path
):
    records = [_rec(i, f"Answer {i}: mail ada{i}@example.org or see   the docs.") for i in range(40)]
    records[7] = _rec(7, "x")  # dropped: too short
    local, on_ray = clean_records(records, Rules()), clean_all(records, Rules(), engine)
    assert (on_ray.kept, on_ray.dropped, on_ray.pii) == (local.kept, local.dropped, local.pii)
    assert on_ray.pii["email"] == 39 and len(on_ray.dropped) == 1
    assert any(
        line.startswith("ray: clean_records: 8 tasks at ") and "0 retries" in line for line in lines
    ), lines

    tok = _smollm2_tokenizer()
    batches = [pa.Table.from_pylist(local.kept[:10]), pa.Table.from_pylist(local.kept[10:])]
    here, _ = tokenize_cached(tok, batches, tmp_path / "local")
    there, fresh = tokenize_cached(tok, batches, tmp_path / "ray", engine)
    assert fresh == 39 and there.table().equals(here.table())

    texts = [r["messages"][-1]["content"] for r in local.kept]
    keys = np.array([f"{i:020d}".encode() for i in range(len(texts))], "S20")

    def sign(e: Engine) -> tuple[np.ndarray, np.ndarray]:
        return cached_signatures(
            keys, lambda at: [texts[i] for i in at], tmp_path / f"signatures-{e.kind}", 64, 3, 0, e
        )

    (rows_here, sig_here), (rows_there, sig_there) = sign(Engine()), sign(engine)
    assert np.array_equal(rows_here, rows_there) and np.array_equal(sig_here, sig_there)

    # Ray's workers hash n-grams with another salt than this process: the scan must not rely on `hash`.
    passage = " ".join(f"w{i}" for i in range(13))
    train = [_rec(i, passage if i % 10 == 3 else f"clean answer number {i}") for i in range(40)]
    clean, bad = decontaminate(train, [_rec(99, passage)], 13, engine=engine)
    assert [r["id"] for r in bad] == ["r3", "r13", "r23", "r33"] and len(clean) == 36


def test_the_near_dedup_shuffle_on_ray_is_lsh_join(engine: Engine, lines: list[str]):
    from test_lsh_shuffle import planted_signatures

    from stages import ray_engine

    signatures, _ = planted_signatures(4000)
    assert ray_engine.lsh_join(signatures, 0.5, engine) == lsh_join(signatures, 0.5)
    assert any("near-dedup join of 4000 signatures: 8 map and 8 reduce tasks" in line for line in lines), (
        lines
    )


def _dies_once(marker: str, chunk: list[int]) -> list[int]:
    """A worker killed mid-task, once: the first run of the chunk holding 0 ends its process."""
    if 0 in chunk and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return [x * x for x in chunk]


def test_a_worker_that_dies_mid_task_is_retried_and_the_result_is_whole(
    engine: Engine, lines: list[str], tmp_path: Path
):
    from functools import partial

    squares = map_chunks(partial(_dies_once, str(tmp_path / "died")), list(range(100)), engine=engine)
    assert [x for part in squares for x in part] == [x * x for x in range(100)]
    assert (tmp_path / "died").exists()
    assert any(
        "_dies_once task 1/8 lost (WorkerCrashedError" in line and "retry 1/2" in line for line in lines
    ), lines


def _always_dies(chunk: list[int]) -> list[int]:
    os._exit(1)


def test_a_task_lost_every_time_fails_the_stage_in_one_line(engine: Engine):
    with pytest.raises(RuntimeError) as err:
        map_chunks(_always_dies, [1, 2], engine=engine)
    message = str(err.value)
    assert (
        "\n" not in message and "_always_dies task 1/2 lost 3 times" in message and "`ray status`" in message
    )


def _bad_record(chunk: list[int]) -> list[int]:
    raise ValueError(f"record {chunk[0]} is malformed")


def test_an_error_of_the_stage_itself_is_raised_as_it_is_not_retried(engine: Engine, lines: list[str]):
    before = len(lines)
    with pytest.raises(ValueError, match="record 0 is malformed"):
        map_chunks(_bad_record, [0, 1], engine=engine)
    assert not any("retry" in line for line in lines[before:])


def test_the_local_engine_never_imports_ray():
    """make test and the demo pay nothing for Ray: the definitions and every local stage leave it unloaded."""
    code = (
        "import sys, pyarrow as pa, numpy as np\n"
        "import pipelines.definitions\n"
        "from stages.cleaning import Rules, clean_all\n"
        "from stages.decontamination import decontaminate\n"
        "from stages.dedup import near_duplicate_of\n"
        "import tempfile, pathlib\n"
        "recs = [{'id': f'r{i}', 'source_file': 'a', 'source_line': i, 'schema': 'instruction', 'messages': "
        "[{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': f'answer number {i} ' * 9}]} for i in range(3000)]\n"
        "kept = clean_all(recs, Rules()).kept\n"
        "decontaminate(kept, kept[:1], 13)\n"
        "keys = np.array([f'{i:020d}'.encode() for i in range(len(kept))], 'S20')\n"
        "near_duplicate_of(keys, lambda at: [kept[i]['messages'][-1]['content'] for i in at], pathlib.Path(tempfile.mkdtemp()), 0.5, 3, 64, 4)\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr
