"""The data stages' seam on a Ray cluster (data.engine: ray): `map_chunks` as Ray tasks, and the
near-dedup join as a shuffle by band-key hash (stages/lsh_shuffle.py), with the local results.

Imported only when a caller passes `Engine("ray", ...)` (stages/workers.py), so `local` never loads
Ray. The driver is the Dagster step's process: it connects once (`connect`) to `engine.address`,
else $RAY_ADDRESS, else starts a Ray on this host's cores (dashboard off, usage stats off: nothing
is sent anywhere). Tasks, not Ray Data: our per-record functions take and return Python records
in order, which tasks carry as they are; Ray Data would turn them into Arrow blocks and back
(benchmarks/ray_seam.py measures both; README "Data stages on Ray" has the figures).

Faults: a chunk whose worker or node died is submitted again, up to MAX_RETRIES times, each retry
named in the step's log; then the stage raises and Dagster records no materialisation. An error
raised by the stage's own code is raised as it is (running it again gives the same error). The
shuffle's tasks are retried by Ray itself (`max_retries`), which also rebuilds a map output lost
with its node from the task that made it.
"""

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported: it reads this once

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import exceptions as ray_errors  # noqa: E402

from stages.lsh_shuffle import band_entries, part_best, resolve  # noqa: E402
from stages.near_dedup import lsh_params  # noqa: E402
from stages.workers import CHUNKS_PER_WORKER, Engine, cores  # noqa: E402

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRIES = 2  # runs of a chunk after its worker died; a third death fails the stage
# What a rerun can fix: the process or node running the task died, or the object it made was lost.
LOST = (ray_errors.WorkerCrashedError, ray_errors.NodeDiedError, ray_errors.ObjectLostError,
        ray_errors.LocalRayletDiedError, ray_errors.TaskUnschedulableError)  # fmt: skip


def connect(engine: Engine) -> str:
    """Connect this process to the engine's cluster (once); returns where it runs, for the log."""
    address = engine.address or os.environ.get("RAY_ADDRESS")
    where = address or f"a local Ray on {cores()} cores"
    if not ray.is_initialized():
        started = time.perf_counter()
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a cluster of this process's own: ends with it
            ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=True)
        resources = ray.cluster_resources()
        engine.say(
            f"ray: connected to {where} in {time.perf_counter() - started:.1f} s: "
            f"{len(ray.nodes())} node(s), {int(resources.get('CPU', 0))} CPUs"
        )
    return where


def _cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


KEPT_FUNCTIONS = 2  # functions each worker keeps unpickled: the current stage's, and the one before
_functions: OrderedDict[str, Callable] = OrderedDict()  # in a worker: digest of the pickled function -> it


def _function(digest: str, blob: ray.ObjectRef) -> Callable:
    """The function pickled in `blob`, unpickled once per worker and kept for the next tasks.

    A tokenizer took 70 ms to unpickle for every task, and its BPE word cache started cold each
    time: tokenising ran 1.22 x the local engine at 100k records (benchmarks/ray_profile.py),
    whose forked workers keep one tokenizer, warm, for all their chunks. Keyed by the digest of the
    pickled bytes, so the same function handed over again (tokenize_cached calls once per 32k
    records) is found; the functions are the stages' own, which keep no state between chunks.
    """
    fn = _functions.pop(digest, None)
    if fn is None:
        fn = ray.cloudpickle.loads(ray.get(blob))
    _functions[digest] = fn
    while len(_functions) > KEPT_FUNCTIONS:
        _functions.popitem(last=False)
    return fn


@ray.remote(max_retries=0)  # retried by _gather, which counts and logs each retry
def _chunk(digest: str, blob: list[ray.ObjectRef], chunk: Sequence[T]) -> tuple[R, float]:
    """fn(chunk), and the seconds fn took (the rest of a task's time is Ray's: moving and unpickling).

    `blob` is the pickled function's ref in a list, so Ray hands the ref over rather than the bytes:
    a worker that kept the function does not fetch it.
    """
    # A task holds one CPU (Ray sets OMP_NUM_THREADS=1 for the same reason); the tokenizer's own
    # threads would share it with the other tasks' (tokenising took 5 % longer with them).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fn = _function(digest, blob[0])
    started = time.perf_counter()
    return fn(chunk), time.perf_counter() - started


def map_chunks(fn: Callable[[Sequence[T]], R], items: Sequence[T], engine: Engine) -> list[R]:
    """[fn(chunk) for chunk in consecutive chunks of items], in order, as Ray tasks on the cluster's CPUs.

    Chunks go to Ray whatever their number (the local engine keeps small inputs in-process; on a
    cluster the driver's host may be the smallest one), CHUNKS_PER_WORKER per cluster CPU.
    """
    if not len(items):
        return [fn(items)]
    where = connect(engine)
    cpus = _cpus()
    size = -(-len(items) // (cpus * CHUNKS_PER_WORKER))
    blob = ray.cloudpickle.dumps(fn)  # once, not with every chunk (closures can hold large sets)
    fn_ref = [ray.put(blob)]
    digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
    args = [(digest, fn_ref, items[a : a + size]) for a in range(0, len(items), size)]
    return _gather(engine, _name(fn), where, _chunk, args, in_flight=2 * cpus)


def _name(fn: Callable) -> str:
    inner = getattr(fn, "func", fn)  # a functools.partial's function
    return getattr(inner, "__qualname__", repr(inner))


def _gather(engine: Engine, what: str, where: str, task: Any, args: list[tuple], in_flight: int) -> list:  # noqa: ANN401
    """Run `task` on each args tuple; the results in order, re-running a task whose worker was lost.

    At most `in_flight` tasks are submitted at a time: a chunk is pickled into the object store when
    its task is submitted and freed when its result is in, so the store holds a few chunks, not all
    of them beside the driver's own copy. Two a CPU: one running, one ready to start.
    """
    started = time.perf_counter()
    sending = receiving = working = 0.0  # pickling chunks into the store; unpickling results; inside fn
    pending: dict[ray.ObjectRef, int] = {}
    results: list = [None] * len(args)
    runs = [1] * len(args)
    queue = list(range(len(args)))[::-1]  # task numbers to submit, the first last

    def submit(k: int) -> None:
        nonlocal sending
        began = time.perf_counter()
        pending[task.remote(*args[k])] = k
        sending += time.perf_counter() - began

    while queue and len(pending) < in_flight:
        submit(queue.pop())
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(ref)
        try:
            got = time.perf_counter()
            results[k], seconds = ray.get(ref)
            receiving += time.perf_counter() - got
            working += seconds
        except LOST as err:
            cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
            if runs[k] > MAX_RETRIES:
                raise RuntimeError(
                    f"ray: {what} task {k + 1}/{len(args)} lost {runs[k]} times at {where} ({cause}); the "
                    "stage records nothing: check the cluster (`ray status`) and rerun"
                ) from None
            runs[k] += 1
            engine.say(
                f"ray: {what} task {k + 1}/{len(args)} lost ({cause}); retry {runs[k] - 1}/{MAX_RETRIES}"
            )
            queue.append(k)  # next to go
        except ray_errors.RayTaskError as err:  # the stage's own error: the same on any rerun
            raise err.as_instanceof_cause() from None
        del ref  # the result is out of the store once nothing refers to it
        while queue and len(pending) < in_flight:
            submit(queue.pop())
    engine.say(
        f"ray: {what}: {len(args)} tasks at {where}, {sum(runs) - len(runs)} retries, "
        f"{time.perf_counter() - started:.1f} s (sending {sending:.1f} s, in tasks {working:.1f} s, "
        f"receiving {receiving:.1f} s)"
    )
    return results


@ray.remote(max_retries=MAX_RETRIES)
def _band_entries(signatures: np.ndarray, first_row: int, bands: int, rows: int, parts: int) -> tuple:
    return tuple(band_entries(signatures, first_row, bands, rows, parts))


@ray.remote(max_retries=MAX_RETRIES)
def _part_best(blocks: list, starts: np.ndarray, *entries: tuple) -> tuple[np.ndarray, ...]:
    """One part's bests; fetches only the signature blocks that hold its rows, one at a time."""

    def signature_rows(at: np.ndarray) -> np.ndarray:
        block = np.searchsorted(starts, at, side="right") - 1
        out = None
        for b in np.unique(block).tolist():
            signatures = ray.get(blocks[b])
            if out is None:
                out = np.empty((len(at), signatures.shape[1]), signatures.dtype)
            mine = block == b
            out[mine] = signatures[at[mine] - starts[b]]
        return out

    return part_best(list(entries), signature_rows)


def lsh_join(signatures: np.ndarray, threshold: float, engine: Engine) -> list[int | None]:
    """`near_dedup.lsh_join`'s answer, computed as a shuffle on the cluster: map tasks key blocks of
    rows by band, reduce tasks each hold one part of the keys and the signatures of their rows."""
    n, num_perm = signatures.shape
    if not n:
        return []
    where = connect(engine)
    started = time.perf_counter()
    bands, rows = lsh_params(threshold, num_perm)
    tasks = _cpus() * CHUNKS_PER_WORKER
    size = -(-n // tasks)
    starts = np.arange(0, n, size)
    blocks = [ray.put(signatures[a : a + size]) for a in starts.tolist()]
    parts = tasks  # >= CHUNKS_PER_WORKER, so num_returns gives each map task's refs as a list
    mapped = [
        _band_entries.options(num_returns=parts).remote(block, a, bands, rows, parts)
        for block, a in zip(blocks, starts.tolist(), strict=True)
    ]
    try:
        bests = ray.get([_part_best.remote(blocks, starts, *(m[p] for m in mapped)) for p in range(parts)])
    except LOST as err:
        raise RuntimeError(
            f"ray: near-dedup shuffle lost a task {MAX_RETRIES + 1} times at {where} ({type(err).__name__}); "
            "the stage records nothing: check the cluster (`ray status`) and rerun"
        ) from None
    engine.say(
        f"ray: near-dedup join of {n} signatures: {len(blocks)} map and {parts} reduce tasks by band-key "
        f"hash at {where}, {time.perf_counter() - started:.1f} s"
    )
    return resolve(list(bests), n, num_perm, threshold)
