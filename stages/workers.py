"""Per-record stage work on every core: a function mapped over chunks of a list in worker processes.

Cleaning, PII scans and n-gram scans are pure Python per record, so one process uses one core
(benchmarks/scale.py: at 100k records they were most of the data stages' time on 2 cores). The
workers are forked for one call and end with it: forked, they need no imports and do not re-run
the caller's `__main__` (spawned or forkserver workers would); per call, they hold nothing of an
earlier run. A fork copies page tables, not memory: tens of milliseconds for a 2 GB process.
Forked, they also inherit the function and its items: only the results are pickled back (a
closure over a large set, such as the eval n-grams, costs nothing to hand over). Results come
back in input order, so the output is the one a single process computes.

A stage called once per landing file (cleaning) keeps its workers instead (`keep_workers`): a
worker forked from a large process copies every page it allocates into, and at 100k records those
copies (~0.8 GB a worker, measured by benchmarks/scale.py) cost more than the parallel cleaning
saved when paid once per file. Kept workers pay it once; their function and chunks are pickled.
They end when a call without `keep_workers` comes (the cross-file stages run after the per-file ones).

The same seam runs on a Ray cluster when the caller passes `Engine("ray", ...)` (data.engine: ray):
the chunks become Ray tasks (stages/ray_engine.py), results in the same order. The engine is passed
down from the config by each stage's caller, never set globally; nothing imports Ray for `local`.
"""

import gc
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a chunk's pickling round trip and the fork cost more than they save.
MIN_PARALLEL = 2_000
CHUNKS_PER_WORKER = 4  # chunks finish at different times; a few each keeps every core busy


@dataclass(frozen=True)
class Engine:
    """Where `map_chunks` (and the near-dedup join) run: this host's cores, or a Ray cluster.

    `address` is the Ray cluster's (None: $RAY_ADDRESS, else a Ray started here on `cores()`);
    `log` receives one line per Ray call (tasks, nodes, retries), the Dagster step's log in assets.
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    log: Callable[[str], None] | None = field(default=None, compare=False)

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


LOCAL = Engine()


def cores() -> int:
    """Cores this process may run on; `TUNEGRAPH_WORKERS` caps it (1 runs everything in-process)."""
    available = len(os.sched_getaffinity(0))
    return max(1, min(available, int(os.environ.get("TUNEGRAPH_WORKERS", available))))


_job: tuple[Callable, Sequence] | None = None  # what the forked workers run, inherited
_kept: ProcessPoolExecutor | None = None


def _run_chunk(bounds: tuple[int, int]) -> object:
    assert _job is not None, "a worker runs only inside map_chunks"
    fn, items = _job
    return fn(items[bounds[0] : bounds[1]])


def map_chunks(
    fn: Callable[[Sequence[T]], R], items: Sequence[T], keep_workers: bool = False, engine: Engine = LOCAL
) -> list[R]:
    """[fn(chunk) for chunk in consecutive chunks of items], in order, on every core.

    `fn`'s results must be picklable; `fn` and `items` need not be, unless `keep_workers` or a Ray
    engine (which pickles both with cloudpickle, closures included). With one core, or few items, the
    local engine runs it here as one chunk.
    """
    global _job, _kept
    if engine.kind == "ray":
        from stages import ray_engine  # only for data.engine: ray; `local` never imports Ray

        return ray_engine.map_chunks(fn, items, engine)
    if not keep_workers and _kept is not None and _job is None:
        # The per-file stages are done: their workers' memory goes back, also when this call is
        # small enough to run here (a one-record fix's cross-file stages left two alive, 2.6 GB
        # resident each, after benchmarks/scale.py's 1M local run).
        _kept.shutdown()
        _kept = None
    workers = cores()
    if workers == 1 or len(items) < MIN_PARALLEL or _job is not None:  # no workers of workers
        return [fn(items)]
    size = -(-len(items) // (workers * CHUNKS_PER_WORKER))
    bounds = [(i, min(i + size, len(items))) for i in range(0, len(items), size)]
    if keep_workers:
        if _kept is None:
            _kept = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=gc.freeze)
        return list(_kept.map(fn, [items[a:b] for a, b in bounds]))
    _job = (fn, items)
    try:
        # gc.freeze: the workers' collections then leave the inherited heap alone; scanning it
        # would write to every object and turn the shared pages into copies.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=gc.freeze) as pool:
            return list(pool.map(_run_chunk, bounds))  # type: ignore[arg-type]
    finally:
        _job = None
