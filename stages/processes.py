"""Is the process that claimed some shared state still alive? (MLflow runs, Dagster runs, GPU slots.)

A process killed with SIGKILL cannot release what it holds; the next run checks the pid it
recorded and releases it instead. Only pids recorded on this host can be checked from here.
"""

import contextlib
import os
import platform
import signal
import subprocess
import time


def host() -> str:
    return platform.node()


def owner_alive(recorded_host: str | None, pid: str | int | None) -> bool:
    """False only when the owner provably is gone: recorded on this host and no such process."""
    if recorded_host != host() or not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


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
