"""Is the process that claimed some shared state still alive? (MLflow runs, Dagster runs, GPU slots.)

A process killed with SIGKILL cannot release what it holds; the next run checks the process it
recorded and releases it instead. A process is recorded by host, pid and start time: a pid alone
is reused (after a container restart the new `tunegraph run` may get the dead one's pid), the
start time of the process now holding that pid tells the two apart. Only processes recorded on
this host can be checked from here.
"""

import contextlib
import os
import platform
import signal
import subprocess
import time

import psutil

# Start times are read from /proc in clock ticks and the boot time; allow for their rounding.
START_TOLERANCE_S = 1.0


def host() -> str:
    return platform.node()


def started(pid: int | None = None) -> float:
    """When the process (this one by default) started, in seconds since the epoch."""
    return psutil.Process(pid).create_time()


def owner_alive(
    recorded_host: str | None, pid: str | int | None, recorded_start: str | float | None = None
) -> bool:
    """False only when the owner provably is gone: recorded on this host, and no process with that
    pid, a zombie (killed, not yet reaped), or one that started at another time than recorded (the
    pid was reused). A record without a start time (written before start times were recorded) is
    judged by its pid alone."""
    if recorded_host != host() or not pid:
        return True
    try:
        process = psutil.Process(int(pid))
        start, zombie = process.create_time(), process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process that exists: alive
        return True
    if zombie:
        return False
    return recorded_start is None or abs(start - float(recorded_start)) <= START_TOLERANCE_S


def stop_groups(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop processes started with `start_new_session=True`, with everything they started.

    SIGINT first (what Ctrl-C sends; servers shut down cleanly on it), then SIGKILL to each whole
    process group after `grace_s`: `dagster dev` was measured to ignore SIGINT and SIGTERM for
    over 30 s here, and its run workers and code servers share its group.
    """
    for proc in procs:
        _signal_group(proc, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)  # the children too, even when the leader has exited
        proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, sig)
