"""A kill anywhere leaves downstream on what Dagster recorded and the gates passed.

`tunegraph run` (the real CLI, in a process group of its own, its training process included) is
SIGKILLed at 20 seeded moments: a few tenths of a second to a few seconds after a step of the
data stages, the base model, the fine-tune or the evaluation starts, so kills fall at step
boundaries and inside writes. After each kill, every input any step ever loaded must be a
materialisation Dagster recorded for that asset, behind passed blocking checks, and the current
output of every data asset must hash to the data version Dagster recorded for it. Then `tunegraph
run` finishes, and the state equals a clean run's: the same data versions and one model version.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import TINY_CONFIG, instance_at, write_example_shards

from resources.outputs import READS, latest_recorded
from resources.tracking import MlflowTracking
from stages.content import content_hash

TUNEGRAPH = Path(sys.executable).parent / "tunegraph"
KILLS = 20
# Step keys in the order a cold run reaches them (the landing files' runs first).
STEPS = ["raw_corpus", "clean_corpus", "base_model", "deduplicated_corpus", "augmented_corpus",
         "tokenized_dataset", "fine_tuned_model", "model_evaluation"]  # fmt: skip
# What each data asset's recorded data version is the content hash of (see its asset).
CONTENT = {
    "raw_corpus": ["records.parquet", "quarantine.parquet"],
    "clean_corpus": ["records.parquet", "quarantine.parquet"],
    "deduplicated_corpus": [
        "train.parquet",
        "duplicates.parquet",
        "near_duplicates.parquet",
        "contaminated.parquet",
        "eval",
    ],  # fmt: skip
    "augmented_corpus": ["train.parquet"],
    "tokenized_dataset": ["train_blocks.parquet", "eval.parquet"],
}
BLOCKING = {
    "deduplicated_corpus",
    "augmented_corpus",
    "tokenized_dataset",
    "preference_pairs",
    "reward_model",
}


def start_run(home: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)  # each home its own MLflow store (an earlier test may have set one)
    log = (home / f"run-{time.time_ns()}.log").open("w")
    return subprocess.Popen([TUNEGRAPH, "--config", str(TINY_CONFIG), "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def started_steps(instance: dg.DagsterInstance, since: float) -> set[str]:
    runs = instance.get_runs(filters=dg.RunsFilter(created_after=_utc(since)))
    return {r.get_dagster_event().step_key for run in runs
            for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)}  # fmt: skip


def _utc(timestamp: float):  # noqa: ANN202
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def kill_in_step(home: Path, step: str, delay: float) -> str:
    """Start `tunegraph run`; SIGKILL its group `delay` s after `step`, or a later one if `step` is
    already done, starts (the kills progress through the graph). Returns what happened."""
    later = set(STEPS[STEPS.index(step) :])
    started = time.time()
    proc = start_run(home)
    with instance_at(home) as instance:
        while proc.poll() is None and time.time() < started + 300:
            if hit := sorted(later & started_steps(instance, started - 1)):
                time.sleep(delay)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    return f"killed {delay:.2f}s after {step} or a later step started (started: {', '.join(hit)})"
                break
            time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return f"killed after {time.time() - started:.0f}s ({step} never started)"
    return f"finished (rc {proc.returncode}) before the kill planned in {step}"


def assert_reads_were_recorded_and_gated(instance: dg.DagsterInstance) -> int:
    """Every input every step loaded is a recorded materialisation of its asset, and for an asset
    with blocking checks, one they passed on. Returns the number of loads checked."""
    checked = 0
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            if entry.is_dagster_event or READS not in (entry.user_message or ""):
                continue
            asset, ids = entry.user_message.split(READS, 1)[1].split(" ", 2)[1:]
            storage_ids = json.loads(ids)
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=list(storage_ids.values())),
                limit=len(storage_ids),
            ).records
            assert len(records) == len(storage_ids), f"{run.run_id} read an unrecorded {asset}"
            if asset in BLOCKING:
                [record] = records
                assert gates_passed(instance, asset, record), f"{run.run_id} read an ungated {asset}"
            checked += 1
    return checked


def gates_passed(instance: dg.DagsterInstance, asset: str, record) -> bool:  # noqa: ANN001
    """The blocking checks run in the asset's own step: their evaluations are in the same run."""
    evaluations = [
        e.get_dagster_event().asset_check_evaluation_data
        for e in instance.all_logs(record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    mine = [e for e in evaluations if e.asset_key == dg.AssetKey(asset)]
    return bool(mine) and all(e.passed for e in mine)


def assert_outputs_match_their_records(instance: dg.DagsterInstance, partitions: list[str]) -> None:
    for asset, files in CONTENT.items():
        keys = partitions if asset in ("raw_corpus", "clean_corpus") else None
        for partition, entry in latest_recorded(instance, asset, keys).items():
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=[entry.storage_id]), limit=1
            ).records
            recorded = record.asset_materialization.tags["dagster/data_version"]
            assert content_hash(*(entry.folder / f for f in files)) == recorded, (asset, partition)


def data_versions(home: Path) -> dict[str, str]:
    with instance_at(home) as instance:
        partitions = instance.get_dynamic_partitions("landing_files")
        versions = {}
        for asset in CONTENT:
            keys = partitions if asset in ("raw_corpus", "clean_corpus") else None
            for partition, entry in latest_recorded(instance, asset, keys).items():
                [record] = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=[entry.storage_id]),
                    limit=1,
                ).records
                versions[f"{asset}[{partition}]"] = record.asset_materialization.tags["dagster/data_version"]
        return versions


def model_versions(home: Path) -> list[str]:
    client = MlflowTracking(home=str(home)).client()
    return sorted(str(v.version) for v in client.search_model_versions("name = 'tunegraph-tiny'"))


@pytest.mark.slow
def test_twenty_kills_anywhere_never_let_downstream_read_an_unrecorded_or_ungated_output(
    tmp_path, monkeypatch
):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    for home in (clean, faulty):
        home.mkdir()
        write_example_shards(home, shards=2)
    monkeypatch.setenv("DAGSTER_HOME", str(Path(__file__).parents[2]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it in-process
    assert start_run(clean).wait(timeout=900) == 0

    rng = random.Random(27)
    plan = [(STEPS[i * len(STEPS) // KILLS], round(rng.uniform(0.0, 3.0), 2)) for i in range(KILLS)]
    outcomes = []
    for step, delay in plan:
        outcomes.append(kill_in_step(faulty, step, delay))
        with instance_at(faulty) as instance:
            assert_reads_were_recorded_and_gated(instance)
            assert_outputs_match_their_records(instance, instance.get_dynamic_partitions("landing_files"))
    killed = [o for o in outcomes if o.startswith("killed")]
    print("\n".join(outcomes))
    assert len(killed) >= KILLS * 3 // 4, outcomes  # most kills landed inside a run

    assert start_run(faulty).wait(timeout=900) == 0, "the run after the kills did not finish"
    with instance_at(faulty) as instance:
        assert assert_reads_were_recorded_and_gated(instance) > 0
    assert data_versions(faulty) == data_versions(clean)
    # One version each: one registered by a run killed before Dagster recorded it was deleted.
    assert len(model_versions(faulty)) == len(model_versions(clean)) == 1
