"""The graph's sources, observed by content: landing files, preference files, the pipeline YAML.

Dagster decides what is stale from data versions. These three sources give it the versions of
what users change by hand:
- `landing_file[key]`: each landing file's content hash (`absent` once deleted, so its records
  leave the training set through the same path as an edit);
- `preference_files`: the files in landing/preferences/, for the DPO stage;
- `pipeline_config[key]`: each config key's value; an asset depends on exactly the keys it reads
  (`reads_config(...)` next to its code), so a change makes only those assets stale, and the UI
  names the key as the cause;
- `prompt_variant[name]`: each prompt variant's text (its hash), so editing one variant makes
  exactly its prompt-evaluation partitions stale. The variants' partition keys follow the config
  the instance has seen (`sync_prompt_partitions`).

`source_changes` compares the files and the YAML with the latest observations recorded in the
instance; `tunegraph run` and the landing sensor both call it, so they agree on what changed.
"""

import hashlib
import json
import warnings
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from assets.partitions import landing_files, prompt_variants, prompts_by_model
from assets.versions import latest_data_version
from resources.settings import Paths, TunegraphSettings
from stages.config import PipelineConfig
from stages.content import file_hash
from stages.prompts import variant_hash

# Observable source assets are what Dagster offers for versioned external data; the API is marked beta.
warnings.filterwarnings("ignore", message="Function `observable_source_asset` is currently in beta")

ABSENT = "absent"  # the version of a landing file that was deleted

# Every config key some asset reads (dotted YAML paths). A key is a whole section or one field;
# `tests/unit/test_sources.py` checks that each exists and that every setting is covered.
CONFIG_KEYS = (
    "corpus",
    "data.augmentation",
    "data.block_size",
    "data.cleaning",
    "data.decontamination",
    "data.eval_files",
    "data.eval_fraction",
    "data.max_dropped_share",
    "data.max_duplicate_rate",
    "data.max_train_examples",
    "data.near_dedup",
    "data.seed",
    "evaluation",
    "evaluation.max_new_tokens",
    "evaluation.repetition_penalty",
    "export",
    "evaluation.max_examples",
    "model",
    "model.dtype",
    "preference",
    # What the pairs and the reward model read of it, so that an RL or DPO setting retrains neither.
    "preference.enabled",
    "preference.method",
    "preference.synthetic",
    "preference.synthetic_examples",
    "preference.synthetic_max_rouge_l",
    "preference.min_pairs",
    "preference.weights",
    "preference.reward_model",
    "preference.reward_model.heldout_fraction",
    "prompt_search",
    "tracking",
    "training",
    "training.precision",
)
config_keys = dg.StaticPartitionsDefinition(list(CONFIG_KEYS))


@dg.observable_source_asset(
    group_name="sources",
    partitions_def=landing_files,
    description="One file in $TUNEGRAPH_HOME/landing, versioned by its content hash ('absent' once deleted).",
)
def landing_file(
    context: dg.AssetExecutionContext, settings: TunegraphSettings
) -> dg.DataVersionsByPartition:
    keys = context.instance.get_dynamic_partitions(landing_files.name)
    return dg.DataVersionsByPartition(
        landing_versions(settings.paths(), keys, settings.config().corpus.format)
    )


@dg.observable_source_asset(
    group_name="sources",
    description="The preference pairs in landing/preferences/ (names and content hashes), read by preference_pairs.",
)
def preference_files(settings: TunegraphSettings) -> dg.DataVersion:
    return dg.DataVersion(preference_version(settings.paths()))


@dg.observable_source_asset(
    group_name="sources",
    partitions_def=config_keys,
    description="The pipeline YAML, one partition per config key; an asset depends on the keys it reads.",
)
def pipeline_config(settings: TunegraphSettings) -> dg.DataVersionsByPartition:
    return dg.DataVersionsByPartition(config_versions(settings))


@dg.observable_source_asset(
    group_name="sources",
    partitions_def=prompt_variants,
    description="Each prompt variant of the pipeline YAML (prompts:), versioned by its text's hash.",
)
def prompt_variant(settings: TunegraphSettings) -> dg.DataVersionsByPartition:
    return dg.DataVersionsByPartition(variant_versions(settings.config()))


SOURCES = [landing_file, preference_files, pipeline_config, prompt_variant]


def variant_versions(cfg: PipelineConfig) -> dict[str, str]:
    return {v.name: variant_hash(v) for v in cfg.prompts}


def prompt_partitions(cfg: PipelineConfig) -> dict[str, list[str]]:
    """The partition keys each prompt partitions definition should hold for this config."""
    keys = {prompt_variants.name: [v.name for v in cfg.prompts]}
    for kind, partitions in prompts_by_model.items():
        keys[partitions.name] = [v.name for v in cfg.prompts if kind in v.models]
    return keys


def sync_prompt_partitions(instance: dg.DagsterInstance, cfg: PipelineConfig) -> list[str]:
    """Add the variants new to the config as partitions and delete those gone; returns what changed."""
    changed = []
    for name, wanted in prompt_partitions(cfg).items():
        have = instance.get_dynamic_partitions(name)
        new = [k for k in wanted if k not in have]
        if new:
            instance.add_dynamic_partitions(name, new)
            changed += [f"{name}+{k}" for k in new]
        for key in sorted(set(have) - set(wanted)):
            instance.delete_dynamic_partition(name, key)
            changed.append(f"{name}-{key}")
    return changed


def reads_config(*keys: str) -> dg.AssetDep:
    """The dependency of an asset on the config keys it reads: a change to one makes it stale."""
    unknown = sorted(set(keys) - set(CONFIG_KEYS))
    assert not unknown, f"config keys {unknown} are not in CONFIG_KEYS (assets/sources.py): add them there"
    return dg.AssetDep(pipeline_config, partition_mapping=dg.SpecificPartitionsPartitionMapping(list(keys)))


def landing_versions(paths: Paths, partitions: list[str], configured_format: str) -> dict[str, str]:
    """Content hash of every landing file, and ABSENT for partitions whose file is gone."""
    present = set(paths.landing_keys(configured_format))
    return {key: file_hash(paths.landing / key) if key in present else ABSENT
            for key in sorted(present | set(partitions))}  # fmt: skip


def preference_version(paths: Paths) -> str:
    files = {p.relative_to(paths.landing).as_posix(): file_hash(p) for p in paths.preference_files()}
    return _digest(files)


def config_versions(settings: TunegraphSettings) -> dict[str, str]:
    """A version per config key; `data.eval_files` also covers the content of the files it names."""
    cfg = settings.config()
    versions = {key: cfg.section_hash(key) for key in CONFIG_KEYS}
    eval_files = [settings.eval_file(name) for name in cfg.data.eval_files]
    versions["data.eval_files"] = _digest(
        [versions["data.eval_files"], *[file_hash(p) if p.is_file() else ABSENT for p in eval_files]]
    )
    return versions


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SourceChanges:
    """What differs between the sources on disk and their latest observations in the instance."""

    files: list[str]  # landing files present now (partition keys)
    new_partitions: list[str]  # landing files without a partition yet
    changed_files: dict[str, str] = field(default_factory=dict)  # partition -> new version (maybe ABSENT)
    observations: list[dg.AssetObservation] = field(default_factory=list)

    @property
    def removed_files(self) -> list[str]:
        return sorted(k for k, v in self.changed_files.items() if v == ABSENT)


def source_changes(instance: dg.DagsterInstance, settings: TunegraphSettings) -> SourceChanges:
    """Observations to record for every source whose version differs from the latest one observed.

    The caller records them: `tunegraph run` right away, the sensor through its SensorResult.
    The prompt variants' partition keys are brought in line with the config here (an observation
    needs its partition to exist): adding a key changes no version, so nothing is marked stale
    by it before the observation is recorded.
    """
    paths, cfg = settings.paths(), settings.config()
    partitions = instance.get_dynamic_partitions(landing_files.name)
    files = paths.landing_keys(cfg.corpus.format)
    changes = SourceChanges(files=files, new_partitions=sorted(set(files) - set(partitions)))
    versions = landing_versions(paths, partitions, cfg.corpus.format)
    changes.changed_files = _changed(instance, landing_file.key, versions)
    for key, version in changes.changed_files.items():
        changes.observations.append(_observation(landing_file.key, version, key))
    # The variants' partitions first: an observation of a partition that does not exist is refused.
    sync_prompt_partitions(instance, cfg)
    changes.observations += config_observations(instance, settings)
    current = preference_version(paths)
    if latest_data_version(instance, preference_files.key, source=True) != current:
        changes.observations.append(_observation(preference_files.key, current))
    return changes


def config_observations(
    instance: dg.DagsterInstance, settings: TunegraphSettings
) -> list[dg.AssetObservation]:
    """Observations of the config keys whose version differs from the latest one recorded."""
    changed = _changed(instance, pipeline_config.key, config_versions(settings))
    variants = _changed(instance, prompt_variant.key, variant_versions(settings.config()))
    return [
        *(_observation(pipeline_config.key, version, key) for key, version in changed.items()),
        *(_observation(prompt_variant.key, version, key) for key, version in variants.items()),
    ]


def record_config(instance: dg.DagsterInstance, settings: TunegraphSettings) -> None:
    """Record the effective config (YAML and run overrides) as this run starts."""
    sync_prompt_partitions(instance, settings.config())
    for observation in config_observations(instance, settings):
        instance.report_runless_asset_event(observation)


def record(instance: dg.DagsterInstance, changes: SourceChanges) -> None:
    """Register new landing files as partitions and record the observations (outside any run)."""
    if changes.new_partitions:
        instance.add_dynamic_partitions(landing_files.name, changes.new_partitions)
    for observation in changes.observations:
        instance.report_runless_asset_event(observation)


def recorded_versions(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> dict[str, str]:
    """The version each partition of a source was last observed at (absent: never observed)."""
    latest = instance.event_log_storage.get_latest_tags_by_partition(
        key, dg.DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], list(partitions)
    )
    return {k: tags[DATA_VERSION_TAG] for k, tags in latest.items() if DATA_VERSION_TAG in tags}


def _changed(instance: dg.DagsterInstance, key: dg.AssetKey, versions: dict[str, str]) -> dict[str, str]:
    latest = recorded_versions(instance, key, list(versions))
    return {k: v for k, v in versions.items() if latest.get(k) != v}


def _observation(key: dg.AssetKey, version: str, partition: str | None = None) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=key, partition=partition, tags={DATA_VERSION_TAG: version})
