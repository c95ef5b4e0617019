"""Code versions follow the code: an asset's version hashes the source of the modules it runs."""

import json
from pathlib import Path

import pytest
from asset_code import RUNS, asset_version, covered, edited

from pipelines.definitions import defs
from stages.code_version import ROOT, closure, code_version
from stages.decontamination import contamination
from stages.scan_cache import Texts

# Every module under stages/, by import name (stages/__init__.py is `stages`).
STAGES_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "stages").rglob("*.py")
)


def test_the_table_holds_what_the_assets_declare():
    graph = defs.resolve_asset_graph()
    declared = {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}
    assert declared == {asset: asset_version(asset) for asset in RUNS}


def test_each_asset_covers_the_code_it_runs_and_no_more():
    assert {"stages.pii", "stages.cleaning", "assets.corpus"} <= set(covered("clean_corpus"))
    # readers redacts the rows it quarantines with pii, so raw_corpus covers it; cleaning runs in clean_corpus.
    assert "stages.pii" in covered("raw_corpus") and "stages.cleaning" not in covered("raw_corpus")
    training = {"stages.train", "stages.launch", "stages.chunked_loss", "stages.packed_attention",
                "stages.checkpoints", "assets.training_run"}  # fmt: skip
    assert training <= set(covered("fine_tuned_model"))
    assert training | {"stages.dpo"} <= set(covered("preference_model"))
    assert training | {"stages.reward", "stages.reward_scoring", "stages.reward_gate"} <= set(
        covered("reward_model")
    )
    for data in (
        "raw_corpus",
        "clean_corpus",
        "deduplicated_corpus",
        "augmented_corpus",
        "tokenized_dataset",
    ):
        assert not training & set(covered(data)), data
    assert {"stages.metrics", "stages.metrics.rouge_l", "stages.promotion"} <= set(
        covered("model_evaluation")
    )
    assert "stages.promotion" not in covered("fine_tuned_model")
    # Only stages/ is followed: an asset module's own imports (other assets, resources) are not.
    assert not any(m.startswith("resources") for asset in RUNS for m in covered(asset))
    assert "assets.dedup" not in covered("augmented_corpus")  # it imports deduplicated_corpus from there


def test_every_stages_module_an_asset_module_imports_is_declared_by_one_of_its_assets():
    for module in {module for module, _ in RUNS.values()}:
        declared = {m for asset, (mod, _) in RUNS.items() if mod == module for m in covered(asset)}
        # Not running code: every asset module imports code_version to compute its versions, and
        # the config's values (stages/config.py's defaults included, and its prompt variants in
        # stages/prompt_config.py) are versioned per key by pipeline_config and per variant by prompt_variant.
        missing = (
            set(closure(module)) - declared - {"stages.code_version", "stages.config", "stages.prompt_config"}
        )
        assert not missing, f"{module} imports {sorted(missing)}, which no code_version of its assets names"


def test_editing_a_stages_module_changes_exactly_the_assets_that_run_it():
    before = {asset: asset_version(asset) for asset in RUNS}
    unused = []
    for module in STAGES_MODULES:
        after = {asset: asset_version(asset, edited(module)) for asset in RUNS}
        changed = {asset for asset in RUNS if after[asset] != before[asset]}
        assert changed == {asset for asset in RUNS if module in covered(asset)}, module
        if not changed:
            unused.append(module)
    # The CLI's example corpus, the run planner and hub uploads run in no asset: editing them changes nothing.
    assert {"stages.example_corpus", "stages.plan", "stages.hub"} <= set(unused)
    assert "stages.pii" not in unused and "stages.chunked_loss" not in unused


def test_editing_an_asset_module_changes_the_assets_it_defines():
    # An asset module's own lines are code too; its sibling assets share the file, so they change together.
    def changed(module: str) -> set[str]:
        return {asset for asset in RUNS if asset_version(asset, edited(module)) != asset_version(asset)}

    assert changed("assets.corpus") == {"raw_corpus", "clean_corpus"}
    assert changed("assets.training_run") == {"fine_tuned_model", "preference_model", "reward_model"}
    assert changed("assets.dataset_card") == {"deduplicated_corpus", "tokenized_dataset"}
    assert changed("resources.settings") == set()


def test_a_version_names_its_modules_and_refuses_unknown_ones():
    pii = code_version("stages.pii")
    assert pii == code_version("stages.pii") != code_version("stages.cleaning")
    assert pii != code_version("stages.pii", read=edited("stages.pii"))
    with pytest.raises(ValueError, match="'stages.no_such_module' is no module of this project"):
        code_version("stages.no_such_module")


def test_the_contamination_cache_is_keyed_by_the_code_that_found_its_verdicts(tmp_path: Path):
    cache = tmp_path / "contamination-clean.json"
    contamination(Texts.of(["one two three four"]), [{"messages": [{"content": "five six seven"}]}], 2, cache)
    assert json.loads(cache.read_text())["salt"].startswith(f"{code_version('stages.decontamination')}:2:")
