"""`tunegraph run` and a "Materialize" from the UI of the same assets, at the same time, 5 times.

Each asset writes a folder of its own run and downstream reads what Dagster recorded, so two runs
of one asset at once can only each record their own output: both finish, or one refuses with a
clear message, and no recorded output is mixed (every recorded folder is its own run's, and its
content is what Dagster recorded).
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
from conftest import TINY_CONFIG, instance_at, write_example_shards
from dagster_ui import dagster_dev
from test_faults import assert_outputs_match_their_records, assert_reads_were_recorded_and_gated

from resources.outputs import latest_recorded
from resources.settings import REPO_ROOT

DATA = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]


def tunegraph_run(home) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(TINY_CONFIG), "run",
                           "--select", ",".join(["raw_corpus", "clean_corpus", "base_model", *DATA])],
                          env={**os.environ, "TUNEGRAPH_HOME": str(home)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def wait_until_started(home, round_: str) -> None:  # noqa: ANN001
    deadline = time.time() + 120
    while time.time() < deadline:
        with instance_at(home) as instance:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"test/round": round_}))
        if runs and runs[0].status != dg.DagsterRunStatus.QUEUED:
            return
        time.sleep(0.2)
    raise AssertionError(f"the UI's run of round {round_} did not start in 2 minutes")


@pytest.mark.slow
def test_tunegraph_run_and_a_ui_materialize_of_the_same_assets_never_mix_outputs(home):
    [shard, *_] = write_example_shards(home, shards=2)
    assert tunegraph_run(home).returncode == 0  # the landing files read, the base model saved
    outcomes = []
    with dagster_dev(home, TINY_CONFIG) as ui:
        for i in range(5):
            with shard.open("a") as f:  # a data fix each round: both have the whole chain to redo
                f.write(
                    f'{{"instruction": "Round {i}?", "output": "The answer to round {i} is a sentence."}}\n'
                )
            with ThreadPoolExecutor(1) as pool:
                from_ui = pool.submit(
                    ui.materialize, DATA, tags={"test/launched": "ui", "test/round": str(i)}
                )
                wait_until_started(home, str(i))  # the UI's run is queued first: start the CLI beside it
                cli = tunegraph_run(home)
                status, errors = from_ui.result()
            assert cli.returncode == 0 or "may not run" in cli.stdout + cli.stderr, cli.stdout + cli.stderr
            assert status == "SUCCESS" or all(
                "may not run" in e or "materialised again" in e for e in errors
            ), errors
            with instance_at(home) as instance:
                for asset in DATA:
                    for entry in latest_recorded(instance, asset).values():
                        assert entry.folder.name == entry.run_id, f"{asset}: a folder of another run"
                assert_outputs_match_their_records(instance, instance.get_dynamic_partitions("landing_files"))
                assert_reads_were_recorded_and_gated(instance)
            outcomes.append((cli.returncode, status, errors[:1]))
    print(outcomes)
    # They really ran at the same time: UI runs overlapped runs of `tunegraph run` (a round whose CLI
    # run started only as the UI's ended still held every check above).
    with instance_at(home) as instance:
        records = [instance.get_run_record_by_id(r.run_id) for r in instance.get_runs()]
    ui_runs = [r for r in records if r.dagster_run.tags.get("test/launched") == "ui"]
    cli_runs = [r for r in records if r.dagster_run.tags.get("tunegraph/source") == "cli" and r.start_time]
    assert len(ui_runs) == 5
    overlapping = [
        u for u in ui_runs if any(c.start_time < u.end_time and u.start_time < c.end_time for c in cli_runs)
    ]
    print(f"{len(overlapping)} of 5 UI runs overlapped a CLI run")
    assert len(overlapping) >= 3, outcomes
