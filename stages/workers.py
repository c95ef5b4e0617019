"""Per-record stage work on every core: a function mapped over chunks of a list in worker processes.

Cleaning, PII scans and n-gram scans are pure Python per record, so one process uses one core
(benchmarks/scale.py: at 100k records they were most of the data stages' time on 2 cores). The
workers are forked for one call and end with it: forked, they need no imports and do not re-run
the caller's `__main__` (spawned or forkserver workers would); per call, they hold nothing of an
earlier run. A fork copies page tables, not memory: tens of milliseconds for a 2 GB process.
Results come back in input order, so the output is the one a single process computes.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a chunk's pickling round trip and the fork cost more than they save.
MIN_PARALLEL = 2_000
CHUNKS_PER_WORKER = 4  # chunks finish at different times; a few each keeps every core busy


def cores() -> int:
    """Cores this process may run on; `TUNEGRAPH_WORKERS` caps it (1 runs everything in-process)."""
    available = len(os.sched_getaffinity(0))
    return max(1, min(available, int(os.environ.get("TUNEGRAPH_WORKERS", available))))


def map_chunks(fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
    """[fn(chunk) for chunk in consecutive chunks of items], in order, on every core.

    `fn` and its results must be picklable (a module-level function or a `partial` of one). With
    one core, or few items, it runs here as one chunk.
    """
    workers = cores()
    if workers == 1 or len(items) < MIN_PARALLEL:
        return [fn(items)]
    size = -(-len(items) // (workers * CHUNKS_PER_WORKER))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(fn, chunks))
