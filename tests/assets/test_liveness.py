"""What a killed process held is released by the next run, also when the killed process's pid now
belongs to another process (a container restart, pid reuse): `tunegraph run`'s Dagster run and
`gpu` pool slot, and a fine-tune's MLflow run."""

import os
import uuid

import dagster as dg

from pipelines.runner import Runner
from resources.tracking import MlflowTracking
from stages.processes import host, started


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags=tags))  # fmt: skip
    return run_id


def test_a_run_whose_pid_was_reused_is_released_and_a_live_one_is_not(instance, settings):
    runner = Runner(settings, instance)
    live = _started_run(instance, runner.tags)  # this very process: alive
    # The same host and pid, but the process that holds the pid started an hour after the recorded one.
    earlier = str(float(runner.tags["tunegraph/pid_started"]) - 3600)
    reused = _started_run(instance, {**runner.tags, "tunegraph/pid_started": earlier})
    instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
    assert instance.event_log_storage.claim_concurrency_slot("gpu", reused, "fine_tuned_model").is_claimed
    assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == {reused}

    assert runner.release_dead_runs() == [reused]

    assert instance.get_run_by_id(reused).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED
    assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()
    assert runner.release_dead_runs() == []  # nothing else to release


def test_an_mlflow_run_whose_pid_was_reused_is_ended_and_a_live_one_is_not(home):
    tracking = MlflowTracking(home=str(home))
    experiment, client = tracking.experiment_id("liveness"), tracking.client()
    owner = {"tunegraph.host": host(), "tunegraph.pid": str(os.getpid())}
    live = client.create_run(experiment, tags={**owner, "tunegraph.pid_started": str(started())})
    reused = client.create_run(experiment, tags={**owner, "tunegraph.pid_started": str(started() - 3600)})

    assert tracking.end_orphaned_runs(experiment) == [reused.info.run_id]

    assert client.get_run(reused.info.run_id).info.status == "KILLED"
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
