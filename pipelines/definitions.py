"""The Dagster code location: `dagster dev` (or `tunegraph ui`) loads `defs` from here.

Resources read `$TUNEGRAPH_HOME` (state folder, default ./data) and `$TUNEGRAPH_CONFIG` (the
pipeline YAML, default configs/default.yaml) when the code location loads.
"""

from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

from assets.augment import augmented_corpus
from assets.corpus import clean_corpus, raw_corpus
from assets.dedup import deduplicated_corpus
from assets.evaluation import candidate_promoted, generations_stop_at_eos, model_evaluation
from assets.export import gguf_model
from assets.gates import gates_through
from assets.model import base_model, fine_tuned_model
from assets.partitions import landing_files
from assets.preference import preference_model, preference_pairs
from assets.prompts import base_prompt_evaluation, fine_tuned_prompt_evaluation, prompt_search
from assets.reward import reward_model
from assets.sources import SOURCES
from assets.tokenize import tokenized_dataset
from pipelines.sensors import build_landing_sensor, build_retrain_schedule
from resources.outputs import RecordedOutputs
from resources.settings import TunegraphSettings, default_config_path, default_home
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages.config import ConfigError, ScheduleConfig, load_config

__all__ = ["ASSETS", "ASSET_CHECKS", "SOURCES", "defs", "landing_files", "resources"]

PARTITIONED_ASSETS = [raw_corpus, clean_corpus]
# Partitioned by prompt variant (one partition per variant and model kind): a job holds assets of
# one partitions definition, so these run in runs of their own (`tunegraph run` plans them).
PROMPT_ASSETS = [base_prompt_evaluation, fine_tuned_prompt_evaluation]
GLOBAL_ASSETS = [
    base_model,
    deduplicated_corpus,
    augmented_corpus,
    tokenized_dataset,
    fine_tuned_model,
    preference_pairs,
    reward_model,
    preference_model,
    prompt_search,
    model_evaluation,
    gguf_model,
]
ASSETS = [*PARTITIONED_ASSETS, *PROMPT_ASSETS, *GLOBAL_ASSETS]
ASSET_CHECKS = [
    candidate_promoted,
    generations_stop_at_eos,
]

ingest_job = dg.define_asset_job(
    "ingest_landing_file",
    selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
    description="Read and clean one landing file (one partition).",
    # Its two steps run one after the other, so in the run's own process: a step process of its
    # own re-imports the code location first. From run start to raw_corpus recorded: 7-18 s with
    # step processes, 0.2-0.5 s in-process (tests/e2e/test_landing_changes.py, 2 busy cores).
    executor_def=dg.in_process_executor,
)
# Without model_evaluation and what follows it: they read the per-variant prompt partitions, which a run
# of this job cannot hold (one partitions definition a run); `tunegraph run` scores them, then evaluates.
AFTER_PROMPTS = ["model_evaluation", "gguf_model"]
train_job = dg.define_asset_job(
    "train_pipeline",
    selection=dg.AssetSelection.assets(
        *(a for a in GLOBAL_ASSETS if a.key.to_user_string() not in AFTER_PROMPTS)
    ),
    description="Dedup, augment, tokenise, search prompts and fine-tune from the cleaned landing files; then "
    "`tunegraph run` (or Materialize) scores the prompt partitions and runs model_evaluation.",
)


# For each asset, the blocking checks that must have passed before anything reads its output:
# the IO manager needs the whole graph's, and a run's own graph holds only the checks it selected.
GATES = gates_through(AssetGraph.from_assets([*SOURCES, *ASSETS, *ASSET_CHECKS]))


def resources(home: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    home = home or str(default_home())
    return {
        "settings": TunegraphSettings(home=home, config_path=config_path or str(default_config_path())),
        "mlflow_tracking": MlflowTracking(home=home),
        "launcher": TrainingLauncher(),
        "io_manager": RecordedOutputs(GATES),
    }


def _retrain_cron() -> str:
    try:
        return load_config(default_config_path()).schedule.retrain_cron
    except ConfigError:  # the code location still loads; `tunegraph run` reports the error
        return ScheduleConfig().retrain_cron


# Declarative automation (EAGER_BEHIND_GATES on the data assets) is evaluated by this sensor; on
# by default, so the data assets follow a new landing file without a click.
automation = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)

defs = dg.Definitions(
    assets=[*SOURCES, *ASSETS],
    asset_checks=ASSET_CHECKS,
    jobs=[ingest_job, train_job],
    sensors=[build_landing_sensor(ingest_job), automation],
    # The schedule targets the per-file assets too: it reads stale landing files nobody is reading.
    schedules=[
        build_retrain_schedule(dg.AssetSelection.assets(*PARTITIONED_ASSETS, *GLOBAL_ASSETS), _retrain_cron())
    ],
    resources=resources(),
)
