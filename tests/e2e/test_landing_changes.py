"""`tunegraph ui` left running while a landing file is edited, reverted, edited again, deleted,
restored and deleted again: the daemon's landing sensor reads every change (a run key per
observation, not per content), each time within two sensor intervals, and what automation builds
ends up matching the landing folder."""

import json
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import TINY_CONFIG, unsynced, write_jsonl
from dagster._core.storage.tags import PARTITION_NAME_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster_ui import tunegraph_ui

from stages.content import file_hash

SENSOR_INTERVAL = 30  # the landing sensor's minimum_interval_seconds (pipelines/sensors.py)
A = [{"id": f"a{i}", "instruction": f"What does helper_{i}() return?", "output": f"The integer {i}, always."}
     for i in range(3)]  # fmt: skip
B = [
    *A,
    {"id": "a-edit", "instruction": "And helper_9()?", "output": "The integer 9, unless told otherwise."},
]
STATIC = [{"id": f"s{i}", "instruction": f"Why is step {i} needed?", "output": f"Step {i} keeps the order stable."}
          for i in range(5)]  # fmt: skip


def latest_materialisation(instance: dg.DagsterInstance, asset: str, partition: str | None = None):  # noqa: ANN201
    """The materialisation Dagster recorded last (of one partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return records[0] if records else None


def raw_summary(instance: dg.DagsterInstance, partition: str) -> dict | None:
    """raw_corpus[partition]'s summary.json, read through the `path` its latest materialisation records."""
    record = latest_materialisation(instance, "raw_corpus", partition)
    if record is None:
        return None
    return json.loads(
        (Path(record.asset_materialization.metadata["path"].value) / "summary.json").read_text()
    )


def read_and_synced(instance: dg.DagsterInstance, partition: str, content_hash: str | None) -> bool:
    """The file's current content was read (None: read as deleted) and Dagster calls it synced."""
    summary = raw_summary(instance, partition)
    if (
        summary is None
        or summary["content_hash"] != content_hash
        or summary["removed"] != (content_hash is None)
    ):
        return False
    return f"raw_corpus[{partition}]" not in unsynced(instance)


def sensor_runs(instance: dg.DagsterInstance, partition: str) -> list[dg.DagsterRun]:
    return instance.get_runs(
        dg.RunsFilter(tags={SENSOR_NAME_TAG: "landing_sensor", PARTITION_NAME_TAG: partition})
    )


@pytest.mark.slow
def test_every_change_of_a_landing_file_is_read_by_the_daemon(home, instance):
    landing_file = home / "landing" / "a.jsonl"
    write_jsonl(landing_file, A)
    write_jsonl(home / "landing" / "static.jsonl", STATIC)
    steps = [("A", A), ("edited to B", B), ("reverted to A", A), ("edited to B again", B),
             ("deleted", None), ("restored", B), ("deleted again", None)]  # fmt: skip
    took: dict[str, float] = {}
    timing: dict[str, tuple[float, float, float]] = {}
    with tunegraph_ui(home, TINY_CONFIG):
        for n, (step, rows) in enumerate(steps):
            started = time.time()
            if rows is None:
                landing_file.unlink()
            elif n:  # (the first content was written before the daemon started)
                write_jsonl(landing_file, rows)
            content = file_hash(landing_file) if rows is not None else None
            deadline = started + 2 * SENSOR_INTERVAL
            while not read_and_synced(instance, "a.jsonl", content):
                assert time.time() < deadline, (
                    f"{step}: a.jsonl not re-read and synced within {deadline - started:.0f} s; "
                    f"raw summary {raw_summary(instance, 'a.jsonl')}, runs "
                    f"{[(r.tags.get(RUN_KEY_TAG), r.status.value) for r in sensor_runs(instance, 'a.jsonl')]}"
                )
                time.sleep(1)
            took[step] = round(time.time() - started, 1)
            # One run of the sensor per observed change, each with a run key of its own.
            runs = sensor_runs(instance, "a.jsonl")
            record = instance.get_run_record_by_id(runs[0].run_id)
            read = latest_materialisation(instance, "raw_corpus", "a.jsonl").timestamp
            timing[step] = (round(record.create_timestamp.timestamp() - started, 1),
                            round(record.start_time - started, 1), round(read - started, 1))  # fmt: skip
            assert len(runs) == n + 1, [r.tags.get(RUN_KEY_TAG) for r in runs]
            assert len({r.tags[RUN_KEY_TAG] for r in runs}) == n + 1
        print(f"seconds from each change to a.jsonl re-read and synced: {took}")
        print(f"(seconds to the run's creation, its start, raw_corpus recorded): {timing}")

        # The training set follows the landing folder: automation rebuilds deduplicated_corpus
        # from every cleaned file, and a.jsonl (deleted) gives it nothing.
        deadline = time.time() + 4 * SENSOR_INTERVAL
        [last_ingest, *_] = sensor_runs(instance, "a.jsonl")
        while not (last_ingest := instance.get_run_by_id(last_ingest.run_id)).is_finished:
            assert time.time() < deadline, f"the last ingest run is still {last_ingest.status}"
            time.sleep(1)
        assert last_ingest.status == dg.DagsterRunStatus.SUCCESS
        cleaned = latest_materialisation(instance, "clean_corpus", "a.jsonl")
        assert (
            cleaned.run_id == last_ingest.run_id and cleaned.asset_materialization.metadata["kept"].value == 0
        )
        while True:
            dedup = latest_materialisation(instance, "deduplicated_corpus")
            if (dedup is not None and dedup.storage_id > cleaned.storage_id
                    and "deduplicated_corpus" not in unsynced(instance)):  # fmt: skip
                break
            assert time.time() < deadline, (
                f"automation did not rebuild deduplicated_corpus: {unsynced(instance)}"
            )
            time.sleep(2)
        metadata = dedup.asset_materialization.metadata
        assert metadata["records_in"].value == len(STATIC)  # only static.jsonl's records
        static = latest_materialisation(instance, "clean_corpus", "static.jsonl")
        assert static.asset_materialization.metadata["kept"].value == len(STATIC)
        assert raw_summary(instance, "static.jsonl")["content_hash"] == file_hash(
            home / "landing" / "static.jsonl"
        )
