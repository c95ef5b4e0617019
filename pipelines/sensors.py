"""When things run without a click: the landing-folder sensor and the weekly retraining schedule.

The sensor turns each landing file into a partition and requests one ingest run per new or
changed file (the run key carries the content hash, so the same content is never requested
twice); deleted files lose their partition. Downstream, declarative automation brings the data
assets up to date, and the schedule retrains only when the training data changed.
"""

import json
from typing import Any

import dagster as dg

from assets.metadata import file_hash
from assets.partitions import landing_files
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages.tables import read_json


def build_landing_sensor(job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="New or changed files in $TUNEGRAPH_HOME/landing become partitions and are read and cleaned.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, settings: TunegraphSettings) -> dg.SensorResult:
        paths = settings.paths()
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        keys = paths.landing_keys(settings.config().corpus.format)
        hashes = {key: file_hash(paths.landing / key) for key in keys}
        known = set(context.instance.get_dynamic_partitions(landing_files.name))
        requests = [
            dg.RunRequest(
                partition_key=key, run_key=f"{key}@{digest}", tags={"tunegraph/content_hash": digest}
            )
            for key, digest in hashes.items()
            if seen.get(key) != digest
        ]
        new, gone = [k for k in keys if k not in known], sorted(known - set(keys))
        partition_requests = []
        if new:
            partition_requests.append(landing_files.build_add_request(new))
        if gone:
            partition_requests.append(landing_files.build_delete_request(gone))
            context.log.info(f"landing files removed: {gone}; their records leave the next training set")
        context.update_cursor(json.dumps(hashes, sort_keys=True))
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests)

    return landing_sensor


def retrain_decision(settings: TunegraphSettings, instance: dg.DagsterInstance, client) -> str | None:  # noqa: ANN001
    """None if a retrain is due, else why not. Due = the training data changed since the champion
    was trained and the blocking data checks on its inputs passed."""
    paths = settings.paths()
    if not paths.has_latest("tokenized_dataset"):
        return "no tokenized dataset yet: run `tunegraph run` or materialise the data assets first"
    current = read_json(paths.latest("tokenized_dataset") / "summary.json")["content_version"]
    name = settings.config().tracking.registered_model
    champion = None
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        version = client.get_registered_model(name).aliases.get("champion")
        if version is not None:
            champion = client.get_model_version(name, str(version))
    if champion is not None and champion.tags.get("tunegraph.data_version.tokenized_dataset") == current:
        return f"training data unchanged since champion v{champion.version} was trained"
    failed = [key.to_user_string() for key in DATA_GATES if not _passed(instance, key)]
    return f"blocking data checks did not pass: {', '.join(failed)}" if failed else None


def _passed(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> bool:
    record = instance.get_latest_asset_check_evaluation_record(key)
    evaluation = record.event.dagster_event.event_specific_data if record and record.event else None
    return isinstance(evaluation, dg.AssetCheckEvaluation) and evaluation.passed


DATA_GATES = [
    dg.AssetCheckKey(dg.AssetKey("deduplicated_corpus"), "accounting_holds"),
    dg.AssetCheckKey(dg.AssetKey("augmented_corpus"), "no_eval_contamination"),
    dg.AssetCheckKey(dg.AssetKey("augmented_corpus"), "enough_examples"),
    dg.AssetCheckKey(dg.AssetKey("augmented_corpus"), "no_residual_pii"),
    dg.AssetCheckKey(dg.AssetKey("augmented_corpus"), "duplicate_rate"),
    dg.AssetCheckKey(dg.AssetKey("augmented_corpus"), "schema_valid"),
    dg.AssetCheckKey(dg.AssetKey("tokenized_dataset"), "blocks_have_labels"),
]


def build_retrain_schedule(job: Any, cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="retrain_when_data_changed",
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain (fine-tune + evaluate) when the tokenized data changed since the champion was trained.",
    )
    def retrain(
        context: dg.ScheduleEvaluationContext, settings: TunegraphSettings, mlflow_tracking: MlflowTracking
    ):
        reason = retrain_decision(settings, context.instance, mlflow_tracking.client())
        if reason is not None:
            return dg.SkipReason(reason)
        return dg.RunRequest(tags={"tunegraph/trigger": "schedule"})

    return retrain
