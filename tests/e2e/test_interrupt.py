"""`tunegraph run` killed outright on a fresh state folder, then stopped with Ctrl-C, then run
again: nothing finished before a crash is redone, training resumes, and MLflow is left with no run
RUNNING. The real CLI in its own process group, as a terminal runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import TINY_CONFIG, mlflow_statuses, training_runs, write_config, write_example_shards

from pipelines.cli import configure_environment
from resources.settings import REPO_ROOT

TUNEGRAPH = Path(sys.executable).parent / "tunegraph"
UPSTREAM = [
    "raw_corpus",
    "clean_corpus",
    "deduplicated_corpus",
    "augmented_corpus",
    "tokenized_dataset",
    "base_model",
]


def start_run(home: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    log = (home / f"run-{time.time_ns()}.log").open("w")
    # A session of its own, like a shell job: a signal to the group reaches every process in it.
    return subprocess.Popen([TUNEGRAPH, "--config", str(config), "run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def signal_at_checkpoint(proc: subprocess.Popen, checkpoint: Path, sig: int) -> int:
    deadline = time.time() + 600
    while not checkpoint.is_dir():
        assert proc.poll() is None, f"tunegraph run ended (rc {proc.returncode}) before {checkpoint.name}"
        assert time.time() < deadline, f"no {checkpoint.name} after 10 minutes"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=120)


def materialisations(home: Path) -> dict[str, int]:
    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        return {a: len(instance.fetch_materializations(dg.AssetKey(a), limit=100).records) for a in UPSTREAM}


def resumed_from_steps(home: Path) -> list[str]:
    return [r.data.tags.get("tunegraph.resumed_from_step") for r in training_runs(home)]


@pytest.mark.slow
def test_sigkill_then_ctrl_c_then_rerun_redoes_nothing_upstream_and_resumes(home, tmp_path):
    write_example_shards(home, shards=2)
    config = write_config(tmp_path / "long.yaml",
                          training={"max_steps": 30, "save_steps": 3, "logging_steps": 3})  # fmt: skip
    checkpoints = home / "checkpoints" / "fine_tuned_model"

    # The first run of a fresh state folder, SIGKILLed with all its processes after the first checkpoint:
    # nothing can end its MLflow run now but the next run.
    assert signal_at_checkpoint(start_run(home, config), checkpoints / "checkpoint-3", signal.SIGKILL) == -9
    assert mlflow_statuses(home) == ["RUNNING"]
    done = materialisations(home)
    assert all(done[a] >= 1 for a in UPSTREAM), done  # recorded by Dagster as each step finished

    # The next run redoes no upstream asset and resumes; Ctrl-C at the next checkpoint stops it
    # without a retry, its MLflow run KILLED, the checkpoint kept.
    assert signal_at_checkpoint(start_run(home, config), checkpoints / "checkpoint-6", signal.SIGINT) == 1
    assert mlflow_statuses(home) == ["KILLED", "KILLED"]  # the orphan of the SIGKILL too
    assert resumed_from_steps(home) == ["0", "3"]  # the killed run's checkpoint, under the same key
    last = report_of(home)  # read from the Dagster instance: the interrupted run is its latest
    assert last["status"] == "failed" and any("interrupted" in e for e in last["errors"]), last["errors"]
    # Per asset (a prompt asset is stale per variant partition); the base model's partitions ran before
    # the fine-tune in this second run, the fine-tuned model's wait for it.
    assert sorted({key.split("[")[0] for key in last["stale"]}) == [
        "fine_tuned_model",
        "fine_tuned_prompt_evaluation",
        "gguf_model",  # downstream of the champion's evaluation, whether or not export.gguf is on
        "model_evaluation",
        "preference_model",
        "preference_pairs",
        "reward_model",
    ]
    assert materialisations(home) == done

    final = start_run(home, config)
    assert final.wait(timeout=900) == 0
    report = report_of(home)
    assert report["status"] == "success"
    assert report["training"]["resumed_from_step"] == 6 and report["training"]["steps"] == 30
    assert mlflow_statuses(home) == ["KILLED", "KILLED", "FINISHED"]
    assert resumed_from_steps(home) == ["0", "3", "6"]
    assert materialisations(home) == done


def report_of(home: Path) -> dict:
    """`tunegraph report --json`, as a user runs it."""
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    done = subprocess.run(
        [TUNEGRAPH, "report", "--json"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)
