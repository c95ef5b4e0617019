"""Dagster's own commands and `dg` work in a project folder with nothing exported, on the instance
and state folder `tunegraph` uses by default (./data): what a Dagster user types first."""

import os
import shutil
import subprocess

import pytest
from conftest import write_example_shards

from resources.settings import REPO_ROOT

BIN = REPO_ROOT / ".venv" / "bin"


@pytest.mark.slow
def test_dagster_dg_and_tunegraph_share_one_instance_with_nothing_exported(tmp_path):
    root = tmp_path / "project"  # a checkout's root: its config files, no state yet
    root.mkdir()
    for name in ("dagster.yaml", "workspace.yaml", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEGRAPH_", "DAGSTER_", "MLFLOW_"))}

    def run(*command: str, cwd: object = root) -> str:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout + done.stderr

    write_example_shards(root / "data", shards=2)
    run(str(BIN / "tunegraph"), "run", "--select", "raw_corpus,clean_corpus")
    assert "Validation successful" in run(
        str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"
    )
    # dg finds the project's modules under the project root itself: it runs in the checkout (it
    # loads the definitions only; no state is written).
    assert "All definitions loaded successfully" in run(str(BIN / "dg"), "check", "defs", cwd=REPO_ROOT)
    run(
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "pipelines.definitions",
        "--select",
        "deduplicated_corpus",
    )
    # What `dagster asset materialize` wrote is what tunegraph reads: nothing left to do.
    assert "everything is up to date" in run(
        str(BIN / "tunegraph"), "run", "--select", "raw_corpus,clean_corpus,deduplicated_corpus"
    )
    assert (root / "data" / "dagster" / "history" / "runs.db").is_file()
    assert not list(root.glob(".tmp_dagster_home_*"))
