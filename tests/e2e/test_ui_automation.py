"""`tunegraph ui` as a user leaves it running: a file dropped into landing/ flows through the data
assets without a click, a run launched from the UI with a launchpad override trains with it, and
Ctrl-C (SIGTERM here) stops every process within 10 s."""

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
from conftest import TINY_CONFIG, output, training_runs, write_example_shards, write_jsonl
from dagster_ui import processes_of, tunegraph_ui

from pipelines.cli import configure_environment
from resources.settings import REPO_ROOT

FOLLOWERS = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]  # eager automation


def counts(instance: dg.DagsterInstance, assets: list[str]) -> dict[str, int]:
    return {a: len(instance.fetch_materializations(dg.AssetKey(a), limit=100).records) for a in assets}


@pytest.mark.slow
def test_a_dropped_file_flows_through_a_launchpad_override_trains_and_the_ui_stops_clean(home):
    write_example_shards(home, shards=2)
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    first = subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(TINY_CONFIG), "run"],
                           env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        before = counts(instance, [*FOLLOWERS, "fine_tuned_model"])
        with tunegraph_ui(home, TINY_CONFIG) as (ui, proc, _):
            # A new landing file: the sensor ingests it, automation follows with the data assets.
            write_jsonl(home / "landing" / "dropped.jsonl", [
                {"instruction": f"What does helper_{i}() return?", "output": f"It returns the integer {i}, always."}
                for i in range(12)
            ])  # fmt: skip
            deadline = time.time() + 480
            while counts(instance, FOLLOWERS) == {a: before[a] for a in FOLLOWERS} or any(
                counts(instance, [a])[a] == before[a] for a in FOLLOWERS
            ):
                assert time.time() < deadline, (
                    f"automation did not follow within 8 minutes: {counts(instance, FOLLOWERS)}"
                )
                time.sleep(3)
            runs = instance.get_runs()
            ingest = [r for r in runs if r.tags.get("dagster/partition") == "dropped.jsonl"]
            assert ingest and ingest[0].tags.get("dagster/sensor_name") == "landing_sensor"
            automated = [
                r for r in runs if r.tags.get("dagster/sensor_name") == "default_automation_condition_sensor"
            ]
            assert automated
            for run in ingest + automated:
                while not run.is_finished:
                    time.sleep(1)
                    run = instance.get_run_by_id(run.run_id)
                assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
            assert counts(instance, ["fine_tuned_model"]) == {"fine_tuned_model": before["fine_tuned_model"]}

            # "Materialize" the fine-tune with a launchpad override of one config key.
            override = {"resources": {"settings": {"config": {"overrides": {"training.max_steps": "2"}}}}}
            status, errors = ui.materialize(["fine_tuned_model"], run_config=override)
            assert status == "SUCCESS", errors
            latest = training_runs(home)[-1]
            assert latest.data.params["training.max_steps"] == "2"  # the effective config reached MLflow
            assert "training.max_steps=2" in latest.info.run_name
            # The UI's run's output, as Dagster recorded it.
            lineage = json.loads((output(instance, "fine_tuned_model") / "lineage.json").read_text())
            assert lineage["config"]["training.max_steps"] == 2

            # Ctrl-C, as a terminal sends it to `tunegraph ui` (SIGTERM from a supervisor alike).
            stopped = time.time()
            proc.send_signal(signal.SIGTERM)
            while processes_of(home) and time.time() - stopped < 10:
                time.sleep(0.2)
            assert processes_of(home) == [], "processes left 10 s after SIGTERM"
            assert proc.wait(timeout=1) == 0
