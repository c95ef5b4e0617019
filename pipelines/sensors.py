"""When things run without a click: the landing-folder sensor and the retrain schedule.

The sensor records what changed in the sources (`assets.sources.source_changes`, the same
function `tunegraph run` calls): new landing files become partitions, and every file whose
content differs from its latest observation (a deleted one included) gets one ingest run. It
keeps no cursor: the instance's observations are the record, so files `tunegraph run` already
processed are never requested again. Downstream, declarative automation brings the data assets
up to date, and the schedule retrains when Dagster reports the model stale.
"""

from typing import Any

import dagster as dg

from assets.partitions import landing_files
from assets.sources import source_changes
from pipelines.staleness import read_state
from resources.settings import TunegraphSettings
from stages.plan import plan_run, retrain

RETRAINED = "fine_tuned_model"


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
        return dg.SensorResult(
            # The run key carries the content version: the same content is never requested twice.
            run_requests=[
                dg.RunRequest(
                    partition_key=key, run_key=f"{key}@{version}", tags={"tunegraph/content_hash": version}
                )
                for key, version in sorted(changes.changed_files.items())
            ],
            dynamic_partitions_requests=(
                [landing_files.build_add_request(changes.new_partitions)] if changes.new_partitions else []
            ),
            asset_events=changes.observations,
        )

    return landing_sensor


def retrain_decision(instance: dg.DagsterInstance, asset_graph: Any) -> tuple[list[str], str]:
    """(assets to materialise, why), read from the instance; see `stages.plan.retrain`."""
    partitions = instance.get_dynamic_partitions(landing_files.name)
    state = read_state(instance, asset_graph, partitions)
    return retrain(plan_run(state.graph, state.stale, partitions, state.failed_gates), RETRAINED)


def build_retrain_schedule(job: Any, cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="retrain_when_data_changed",
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain (fine-tune + evaluate) when Dagster reports the model stale and the data gates passed.",
    )
    def retrain_when_data_changed(context: dg.ScheduleEvaluationContext):
        assets, reason = retrain_decision(context.instance, context.repository_def.asset_graph)
        if not assets:
            return dg.SkipReason(reason)
        context.log.info(reason)
        return dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in assets],
                             tags={"tunegraph/trigger": "schedule"})  # fmt: skip

    return retrain_when_data_changed
