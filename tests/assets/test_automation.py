"""The landing sensor and the retrain schedule against a real Dagster instance."""

import json

import dagster as dg
from conftest import write_example_shards, write_jsonl

from pipelines.definitions import defs
from pipelines.runner import Runner
from pipelines.sensors import retrain_decision
from pipelines.staleness import read_state


def tick(instance, settings):  # noqa: ANN001, ANN201
    """One evaluation of the landing sensor, its results applied to the instance as the daemon does."""
    sensor = defs.get_sensor_def("landing_sensor")
    with dg.build_sensor_context(
        instance=instance, resources={"settings": settings}, repository_def=defs.get_repository_def()
    ) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def test_sensor_requests_one_run_per_new_or_changed_file_and_never_twice(home, instance, settings):
    a = write_jsonl(home / "landing" / "a.jsonl", [{"instruction": "A?", "output": "Answer A here."}])
    write_jsonl(home / "landing" / "sub" / "b.jsonl", [{"instruction": "B?", "output": "Answer B here."}])

    first = tick(instance, settings)
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "sub/b.jsonl"]
    assert all(r.run_key.startswith(f"{r.partition_key}@") for r in first.run_requests)
    assert sorted(instance.get_dynamic_partitions("landing_files")) == ["a.jsonl", "sub/b.jsonl"]

    unchanged = tick(instance, settings)
    assert unchanged.run_requests == [] and unchanged.asset_events == []

    a.write_text(json.dumps({"instruction": "A?", "output": "A corrected answer."}) + "\n")
    write_jsonl(home / "landing" / "c.jsonl", [{"instruction": "C?", "output": "Answer C here."}])
    changed = tick(instance, settings)
    assert sorted(r.partition_key for r in changed.run_requests) == ["a.jsonl", "c.jsonl"]
    assert len({r.run_key for r in first.run_requests + changed.run_requests}) == 4

    # A deleted file keeps its partition and is read once more, as empty: its records leave training.
    (home / "landing" / "sub" / "b.jsonl").unlink()
    removed = tick(instance, settings)
    assert [(r.partition_key, r.tags["tunegraph/content_hash"]) for r in removed.run_requests] == [
        ("sub/b.jsonl", "absent")
    ]


def test_after_tunegraph_run_the_sensor_requests_nothing_and_nothing_is_unsynced(home, instance, settings):
    write_example_shards(home, shards=2)
    assert Runner(settings, instance).run()["status"] == "success"

    # The daemon's first tick after a CLI run (as when `make ui` starts): the instance already
    # holds the files' observations, so no file is ingested again.
    result = tick(instance, settings)
    assert result.run_requests == [] and result.asset_events == []
    again = Runner(settings, instance).run()
    assert again["status"] == "up_to_date", again
    state = read_state(instance, defs.resolve_asset_graph(), instance.get_dynamic_partitions("landing_files"))
    assert state.stale == {}  # what the UI shows as "Unsynced": nothing
    assert retrain_decision(instance, defs.resolve_asset_graph()) == (
        [],
        "fine_tuned_model is up to date with its data, config and code",
    )


def test_retrain_schedule_runs_when_the_model_is_stale(home, instance, settings):
    shards = write_example_shards(home, shards=2)
    assert Runner(settings, instance).run()["status"] == "success"

    # The data assets rebuilt from unchanged files: same content versions, still nothing to do.
    data_assets = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]
    assert Runner(settings, instance).run(select=data_assets, full=True)["status"] == "success"
    assert retrain_decision(instance, defs.resolve_asset_graph())[0] == []

    # A fixed record lands and is ingested (as the sensor and automation would): the model is stale.
    lines = shards[0].read_text().splitlines()
    lines[3] = json.dumps(
        {"id": "fixed", "instruction": "Explain y.", "output": "A corrected answer about y."}
    )
    shards[0].write_text("\n".join(lines) + "\n")
    record = Runner(settings, instance).run(select=["raw_corpus", "clean_corpus", *data_assets])
    assert record["status"] == "success", record["errors"]
    assets, reason = retrain_decision(instance, defs.resolve_asset_graph())
    assert assets == ["fine_tuned_model", "preference_pairs", "preference_model", "model_evaluation"], reason

    schedule = defs.get_schedule_def("retrain_when_data_changed")
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.tags["tunegraph/trigger"] == "schedule"
    assert [k.to_user_string() for k in request.asset_selection] == assets
