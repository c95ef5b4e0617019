"""Editing a stages module marks exactly the assets that run it unsynced, in Dagster's own words."""

import dagster as dg
from asset_code import asset_version, edited
from conftest import write_example_shards

from pipelines import definitions
from pipelines.runner import Runner
from pipelines.staleness import read_state

DATA = ["raw_corpus", "clean_corpus", "deduplicated_corpus"]


def definitions_as_if(read) -> dg.Definitions:  # noqa: ANN001
    """The code location as it would load with the sources `read` returns (versions computed anew)."""
    assets = [
        a.map_asset_specs(
            lambda s: s.replace_attributes(code_version=asset_version(s.key.to_user_string(), read))
        )
        for a in definitions.ASSETS
    ]
    return dg.Definitions(
        assets=[*definitions.SOURCES, *assets],
        asset_checks=definitions.ASSET_CHECKS,
        resources=definitions.resources(),
    )


def test_editing_cleaning_makes_its_assets_unsynced_for_a_new_code_version(home, instance, settings):
    write_example_shards(home, shards=2)
    assert Runner(settings, instance, log=lambda _: None).run(select=DATA)["status"] == "success"
    files = instance.get_dynamic_partitions("landing_files")

    def unsynced(defs: dg.Definitions) -> dict[str, list[str]]:
        causes = read_state(instance, defs.resolve_asset_graph(), files).causes
        return {k: v for k, v in causes.items() if k.split("[")[0] in DATA}

    assert unsynced(definitions.defs) == {}  # as loaded: nothing to redo
    # clean_corpus cleans with it, deduplicated_corpus cleans the eval files with it; raw_corpus does not.
    stale = unsynced(definitions_as_if(edited("stages.cleaning")))
    assert set(stale) == {f"clean_corpus[{f}]" for f in files} | {"deduplicated_corpus"}
    for label, causes in stale.items():
        assert causes and all(c.endswith("has a new code version") for c in causes), (label, causes)
    assert "deduplicated_corpus has a new code version" in stale["deduplicated_corpus"]
    # The train/eval split runs in deduplicated_corpus, not in reading or cleaning a file.
    assert set(unsynced(definitions_as_if(edited("stages.split")))) == {"deduplicated_corpus"}
