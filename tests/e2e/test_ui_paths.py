"""The paths users take in the Dagster UI, on a real `dagster dev`: a run launched from the UI
stops at a failed gate, and the UI and `tunegraph run` agree on what is stale."""

import os
import subprocess
import sys

import dagster as dg
import pytest
from conftest import TINY_CONFIG, WHAT_TO_FIX, contaminated, write_example_shards
from dagster_ui import dagster_dev

from resources.settings import REPO_ROOT
from resources.tracking import MlflowTracking


def tunegraph_run(home, config) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(config), "run"],
                          env={**os.environ, "TUNEGRAPH_HOME": str(home)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.mark.slow
def test_materialize_in_the_ui_stops_at_a_failed_gate(home, tmp_path):
    settings = contaminated(home, tmp_path)
    assert tunegraph_run(home, settings.config_path).returncode == 1
    with dagster_dev(home, settings.config_path) as ui:
        stale = ui.stale_status()
        assert stale["augmented_corpus"] == "FRESH" and stale["fine_tuned_model"] == "MISSING"

        # "Materialize" on the fine-tune alone.
        status, errors = ui.materialize(["fine_tuned_model"])
        assert status == "FAILURE"
        assert any(f"fine_tuned_model may not run: augmented_corpus:no_eval_contamination failed: {WHAT_TO_FIX}" in e
                   for e in errors), errors  # fmt: skip

        # "Materialize unsynced": every asset the UI shows as unsynced or missing.
        status, errors = ui.materialize([a for a, s in stale.items() if s != "FRESH"])
        assert status == "FAILURE" and any("tokenized_dataset may not run" in e for e in errors), errors

    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        for asset in ["tokenized_dataset", "fine_tuned_model", "model_evaluation"]:
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is None
    assert MlflowTracking(home=str(home)).client().search_registered_models() == []


@pytest.mark.slow
def test_the_ui_and_tunegraph_run_agree_on_what_is_stale(home):
    write_example_shards(home, shards=2)
    first = tunegraph_run(home, TINY_CONFIG)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    with dagster_dev(home, TINY_CONFIG) as ui:
        assert set(ui.stale_status().values()) == {"FRESH"}  # after `tunegraph run`, every asset synced
        # The UI re-reads and re-cleans an unchanged landing file, and rebuilds two data assets from
        # unchanged inputs: same content, same versions, nothing downstream becomes stale...
        status, errors = ui.materialize(["raw_corpus", "clean_corpus"], partition="stdlib-00.jsonl")
        assert status == "SUCCESS", errors
        status, errors = ui.materialize(["deduplicated_corpus", "augmented_corpus"])
        assert status == "SUCCESS", errors
        assert set(ui.stale_status().values()) == {"FRESH"}
    # ...and `tunegraph run` after the UI's materialisation redoes nothing.
    again = tunegraph_run(home, TINY_CONFIG)
    assert again.returncode == 0 and "everything is up to date" in again.stdout, again.stdout[-3000:]
