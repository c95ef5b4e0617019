"""The production instance: Dagster's storage and MLflow's tracking store on PostgreSQL (a real
server, started by the `on_postgres` fixture), switched by the two environment variables a user
sets, with dagster.yaml unchanged. The whole tiny pipeline runs on it, then 16 landing files are
ingested by the daemon four runs at a time with the multiprocess executor, automation follows
with the cross-file assets, and the rest up to a fine-tune is launched from the UI."""

import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import TINY_CONFIG, training_runs, write_example_shards
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from dagster_ui import dagster_dev

from pipelines.cli import configure_environment
from pipelines.report import build_report
from pipelines.runner import Runner
from resources.settings import REPO_ROOT, TunegraphSettings
from resources.tracking import MlflowTracking

DATA = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]
UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]  # fmt: skip
# The executor's own first engine event: an ingest run reads and cleans one file in one process
# (pipelines/definitions.py; step processes re-imported the code location, 7-18 s a run).
IN_PROCESS = "Executing steps in process"


def landing_records(home: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (home / "landing").glob("*.jsonl"))


def assert_accounting_holds(home: Path, instance: dg.DagsterInstance) -> None:
    """Every landing record is either kept or dropped with a reason, and the check agrees."""
    data = build_report(instance)["data"]
    assert data["documents_in"] == landing_records(home) > 0
    assert data["documents_in"] == data["documents_kept"] + sum(data["dropped"].values()), data
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("deduplicated_corpus"), "accounting_holds")
    )
    assert check is not None and check.event.asset_check_evaluation.passed


def assert_on_postgres(home: Path, instance: dg.DagsterInstance, urls: dict[str, str]) -> None:
    """The stores are the Postgres databases, and nothing went to the SQLite defaults."""
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert MlflowTracking(home=str(home)).uri() == urls["mlflow"]
    assert not (home / "mlflow" / "mlflow.db").exists()
    assert not list((home / "dagster").glob("**/*.db")), list((home / "dagster").glob("**/*.db"))


@pytest.mark.slow
def test_the_tiny_pipeline_runs_on_postgres(home, on_postgres):
    write_example_shards(home, shards=2)
    configure_environment(home, TINY_CONFIG)
    settings = TunegraphSettings(home=str(home), config_path=str(TINY_CONFIG))
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        record = Runner(settings, instance).run()
        assert record["status"] == "success", record["errors"]
        assert_on_postgres(home, instance, on_postgres)
        for asset in [*DATA, "fine_tuned_model", "model_evaluation"]:
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
        assert_accounting_holds(home, instance)
        # Dagster reads its stale status back from Postgres: a second run has nothing to do.
        assert Runner(settings, instance).run()["status"] == "up_to_date"

    runs = training_runs(home)
    assert [r.info.status for r in runs] == ["FINISHED"]
    client = MlflowTracking(home=str(home)).client()
    champion = client.get_model_version_by_alias("tunegraph-tiny", "champion")
    assert champion.run_id == runs[0].info.run_id


def max_overlap(records: list) -> int:  # noqa: ANN001
    """The most runs that were in progress at the same moment."""
    events = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_the_daemon_ingests_sixteen_files_four_runs_at_a_time(home, on_postgres):
    write_example_shards(home, shards=16)
    # dagster_dev configures the environment as the CLI does, so the instance here is the daemon's.
    with dagster_dev(home, TINY_CONFIG) as ui, dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        assert_on_postgres(home, instance, on_postgres)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        ingest = dg.RunsFilter(tags={"dagster/sensor_name": "landing_sensor"})
        # Automation follows the files with deduplicated_corpus, augmented_corpus (its gates run in
        # its own step) and, the gates passed, tokenized_dataset.
        augmented, tokenized = dg.AssetKey("augmented_corpus"), dg.AssetKey("tokenized_dataset")
        deadline = time.time() + 600
        while True:
            ingested = instance.get_run_records(ingest)
            latest = instance.get_latest_materialization_event(augmented)
            followed = instance.get_latest_materialization_event(tokenized)
            settled = (
                len(ingested) == 16
                and all(r.dagster_run.is_finished for r in ingested)
                and not instance.get_runs(dg.RunsFilter(statuses=UNFINISHED))
                # automation followed the last file, not only the first ones
                and latest is not None
                and latest.timestamp > max(r.end_time for r in ingested)
                and followed is not None
                and followed.timestamp > latest.timestamp
            )
            if settled:
                break
            assert time.time() < deadline, (
                f"not settled in 10 min: {len(ingested)} ingest runs, "
                f"{[r.dagster_run.status.value for r in ingested]}, augmented_corpus {latest is not None}, "
                f"tokenized_dataset {followed is not None}"
            )
            time.sleep(2)

        assert sorted(r.dagster_run.tags["dagster/partition"] for r in ingested) == [
            f"stdlib-{i:02d}.jsonl" for i in range(16)
        ]
        runs = instance.get_runs()
        failed = [
            (r.run_id, r.job_name, r.status.value) for r in runs if r.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert failed == [], failed
        # The queue never ran more than four at once (each reads and cleans its file in about a second
        # in one process now, so they seldom overlap at all).
        assert 1 <= max_overlap(ingested) <= 4, max_overlap(ingested)
        for record in ingested:
            logs = [e.message for e in instance.all_logs(record.dagster_run.run_id)]
            assert any(m.startswith(IN_PROCESS) for m in logs), record.dagster_run.run_id
        assert_accounting_holds(home, instance)

        # Then the fine-tune, as the UI's "Materialize" launches it (automation never trains).
        assert instance.get_latest_materialization_event(dg.AssetKey("base_model"))  # automation's too
        status, errors = ui.materialize(["fine_tuned_model"])
        assert status == "SUCCESS", errors
        # Automation may follow the fine-tune (preference_pairs, off in this config): let it finish.
        deadline = time.time() + 180
        while instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
            assert time.time() < deadline, "automated runs still unfinished 3 min after the fine-tune"
            time.sleep(2)
        runs = instance.get_runs()
        assert [(r.run_id, r.status.value) for r in runs if r.status != dg.DagsterRunStatus.SUCCESS] == []

    assert [r.info.status for r in training_runs(home)] == ["FINISHED"]  # one per fine-tune
