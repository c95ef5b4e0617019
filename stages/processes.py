"""Is the process that claimed some shared state still alive? (MLflow runs, Dagster runs, GPU slots.)

A process killed with SIGKILL cannot release what it holds; the next run checks the pid it
recorded and releases it instead. Only pids recorded on this host can be checked from here.
"""

import os
import platform


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
