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
        self, assets: list[str], partition: str | None = None, timeout: float = 600
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
                "tags": [{"key": "dagster/partition", "value": partition}] if partition else []
            },
            "runConfigData": {},
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
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (home / "dagster-dev.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                ui.query("{ version }")
                break
            assert time.time() < deadline, "dagster dev did not answer within 3 minutes"
            time.sleep(0.5)
        yield ui
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the servers and every run they started
        proc.wait(timeout=30)
