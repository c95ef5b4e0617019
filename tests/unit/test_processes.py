"""Stopping a server stops everything it started, even a server that ignores Ctrl-C."""

import subprocess
import time
from pathlib import Path

from stages.processes import stop_groups

STUBBORN = "trap '' INT TERM; sleep 60 & sleep 60 & echo ready; wait"  # ignores SIGINT, as dagster dev did


def test_stop_groups_kills_a_server_that_ignores_sigint_and_all_its_children_within_the_grace():
    proc = subprocess.Popen(
        ["bash", "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "ready"
    children = [int(p) for p in subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]  # fmt: skip
    assert len(children) == 3  # bash and its two sleeps
    started = time.monotonic()
    stop_groups([proc], grace_s=1.0)
    assert time.monotonic() - started < 3
    # SIGKILL is delivered asynchronously: a child may still be in its last moments right after.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not all(_ended(pid) for pid in children):
        time.sleep(0.05)
    assert [pid for pid in children if not _ended(pid)] == []


def _ended(pid: int) -> bool:
    """Gone, or a zombie awaiting its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
