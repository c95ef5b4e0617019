"""The code location loads and holds the graph DESIGN.md promises."""

import subprocess

from pipelines.definitions import defs
from resources.settings import REPO_ROOT


def test_definitions_hold_the_graph_in_groups():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {
        "raw_corpus": "data",
        "clean_corpus": "data",
        "deduplicated_corpus": "data",
        "augmented_corpus": "data",
        "tokenized_dataset": "data",
        "base_model": "model",
        "fine_tuned_model": "model",
        "model_evaluation": "evaluation",
    }
    parents = {
        k: {p.to_user_string() for p in graph.get(graph.get(k).key).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    by_name = {k.to_user_string(): v for k, v in parents.items()}
    assert by_name["fine_tuned_model"] == {"tokenized_dataset", "base_model"}
    assert by_name["clean_corpus"] == {"raw_corpus"}
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key} has no code_version"


def test_blocking_checks_guard_training():
    checks = {(c.asset_key.to_user_string(), c.name): c for c in defs.resolve_asset_graph().asset_check_keys}
    names = {name for _, name in checks}
    assert {"no_eval_contamination", "enough_examples", "no_residual_pii", "blocks_have_labels"} <= names
    graph = defs.resolve_asset_graph()
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking, key


def test_dagster_definitions_validate_cli(home, instance):
    # `instance` sets DAGSTER_HOME and the storage variables dagster.yaml reads, as the CLI does.
    result = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
