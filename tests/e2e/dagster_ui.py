"""A real `dagster dev` (webserver + daemon) on this test's state folder, driven through GraphQL
the way the UI's buttons drive it."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipelines.cli import configure_environment
from resources.settings import REPO_ROOT

DAGSTER = REPO_ROOT / ".venv" / "bin" / "dagster"
# The mutation and the execution parameters the UI's "Materialize" button sends.
LAUNCH = """mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN = """query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      status
      eventConnection { events { __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } }
    }
  }
}"""
STALE = "{ assetNodes { assetKey { path } isMaterializable isPartitioned staleStatus } }"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


class DagsterUI:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/graphql"

    def query(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def stale_status(self) -> dict[str, str]:
        """The status behind the UI's "Unsynced" / "Missing" labels, per unpartitioned asset."""
        nodes = self.query(STALE)["assetNodes"]
        return {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in nodes
                if n["isMaterializable"] and not n["isPartitioned"]}  # fmt: skip

    def materialize(
        self,
        assets: list[str],
        partition: str | None = None,
        run_config: dict | None = None,
        timeout: float = 600,
        tags: dict[str, str] | None = None,
    ) -> tuple[str, list[str]]:
        """Launch the assets as "Materialize" does (their checks included), wait; (status, step errors)."""
        params = {
            "selector": {
                "repositoryLocationName": "tunegraph",
                "repositoryName": "__repository__",
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in assets],
            },
            "mode": "default",
            "executionMetadata": {
                "tags": [{"key": "dagster/partition", "value": partition}] * bool(partition)
                + [{"key": k, "value": v} for k, v in (tags or {}).items()]
            },
            "runConfigData": run_config or {},
        }
        launched = self.query(LAUNCH, {"executionParams": params})["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id, deadline = launched["run"]["runId"], time.time() + timeout
        while True:
            run = self.query(RUN, {"runId": run_id})["runOrError"]
            if run["status"] in FINISHED:
                events = run["eventConnection"]["events"]
                return run["status"], [e["error"]["message"] for e in events
                                       if e["__typename"] == "ExecutionStepFailureEvent"]  # fmt: skip
            assert time.time() < deadline, f"run {run_id} still {run['status']} after {timeout} s"
            time.sleep(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(home: Path) -> list[int]:
    """Pids of live processes started for this state folder (their environment names it)."""
    marker = f"TUNEGRAPH_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0") and b"Z" not in _state(proc):
                    found.append(int(proc.name))
    return found


def _state(proc: Path) -> bytes:
    return (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]  # R, S, Z (zombie), ...


def wait_for(ui: DagsterUI, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError):
            ui.query("{ version }")
            return
        assert time.time() < deadline, f"the Dagster webserver did not answer within {timeout} s"
        time.sleep(0.5)


def wait_for_mlflow(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until MLflow's server answers /health: it starts apart from Dagster's, and on a loaded machine later
    (CI once reached the MLflow page first and was refused)."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r,
        ):
            if r.status == 200:
                return
        assert time.time() < deadline, (
            f"the MLflow server did not answer within {timeout} s: {log.read_text()[-3000:]}"
        )
        time.sleep(0.5)


@contextlib.contextmanager
def tunegraph_ui(home: Path, config: Path) -> Iterator[tuple[DagsterUI, subprocess.Popen, int]]:
    """`tunegraph ui` (Dagster webserver + daemon, MLflow UI) on this state folder; (ui, process,
    MLflow port). The caller stops it; whatever is left is killed at the end."""
    dagster_port, mlflow_port = _free_port(), _free_port()
    log = home / "tunegraph-ui.log"
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    proc = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "tunegraph"), "--config", str(config), "ui",
                             "--dagster-port", str(dagster_port), "--mlflow-port", str(mlflow_port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    ui = DagsterUI(dagster_port)
    try:
        wait_for(ui, proc, log)
        wait_for_mlflow(mlflow_port, proc, log)
        yield ui, proc, mlflow_port
    finally:
        for pid in processes_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def dagster_dev(home: Path, config: Path) -> Iterator[DagsterUI]:
    """`dagster dev` on the instance and state folder that `tunegraph` uses for this home."""
    configure_environment(home, config)  # DAGSTER_HOME and the storage folders, as the CLI sets them
    port = _free_port()
    log = (home / "dagster-dev.log").open("w")
    proc = subprocess.Popen([str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO_ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    ui = DagsterUI(port)
    try:
        wait_for(ui, proc, home / "dagster-dev.log")
        yield ui
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the servers and every run they started
        proc.wait(timeout=30)
