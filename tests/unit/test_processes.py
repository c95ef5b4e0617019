"""Stopping a server stops everything it started, even a server that ignores Ctrl-C; telling a
killed owner from a live one, also when its pid was reused."""

import os
import subprocess
import time
from pathlib import Path

import psutil

from stages.processes import host, owner_alive, started, stop_groups

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


def test_an_owner_is_alive_only_as_the_process_that_started_when_recorded():
    me, since = os.getpid(), started()
    assert owner_alive(host(), me, str(since))
    # The same pid, recorded with another start time: a later process got the dead owner's pid
    # (a container restart, pid reuse). The owner is gone.
    assert not owner_alive(host(), me, str(since - 3600))
    assert owner_alive(host(), me)  # a record from before start times were kept: by its pid alone
    assert owner_alive("another-host", me, str(since - 3600))  # cannot be checked from here
    exited = subprocess.Popen(["true"])
    exited.wait()
    assert not owner_alive(host(), exited.pid, str(since))


def test_a_killed_owner_not_yet_reaped_is_gone():
    proc = subprocess.Popen(["sleep", "60"])
    since = started(proc.pid)
    assert owner_alive(host(), proc.pid, str(since))
    proc.kill()
    deadline = time.monotonic() + 5
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not owner_alive(host(), proc.pid, str(since))  # a zombie: SIGKILLed, its parent has not waited
    proc.wait()
