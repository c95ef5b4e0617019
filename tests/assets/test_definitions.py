"""The code location loads and holds the graph DESIGN.md promises."""

import json
import subprocess
import sys

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
        "preference_pairs": "preference",
        "preference_model": "preference",
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
    assert {
        "accounting_holds",
        "no_eval_contamination",
        "enough_examples",
        "no_residual_pii",
        "blocks_have_labels",
    } <= names
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


GPU_JOB = """
import json, os, sys, time
import dagster as dg

@dg.asset(pool="gpu")
def holds_the_gpu() -> None:
    start = time.time()
    time.sleep(2)
    print(json.dumps([start, time.time()]), file=open(sys.argv[1], "w"))

with dg.DagsterInstance.get() as instance:
    assert dg.materialize([holds_the_gpu], instance=instance).success
"""


def test_two_runs_never_hold_the_gpu_pool_at_once(home, instance, tmp_path):
    """The instance of dagster.yaml limits pool `gpu` to one step at a time, across processes."""
    from assets.model import fine_tuned_model

    assert fine_tuned_model.op.pool == "gpu"
    script = tmp_path / "gpu_job.py"
    script.write_text(GPU_JOB)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{i}.json")]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    (a_start, a_end), (b_start, b_end) = sorted(
        json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)
    )
    assert b_start >= a_end  # the second waited for the first to free the slot
