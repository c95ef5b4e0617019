"""Dagster's stale status is the one truth: what it reports is exactly what `tunegraph run` redoes."""

from conftest import launch, materialisations, unsynced


def test_reingesting_an_unchanged_file_leaves_everything_downstream_synced(prepared_home, instance, settings):
    # The data template holds the data assets; a file read and cleaned again from the same bytes
    # (as the UI's "Materialize" on its partition does) gets the same content versions.
    before = materialisations(instance)
    result = launch(instance, settings, ["raw_corpus", "clean_corpus"], partition_key="stdlib-00.jsonl")
    assert result.success
    assert materialisations(instance)["clean_corpus"] == before["clean_corpus"] + 1
    stale = unsynced(instance)
    assert "deduplicated_corpus" not in stale and "augmented_corpus" not in stale
    assert {key.split("[")[0] for key in stale} == {
        "fine_tuned_model",
        "base_prompt_evaluation",  # each variant's partition: base_prompt_evaluation[zero_shot], ...
        "fine_tuned_prompt_evaluation",
        "prompt_search",
        "model_evaluation",
        "preference_pairs",
        "reward_model",
        "preference_model",
        "gguf_model",
    }  # never run
    assert {cause for causes in stale.values() for cause in causes} == {"never materialised"}
