"""The landing sensor against a real Dagster instance (every observed change, the schedule as its
backstop: test_landing_sensor.py; the retrain schedule: test_pipeline.py, test_gates.py)."""

import json

from conftest import sensor_tick, write_jsonl


def test_sensor_requests_one_run_per_new_or_changed_file_and_never_twice(home, instance, settings):
    a = write_jsonl(home / "landing" / "a.jsonl", [{"instruction": "A?", "output": "Answer A here."}])
    write_jsonl(home / "landing" / "sub" / "b.jsonl", [{"instruction": "B?", "output": "Answer B here."}])

    first = sensor_tick(instance, settings)
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "sub/b.jsonl"]
    assert all(r.run_key.startswith(f"{r.partition_key}@") for r in first.run_requests)
    assert sorted(instance.get_dynamic_partitions("landing_files")) == ["a.jsonl", "sub/b.jsonl"]

    unchanged = sensor_tick(instance, settings)
    assert unchanged.run_requests == [] and unchanged.asset_events == []

    a.write_text(json.dumps({"instruction": "A?", "output": "A corrected answer."}) + "\n")
    write_jsonl(home / "landing" / "c.jsonl", [{"instruction": "C?", "output": "Answer C here."}])
    changed = sensor_tick(instance, settings)
    assert sorted(r.partition_key for r in changed.run_requests) == ["a.jsonl", "c.jsonl"]
    assert len({r.run_key for r in first.run_requests + changed.run_requests}) == 4

    # A deleted file keeps its partition and is read once more, as empty: its records leave training.
    (home / "landing" / "sub" / "b.jsonl").unlink()
    removed = sensor_tick(instance, settings)
    assert [(r.partition_key, r.tags["tunegraph/content_hash"]) for r in removed.run_requests] == [
        ("sub/b.jsonl", "absent")
    ]
