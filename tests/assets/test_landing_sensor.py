"""Every change of a landing file is read: the sensor requests each observed change with a run key
Dagster has not seen (a return to earlier content and a second deletion included), and the retrain
schedule reads what the sensor left stale instead of waiting for it for ever."""

import json
from pathlib import Path

import dagster as dg
from conftest import sensor_tick, unsynced, write_jsonl
from dagster._core.storage.tags import PARTITION_NAME_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.utils import make_new_run_id

from assets.sources import ABSENT
from pipelines import definitions
from stages.content import file_hash

A = [{"id": f"r{i}", "instruction": f"What does helper_{i}() return?", "output": f"The integer {i}, always."}
     for i in range(3)]  # fmt: skip
B = [*A, {"id": "edit", "instruction": "And helper_9()?", "output": "The integer 9, unless told otherwise."}]
INGESTED = ["raw_corpus", "clean_corpus"]


def ingest(instance, settings, request: dg.RunRequest, sensor: str | None = "landing_sensor") -> None:  # noqa: ANN001
    """Run a request as the daemon does: a run of the per-file assets carrying its run key.

    Dagster skips a sensor's request whose run key a run of that sensor already carries."""
    tags = {**request.tags, RUN_KEY_TAG: request.run_key} if request.run_key else dict(request.tags)
    if sensor:
        tags[SENSOR_NAME_TAG] = sensor
    result = dg.materialize(
        [*definitions.SOURCES, *definitions.ASSETS],
        selection=[k.to_user_string() for k in request.asset_selection or []] or INGESTED,
        partition_key=request.partition_key,
        instance=instance,
        resources={**definitions.resources(settings.home, settings.config_path), "settings": settings},
        tags=tags,
    )
    assert result.success


def runs_with_key(instance, run_key: str) -> list[dg.DagsterRun]:  # noqa: ANN001
    """The runs that make the daemon skip a landing_sensor request with this key."""
    return instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: "landing_sensor"}))


def latest_raw_summary(instance, partition: str) -> dict:  # noqa: ANN001
    """raw_corpus[partition]'s summary, found through the materialisation Dagster recorded last."""
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_corpus"), asset_partitions=[partition]), limit=1
    ).records
    return json.loads(
        (Path(record.asset_materialization.metadata["path"].value) / "summary.json").read_text()
    )


def test_every_change_is_requested_with_a_run_key_never_used_before(home, instance, settings):
    landing_file = home / "landing" / "a.jsonl"
    write_jsonl(home / "landing" / "b.jsonl", B)  # never changes: never requested again
    steps = [("A", A), ("B", B), ("back to A", A), ("B again", B),
             ("deleted", None), ("restored", B), ("deleted again", None)]  # fmt: skip
    keys = []
    for step, rows in steps:
        if rows is None:
            landing_file.unlink()
        else:
            write_jsonl(landing_file, rows)
        version = file_hash(landing_file) if rows else ABSENT
        requests = sensor_tick(instance, settings).run_requests
        mine = [r for r in requests if r.partition_key == "a.jsonl"]
        assert len(mine) == 1, f"{step}: {requests}"
        [request] = mine
        assert request.tags["tunegraph/content_hash"] == version
        assert runs_with_key(instance, request.run_key) == [], (
            f"{step}: the daemon would skip {request.run_key}"
        )
        for each in requests:
            ingest(instance, settings, each)
        keys.append(request.run_key)

        # Read once, and only once: the file is synced and the next tick has nothing to request.
        assert sensor_tick(instance, settings).run_requests == [], step
        assert "raw_corpus[a.jsonl]" not in unsynced(instance), step
        summary = latest_raw_summary(instance, "a.jsonl")
        assert (summary["removed"], summary["records"]) == ((True, 0) if rows is None else (False, len(rows)))
        assert summary["content_hash"] == (None if rows is None else version)
    assert len(set(keys)) == len(steps)


def evaluate_schedule(instance):  # noqa: ANN001, ANN201 (ScheduleExecutionData)
    schedule = definitions.defs.get_schedule_def("retrain_when_data_changed")
    with dg.build_schedule_context(
        instance=instance, repository_def=definitions.defs.get_repository_def()
    ) as ctx:
        return schedule.evaluate_tick(ctx)


def test_the_schedule_reads_stale_landing_files_the_sensor_will_not_request(home, instance, settings):
    write_jsonl(home / "landing" / "a.jsonl", A)
    write_jsonl(home / "landing" / "b.jsonl", B)
    # The sensor observes both files and requests both; only b's run happens (a's request was
    # lost, or its run failed). The observation is recorded, so the sensor never asks again.
    first = sensor_tick(instance, settings)
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "b.jsonl"]
    ingest(instance, settings, next(r for r in first.run_requests if r.partition_key == "b.jsonl"))
    assert sensor_tick(instance, settings).run_requests == []
    assert "raw_corpus[a.jsonl]" in unsynced(instance)

    # The schedule requests what Dagster calls stale and no run will read.
    [request] = evaluate_schedule(instance).run_requests
    assert request.partition_key == "a.jsonl"
    assert [k.to_user_string() for k in request.asset_selection] == INGESTED
    assert request.tags["tunegraph/trigger"] == "schedule"

    # While a run for that file is on its way, the schedule leaves the file to that run.
    waits = dg.DagsterRun(job_name="ingest_landing_file", run_id=make_new_run_id(),
                          status=dg.DagsterRunStatus.NOT_STARTED, tags={PARTITION_NAME_TAG: "a.jsonl"})  # fmt: skip
    instance.add_run(waits)
    waiting = evaluate_schedule(instance)
    assert waiting.run_requests == []
    assert waiting.skip_message == "landing files not yet read and cleaned: a.jsonl (they are read first)"
    instance.report_run_canceled(waits)

    # The schedule's own request read, it moves on to retraining (nothing downstream exists yet).
    ingest(instance, settings, request, sensor=None)
    assert "raw_corpus[a.jsonl]" not in unsynced(instance)
    [retrain] = evaluate_schedule(instance).run_requests
    assert retrain.partition_key is None
    assert "fine_tuned_model" in [k.to_user_string() for k in retrain.asset_selection]
