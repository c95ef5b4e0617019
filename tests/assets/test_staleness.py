"""Dagster's stale status is the one truth: what it reports is exactly what `tunegraph run` redoes."""

import dagster as dg
from conftest import launch, write_config

from assets import sources
from pipelines.definitions import defs
from pipelines.runner import Runner
from pipelines.staleness import read_state
from resources.settings import TunegraphSettings

ASSETS = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset", "base_model",
          "fine_tuned_model", "preference_pairs", "preference_model", "model_evaluation"]  # fmt: skip


def materialisations(instance: dg.DagsterInstance) -> dict[str, int]:
    return {a: len(instance.fetch_materializations(dg.AssetKey(a), limit=1000).records) for a in ASSETS}


def unsynced(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """What the UI marks stale or missing, with Dagster's own causes."""
    return read_state(
        instance, defs.resolve_asset_graph(), instance.get_dynamic_partitions("landing_files")
    ).causes


def test_a_key_read_only_by_the_fine_tune_makes_only_the_model_and_what_follows_it_stale(
    prepared_home, instance, settings, tmp_path
):
    assert Runner(settings, instance).run()["status"] == "success"
    assert unsynced(instance) == {}
    before = materialisations(instance)

    changed = TunegraphSettings(home=str(prepared_home),
                                config_path=str(write_config(tmp_path / "lr.yaml", training={"learning_rate": 5e-4})))  # fmt: skip
    sources.record(
        instance, sources.source_changes(instance, changed)
    )  # what the sensor records on its next tick
    # Read by the fine-tune and by DPO (off here, but in the graph): both, and nothing upstream.
    assert unsynced(instance) == {
        "fine_tuned_model": ["pipeline_config[training] has a new data version"],
        "preference_model": ["pipeline_config[training] has a new data version"],
    }

    record = Runner(changed, instance).run()
    assert record["status"] == "success", record["errors"]
    after = materialisations(instance)
    redone = sorted(a for a in ASSETS if after[a] != before[a])
    assert redone == ["fine_tuned_model", "model_evaluation", "preference_model", "preference_pairs"]
    assert all(after[a] == before[a] + 1 for a in redone)  # once each
    assert unsynced(instance) == {}


def test_reingesting_an_unchanged_file_leaves_everything_downstream_synced(prepared_home, instance, settings):
    # The data template holds the data assets; a file read and cleaned again from the same bytes
    # (as the UI's "Materialize" on its partition does) gets the same content versions.
    before = materialisations(instance)
    result = launch(instance, settings, ["raw_corpus", "clean_corpus"], partition_key="stdlib-00.jsonl")
    assert result.success
    assert materialisations(instance)["clean_corpus"] == before["clean_corpus"] + 1
    stale = unsynced(instance)
    assert "deduplicated_corpus" not in stale and "augmented_corpus" not in stale
    assert set(stale) == {
        "fine_tuned_model",
        "model_evaluation",
        "preference_pairs",
        "preference_model",
    }  # never run
    assert {cause for causes in stale.values() for cause in causes} == {"never materialised"}
