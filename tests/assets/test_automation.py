"""The landing sensor and the retrain schedule against a real Dagster instance."""

import json

import dagster as dg
from conftest import write_example_shards, write_jsonl

from pipelines.definitions import defs
from pipelines.runner import Runner
from pipelines.sensors import retrain_decision
from resources.tracking import MlflowTracking


def _tick(instance, settings, cursor):  # noqa: ANN001, ANN202
    sensor = defs.get_sensor_def("landing_sensor")
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"settings": settings}, definitions=defs
    )
    result = sensor(context)  # the SensorResult as the daemon receives it
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result, context.cursor


def test_sensor_requests_one_run_per_new_or_changed_file_and_never_twice(home, instance, settings):
    a = write_jsonl(home / "landing" / "a.jsonl", [{"instruction": "A?", "output": "Answer A here."}])
    write_jsonl(home / "landing" / "sub" / "b.jsonl", [{"instruction": "B?", "output": "Answer B here."}])

    first, cursor = _tick(instance, settings, None)
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "sub/b.jsonl"]
    assert all(r.run_key.startswith(f"{r.partition_key}@") for r in first.run_requests)
    assert sorted(instance.get_dynamic_partitions("landing_files")) == ["a.jsonl", "sub/b.jsonl"]

    unchanged, cursor = _tick(instance, settings, cursor)
    assert unchanged.run_requests == []

    a.write_text(json.dumps({"instruction": "A?", "output": "A corrected answer."}) + "\n")
    write_jsonl(home / "landing" / "c.jsonl", [{"instruction": "C?", "output": "Answer C here."}])
    changed, cursor = _tick(instance, settings, cursor)
    assert sorted(r.partition_key for r in changed.run_requests) == ["a.jsonl", "c.jsonl"]
    assert len({r.run_key for r in first.run_requests + changed.run_requests}) == 4

    (home / "landing" / "sub" / "b.jsonl").unlink()
    removed, cursor = _tick(instance, settings, cursor)
    assert removed.run_requests == []
    assert sorted(instance.get_dynamic_partitions("landing_files")) == ["a.jsonl", "c.jsonl"]


def test_retrain_only_when_the_training_data_changed(home, instance, settings):
    shards = write_example_shards(home, shards=2)
    assert Runner(settings, instance).run()["status"] == "success"
    client = MlflowTracking(home=str(home)).client()
    assert (
        retrain_decision(settings, instance, client)
        == "training data unchanged since champion v1 was trained"
    )

    # The data assets rebuilt from unchanged files: same content version, still nothing to do.
    data_assets = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]
    assert Runner(settings, instance).run(select=data_assets)["status"] == "success"
    assert (
        retrain_decision(settings, instance, client)
        == "training data unchanged since champion v1 was trained"
    )

    lines = shards[0].read_text().splitlines()
    lines[3] = json.dumps(
        {"id": "fixed", "instruction": "Explain y.", "output": "A corrected answer about y."}
    )
    shards[0].write_text("\n".join(lines) + "\n")
    record = Runner(settings, instance).run(select=["raw_corpus", "clean_corpus", *data_assets])
    assert record["status"] == "success", record["errors"]
    assert retrain_decision(settings, instance, client) is None

    schedule = defs.get_schedule_def("retrain_when_data_changed")
    context = dg.build_schedule_context(
        instance=instance, resources={"settings": settings, "mlflow_tracking": MlflowTracking(home=str(home))}
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.tags["tunegraph/trigger"] == "schedule"
