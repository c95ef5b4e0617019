"""The tracking and instance stores under concurrent runs: SQLite by default, and Postgres.

The Postgres test (slow: `make test-slow` installs the server) runs on a throwaway server that
tests/postgres.py starts, or on the server TUNEGRAPH_TEST_POSTGRES_URL names, whose role must be
allowed to create databases (two scratch databases, dropped afterwards):
    TUNEGRAPH_TEST_POSTGRES_URL=postgresql://user:pass@host:5432/postgres \
        .venv/bin/pytest -m slow tests/assets/test_tracking_store.py
"""

import multiprocessing
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import dagster as dg
import pytest
from mlflow.entities import Metric, Param, RunStatus, RunTag

from resources.tracking import MlflowTracking

WRITERS = 3
STEPS = 300  # individual log_metric calls per run, like a chatty training loop
BATCHES = 3  # log_batch calls of 100 metrics each, like the training subprocess


def _log_one_run(home: str, name: str, start: Barrier) -> None:
    """One writer: what a fine-tune does to the store, started at the same moment as the others."""
    tracking = MlflowTracking(home=home)
    start.wait()  # every process has imported MLflow; now all open the fresh store at once
    client = tracking.client()
    start.wait()  # and all look up (and create) the experiment at once
    run = client.create_run(tracking.experiment_id("concurrent"), run_name=name)
    run_id = run.info.run_id
    client.log_param(run_id, "writer", name)
    for step in range(STEPS):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    now = int(time.time() * 1000)
    for batch in range(BATCHES):
        metrics = [Metric("eval_loss", 0.5, now, batch * 100 + i) for i in range(100)]
        client.log_batch(
            run_id, metrics=metrics, params=[Param(f"batch{batch}", "x")], tags=[RunTag("b", "x")]
        )
    client.set_tag(run_id, "done", "yes")
    client.set_terminated(run_id, "FINISHED")


def test_concurrent_runs_on_a_fresh_sqlite_store_all_finish(home: Path) -> None:
    # Two races in resources/tracking.py that this test caught before their fixes: MLflow migrating a
    # fresh SQLite store in every process at once (8 of 8 runs failed), and experiment_id's
    # lookup-then-create ("Experiment(name=concurrent) already exists"; 7 of 8 runs failed).
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    writers = [
        ctx.Process(target=_log_one_run, args=(str(home), f"writer{i}", start)) for i in range(WRITERS)
    ]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 180
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        if any(w.exitcode not in (None, 0) for w in writers):
            start.abort()  # a writer crashed: free the others from the barrier rather than hang
        time.sleep(0.2)
    for w in writers:
        if w.is_alive():  # past the deadline: do not leave it running
            w.kill()
        w.join()
    assert [w.exitcode for w in writers] == [0] * WRITERS, "a writer failed; its traceback is in stderr"

    tracking = MlflowTracking(home=str(home))
    client = tracking.client()
    runs = client.search_runs([tracking.experiment_id("concurrent")])
    assert sorted(r.data.params["writer"] for r in runs) == [f"writer{i}" for i in range(WRITERS)]
    for run in runs:
        assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)
        assert run.data.tags["done"] == "yes"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(STEPS))
        assert len(client.get_metric_history(run.info.run_id, "eval_loss")) == BATCHES * 100


@pytest.mark.slow
def test_postgres_holds_mlflow_runs_and_dagster_storage(home: Path, postgres_urls: dict[str, str]) -> None:
    tracking = MlflowTracking(home=str(home), tracking_uri=postgres_urls["mlflow"])
    client = tracking.client()
    run = client.create_run(tracking.experiment_id("postgres"))
    for step in range(20):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model("postgres-model")
    version = client.create_model_version(
        "postgres-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(20))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert client.get_model_version("postgres-model", version.version).run_id == run.info.run_id

    import dagster_postgres  # the `postgres` extra; imported here so the SQLite test runs without it

    @dg.asset
    def probe() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    overrides = {"storage": {"postgres": {"postgres_url": postgres_urls["dagster"]}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_storage, dagster_postgres.PostgresRunStorage)
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success
        event = instance.get_latest_materialization_event(dg.AssetKey("probe"))
        assert event.run_id == result.run_id
        assert event.asset_materialization.metadata["rows"].value == 3


def test_activating_one_store_leaves_another_state_folder_its_own(home: Path, tmp_path: Path) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; left set, it would send another state
    folder's MlflowTracking (and every process started after) to this store."""
    import os

    import mlflow

    first, second = MlflowTracking(home=str(home)), MlflowTracking(home=str(tmp_path / "other"))
    first.activate()
    assert mlflow.get_tracking_uri() == first.uri()  # the fluent API uses it
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert second.uri() != first.uri()
