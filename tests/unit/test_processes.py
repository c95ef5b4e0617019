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
    for pid in children:
        stat = Path(f"/proc/{pid}/stat")
        assert (
            not stat.exists() or stat.read_text().split()[2] == "Z"
        )  # gone, or a zombie awaiting its parent
