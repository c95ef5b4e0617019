"""When things run without a click: the landing-folder sensor and the retrain schedule.

The sensor records what changed in the sources (`assets.sources.source_changes`, the same
function `tunegraph run` calls): new landing files become partitions, and every observed change
of a file's content (a return to earlier content and a deletion included, each time) gets one
ingest run. It keeps no cursor: the instance's observations are the record, so files `tunegraph
run` already processed are never requested again. Downstream, declarative automation brings the
data assets up to date. The schedule reads what the sensor left stale (a failed or lost ingest
run, a partition made stale by code or config) and nobody is reading, and requests it; once every
landing file is read, it retrains when Dagster reports the model stale.
"""

from typing import Any

import dagster as dg
from dagster._core.storage.tags import PARTITION_NAME_TAG

from assets.partitions import landing_files
from assets.sources import landing_file, source_changes
from pipelines.staleness import read_state
from resources.settings import TunegraphSettings
from stages.plan import Plan, plan_run, retrain, unread_partitions

RETRAINED = "fine_tuned_model"
# Runs that will still read what they target; CANCELING ones will not.
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_landing_sensor(job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="New or changed files in $TUNEGRAPH_HOME/landing become partitions and are read and cleaned.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, settings: TunegraphSettings) -> dg.SensorResult:
        changes = source_changes(context.instance, settings)
        if changes.removed_files:
            context.log.info(
                f"landing files removed: {changes.removed_files}; their records leave the training set"
            )
        previous = context.instance.event_log_storage.get_latest_storage_id_by_partition(
            landing_file.key, dg.DagsterEventType.ASSET_OBSERVATION, set(changes.changed_files)
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    partition_key=key,
                    run_key=observation_run_key(key, version, previous.get(key)),
                    tags={"tunegraph/content_hash": version},
                )
                for key, version in sorted(changes.changed_files.items())
            ],
            dynamic_partitions_requests=(
                [landing_files.build_add_request(changes.new_partitions)] if changes.new_partitions else []
            ),
            asset_events=changes.observations,
        )

    return landing_sensor


def observation_run_key(partition: str, version: str, previous_observation: int | None) -> str:
    """The run key of one observed change: the file, its new version, and the storage id of the
    observation it replaces.

    Dagster skips a run key it has seen before, for ever, so a key of the content alone
    (`file@hash`) never re-reads a file that returns to earlier content or is deleted a second
    time. The replaced observation's id is new with every change (this tick's observation is
    recorded after it, so the next change replaces that one) and is the same when a tick is
    evaluated again before its observation is recorded: a retried tick does not request twice.
    """
    return f"{partition}@{version}/after-{previous_observation or 'none'}"


def read_plan(instance: dg.DagsterInstance, asset_graph: Any) -> Plan:
    """What `tunegraph run` would materialise now, read from the instance."""
    partitions = instance.get_dynamic_partitions(landing_files.name)
    state = read_state(instance, asset_graph, partitions)
    return plan_run(state.graph, state.stale, partitions, state.failed_gates)


def retrain_decision(instance: dg.DagsterInstance, asset_graph: Any) -> tuple[list[str], str]:
    """(assets to materialise, why), read from the instance; see `stages.plan.retrain`."""
    return retrain(read_plan(instance, asset_graph), RETRAINED)


def partitions_being_read(instance: dg.DagsterInstance) -> set[str]:
    """Landing partitions an unfinished run targets (only the per-file assets are partitioned)."""
    runs = instance.get_runs(dg.RunsFilter(statuses=UNFINISHED))
    return {run.tags[PARTITION_NAME_TAG] for run in runs if PARTITION_NAME_TAG in run.tags}


def build_retrain_schedule(target: dg.AssetSelection, cron: str) -> dg.ScheduleDefinition:
    """The schedule; `target` holds the per-file assets (which it ingests) and the training ones."""

    @dg.schedule(
        name="retrain_when_data_changed",
        target=target,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Read landing files nobody is reading yet, else retrain (fine-tune + evaluate) "
        "when Dagster reports the model stale and the data gates passed.",
    )
    def retrain_when_data_changed(context: dg.ScheduleEvaluationContext):
        plan = read_plan(context.instance, context.repository_def.asset_graph)
        unread = unread_partitions(plan, partitions_being_read(context.instance))
        if unread:
            context.log.info(f"landing files stale and not being read: {', '.join(unread)}; reading them")
            # A key per partition (Dagster requires one when a schedule returns several requests); a
            # schedule's run keys only deduplicate within one scheduled time.
            return [
                dg.RunRequest(
                    partition_key=key,
                    asset_selection=[dg.AssetKey(a) for a in assets],
                    run_key=f"ingest {key}",
                    tags={"tunegraph/trigger": "schedule"},
                )
                for key, assets in unread.items()
            ]
        assets, reason = retrain(plan, RETRAINED)
        if not assets:
            return dg.SkipReason(reason)
        context.log.info(reason)
        return dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in assets],
                             tags={"tunegraph/trigger": "schedule"})  # fmt: skip

    return retrain_when_data_changed
