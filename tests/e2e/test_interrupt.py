"""`tunegraph run` stopped with Ctrl-C, then killed outright, then run again: it resumes, and
MLflow is left with no run RUNNING. The real CLI in its own process group, as a terminal runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mlflow_statuses, write_config, write_example_shards

TUNEGRAPH = Path(sys.executable).parent / "tunegraph"


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


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_rerun_resumes_and_leaves_nothing_running(home, tmp_path):
    write_example_shards(home, shards=2)
    config = write_config(tmp_path / "long.yaml",
                          training={"max_steps": 30, "save_steps": 3, "logging_steps": 3})  # fmt: skip
    checkpoints = home / "checkpoints" / "fine_tuned_model"

    # Ctrl-C: the training stops, its MLflow run says KILLED, the checkpoint stays, no retry.
    assert signal_at_checkpoint(start_run(home, config), checkpoints / "checkpoint-3", signal.SIGINT) == 1
    assert mlflow_statuses(home) == ["KILLED"]
    last = json.loads((home / "runs" / "last.json").read_text())
    assert last["status"] == "failed" and "interrupted" in last["errors"][0]

    # SIGKILL to every process: nothing can end the MLflow run now but the next run.
    assert signal_at_checkpoint(start_run(home, config), checkpoints / "checkpoint-6", signal.SIGKILL) == -9
    assert mlflow_statuses(home) == ["KILLED", "RUNNING"]

    final = start_run(home, config)
    assert final.wait(timeout=900) == 0
    report = json.loads(
        subprocess.run(
            [TUNEGRAPH, "report", "--json"],
            env={**os.environ, "TUNEGRAPH_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    assert report["status"] == "success"
    assert report["training"]["resumed_from_step"] == 6 and report["training"]["steps"] == 30
    assert mlflow_statuses(home) == ["KILLED", "KILLED", "FINISHED"]
