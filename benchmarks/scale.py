"""The data stages (raw -> tokenized) at 10k, 100k and 1M records: wall time, peak RSS, growth.

    python benchmarks/scale.py [--json] [--sizes 10000,100000,1000000] [--engine local,ray]

For each size, in a fresh $TUNEGRAPH_HOME with its own Dagster instance and the demo config: a
corpus built from the example corpus (stdlib docstrings) with known, seeded properties is written
as landing files (8 files at 10k, 32 at 100k, 64 at 1M); the base model is materialised (not timed:
tokenisation needs its tokenizer); `tunegraph run`'s runner brings the data stages up to date cold;
then one record of one file is edited and the same run is timed again (the one-record fix).

The corpus: each record is an example record (with 8+ words) whose words are replaced at a seeded
40 % rate by words of the corpus vocabulary, so records built from the same docstring share few
3-grams (no false near-duplicates) and, up to 100k records, almost no 13-gram (at 1M, with each
docstring reused ~200 times, 4.6 % of the records share one with a held-out record and are
removed as contaminated). Planted on top, at
known rates: exact copies of an earlier answer (2 %), near copies (5 % of the words of an earlier
answer replaced, 5 %), an e-mail address (1 %) and a routable IPv4 address (0.5 %).

Per stage: wall time (the sum of its Dagster steps over every run; per-file stages run once per
file), the peak RSS while its steps ran (sampled every 0.1 s: the process's RSS plus the private
memory of the worker processes it forks for per-record work; the process also holds the imported
libraries and what materialising the base model left, `rss_before_mb`), and records/s
(the corpus's records over the stage's wall time). `total_s` is the whole cold run,
orchestration included; `fix_ratio` is the one-record fix's wall over the cold run's. The growth
exponent between two sizes is log(t2/t1) / log(n2/n1) (1.0 is linear).

`--engine local,ray` measures each size with each data.engine in turn, on the same CPUs: for `ray`
the benchmark starts a Ray on this host's cores first (not timed: a cluster is up before a run),
which every step of the run drives. `largest_worker_peak_mb` is the most private memory one worker
held (a forked worker for local, a `ray::` worker process for ray); `ray_over_local` is the ratio of
wall times per stage and in total (issue 30's goal: <= 1.25 at 1M records on 2 cores).
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import dagster as dg  # noqa: E402

from pipelines.cli import configure_environment  # noqa: E402
from pipelines.report import build_report  # noqa: E402
from pipelines.runner import Runner  # noqa: E402
from resources.settings import DEFAULT_CONFIG, REPO_ROOT, TunegraphSettings  # noqa: E402
from stages.example_corpus import stdlib_records  # noqa: E402

STAGES = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]
FILES = {10_000: 8, 100_000: 32, 1_000_000: 64}
RATES = {"exact_copy": 0.02, "near_copy": 0.05, "email": 0.01, "ipv4": 0.005}
EDIT_RATE, NEAR_EDIT_RATE = 0.4, 0.05


def build_corpus(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """n instruction records from the example corpus, with what was planted (kind -> count)."""
    raw, _ = stdlib_records()
    base = [r for r in raw if len(r["output"].split()) >= 8]
    vocabulary = sorted({w for r in base for w in r["output"].split()})
    rng = random.Random(seed)
    planted = dict.fromkeys(RATES, 0)
    records: list[dict[str, Any]] = []

    def edited(words: list[str], rate: float) -> str:
        return " ".join(rng.choice(vocabulary) if rng.random() < rate else w for w in words)

    for i in range(n):
        source = base[i % len(base)]
        draw = rng.random()
        if records and draw < RATES["exact_copy"]:
            output, kind = records[rng.randrange(len(records))]["output"], "exact_copy"
        elif records and draw < RATES["exact_copy"] + RATES["near_copy"]:
            output, kind = (
                edited(records[rng.randrange(len(records))]["output"].split(), NEAR_EDIT_RATE),
                "near_copy",
            )
        else:
            output, kind = edited(source["output"].split(), EDIT_RATE), None
        if kind:
            planted[kind] += 1
        draw = rng.random()
        if draw < RATES["email"]:
            output += f" Write to maintainer{i}@example.org with questions."
            planted["email"] += 1
        elif draw < RATES["email"] + RATES["ipv4"]:
            output += f" The mirror at 81.2.{i % 250}.{1 + i % 200} serves it."
            planted["ipv4"] += 1
        records.append({"id": f"r{i:07d}", "instruction": source["instruction"], "output": output})
    return records, planted


def write_files(records: list[dict[str, Any]], landing: Path, files: int) -> list[Path]:
    landing.mkdir(parents=True, exist_ok=True)
    size = -(-len(records) // files)
    paths = []
    for f in range(files):
        path = landing / f"part-{f:03d}.jsonl"
        with path.open("w") as out:
            for r in records[f * size : (f + 1) * size]:
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


class RssSampler:
    """Resident memory every 0.1 s, as (time, MB): this process's RSS plus what its worker
    processes (stages/workers.py forks them) hold privately. A forked worker shares the parent's
    pages until it writes them, so its own RSS would count them twice; its private pages (USS)
    are what it adds."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.workers_peak_mb = 0.0
        self.largest_worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            own = _kb(Path("/proc/self/status"), "VmRSS:")
            private = {pid: _private_kb(pid) for pid in _descendants()}
            workers = sum(private.values())
            self.workers_peak_mb = max(self.workers_peak_mb, workers / 1024)
            # A worker: a forked one (local), a `ray::` process (Ray's own daemons are not workers).
            largest = max((kb for pid, kb in private.items() if _is_worker(pid)), default=0)
            self.largest_worker_mb = max(self.largest_worker_mb, largest / 1024)
            self.samples.append((time.time(), (own + workers) / 1024))
            self._stop.wait(0.1)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, intervals: list[tuple[float, float]]) -> float:
        inside = [mb for t, mb in self.samples if any(a - 0.1 <= t <= b + 0.1 for a, b in intervals)]
        return round(max(inside), 1) if inside else 0.0


def _kb(path: Path, *fields: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:  # a worker that just ended
        return 0
    return sum(int(line.split()[1]) for line in lines if line.startswith(fields))


def _private_kb(pid: int) -> int:
    return _kb(Path(f"/proc/{pid}/smaps_rollup"), "Private_Clean:", "Private_Dirty:")


def _children(pid: int | str = "self") -> list[int]:
    pids = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # a process that just ended
        return []
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _descendants() -> list[int]:
    """Every process below this one: forked workers, and a local Ray's daemons and their workers."""
    found, todo = [], _children()
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += _children(pid)
    return found


def _is_worker(pid: int) -> bool:
    try:
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return name.startswith(b"ray::") or b"ray" not in name


def stage_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Stage -> (start, end) of each of its steps over the runs."""
    steps: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    for run_id in run_ids:
        for stat in instance.get_run_step_stats(run_id):
            stage = stat.step_key  # each stage's gates run in its own step
            if stage in steps and stat.start_time and stat.end_time:
                steps[stage].append((stat.start_time, stat.end_time))
    return steps


def measure(
    corpus: tuple[list[dict[str, Any]], dict[str, int]],
    files: int,
    keep: Path | None = None,
    engine: str = "local",
) -> dict[str, Any]:
    records, planted = list(corpus[0]), corpus[1]
    n = len(records)
    with tempfile.TemporaryDirectory() as tmp:
        home = keep / f"{n}-{engine}" if keep else Path(tmp)
        if keep and home.exists():
            raise SystemExit(f"{home} exists: --keep needs a folder without earlier runs in it")
        home.mkdir(parents=True, exist_ok=True)
        configure_environment(home, DEFAULT_CONFIG)
        paths = write_files(records, home / "landing", files)
        del records
        overrides = {"data.engine": engine} if engine != "local" else {}
        settings = TunegraphSettings(home=str(home), config_path=str(DEFAULT_CONFIG), overrides=overrides)
        with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance, RssSampler() as rss:
            runner = Runner(settings, instance, log=lambda _: None)
            runner.run(select=["base_model"])  # not timed: the tokenizer source, not a data stage
            rss_before = rss.samples[-1][1] if rss.samples else 0.0
            start = time.perf_counter()
            cold = runner.run(select=STAGES)
            total_s = time.perf_counter() - start
            assert cold["status"] == "success", cold["errors"]
            steps = stage_steps(instance, cold["dagster_run_ids"])
            report = build_report(instance)["data"]

            edited = paths[len(paths) // 2]
            lines = edited.read_text().splitlines()
            row = json.loads(lines[10])
            row["output"] += " (Edited to fix a typo.)"
            lines[10] = json.dumps(row)
            edited.write_text("\n".join(lines) + "\n")
            start = time.perf_counter()
            fix = runner.run(select=STAGES)
            fix_s = time.perf_counter() - start
            assert fix["status"] == "success", fix["errors"]
            fix_steps = stage_steps(instance, fix["dagster_run_ids"])

    stages = {}
    for stage, intervals in steps.items():
        wall = sum(b - a for a, b in intervals)
        stages[stage] = {"wall_s": round(wall, 2), "peak_rss_mb": rss.peak(intervals),
                         "records_per_s": round(n / wall) if wall else None}  # fmt: skip
    return {
        "records": n,
        "engine": engine,
        "files": files,
        "stages": stages,
        "total_s": round(total_s, 2),
        "orchestration_s": round(total_s - sum(s["wall_s"] for s in stages.values()), 2),
        "peak_rss_mb": round(max(mb for _, mb in rss.samples), 1),
        "workers_peak_private_mb": round(rss.workers_peak_mb, 1),
        "largest_worker_peak_mb": round(rss.largest_worker_mb, 1),
        "rss_before_mb": round(rss_before, 1),  # libraries and what base_model's materialisation left
        "fix_s": round(fix_s, 2),
        "fix_ratio": round(fix_s / total_s, 3),
        "fix_stages_s": {s: round(sum(b - a for a, b in iv), 2) for s, iv in fix_steps.items()},
        "fix_partitions": fix["partitions_processed"],
        "planted": planted,
        "found": {
            "duplicates": report["duplicates"],
            "pii": report["pii"],
            "contaminated": report["contaminated"],
            "dropped": report["dropped"],
            "kept": report["documents_kept"],
        },
    }


def growth(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """log(t2/t1) / log(n2/n1) between consecutive sizes, for the total and for each stage."""
    out = {}
    for a, b in zip(results, results[1:], strict=False):
        scale = math.log(b["records"] / a["records"])
        key = f"{a['records']}->{b['records']}"
        out[key] = {"total": round(math.log(b["total_s"] / a["total_s"]) / scale, 2)}
        for stage in STAGES:
            ta, tb = a["stages"][stage]["wall_s"], b["stages"][stage]["wall_s"]
            out[key][stage] = round(math.log(tb / ta) / scale, 2) if ta and tb else None
    return out


def ray_over_local(local: dict[str, Any], ray: dict[str, Any]) -> dict[str, float | None]:
    """Wall time with data.engine: ray over local, per stage and in total (the engine's overhead on one host)."""
    out: dict[str, float | None] = {"total": round(ray["total_s"] / local["total_s"], 3)}
    for stage in STAGES:
        a, b = local["stages"][stage]["wall_s"], ray["stages"][stage]["wall_s"]
        out[stage] = round(b / a, 3) if a else None
    return out


def start_ray() -> None:
    """A Ray on this host's cores for the `ray` runs: what a user's cluster is, up before the run."""
    from stages.ray_engine import connect
    from stages.workers import Engine

    connect(Engine("ray", log=lambda line: print(line, file=sys.stderr)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated record counts")
    parser.add_argument(
        "--engine", default="local", help="data.engine to measure: local, ray, or both in turn (local,ray)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep each size's state folder as KEEP/<records>-<engine> (to rerun a fix on it)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engine.split(",")
    if set(engines) - {"local", "ray"}:
        parser.error(f"--engine {args.engine}: use local, ray, or local,ray")
    by_engine: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for n in sizes:
        # One corpus for every engine: the example corpus is read from this interpreter, whose docstrings
        # an import (Ray's) can change, so a corpus built again after the local run differed (~2 % of the
        # planted counts at 1M on 2026-12-08) and the engines' outputs could not be compared.
        corpus = build_corpus(n)
        for engine in engines:
            if engine == "ray":
                start_ray()
            by_engine[engine].append(
                measure(corpus, FILES.get(n, max(8, min(64, n // 15_000))), args.keep, engine)
            )
            if not args.json:
                print(
                    json.dumps(by_engine[engine][-1]), file=sys.stderr, flush=True
                )  # a size can take minutes
    results = by_engine[engines[0]]
    result = {"sizes": sizes, "cores": len(os.sched_getaffinity(0)), "engines": engines,
              "results": {str(r["records"]): r for r in results}, "growth_exponent": growth(results),
              "results_by_engine": {e: {str(r["records"]): r for r in rs} for e, rs in by_engine.items()}}  # fmt: skip
    if {"local", "ray"} <= set(engines):
        result["ray_over_local"] = {str(a["records"]): ray_over_local(a, b)
                                    for a, b in zip(by_engine["local"], by_engine["ray"], strict=True)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{'engine':>6} {'records':>9} {'files':>5} "
        + " ".join(f"{s[:12]:>14}" for s in STAGES)
        + f" {'total':>8} {'peak MB':>8} {'worker MB':>9} {'fix':>6}"
    )
    for engine, rs in by_engine.items():
        for r in rs:
            cells = " ".join(
                f"{r['stages'][s]['wall_s']:>7.1f}s {r['stages'][s]['peak_rss_mb']:>5.0f}M" for s in STAGES
            )
            print(
                f"{engine:>6} {r['records']:>9} {r['files']:>5} {cells} {r['total_s']:>7.1f}s "
                f"{r['peak_rss_mb']:>8.0f} {r['largest_worker_peak_mb']:>9.0f} {r['fix_ratio']:>6.3f}"
            )
    print("growth exponents:", json.dumps(result["growth_exponent"]))
    if "ray_over_local" in result:
        print("ray / local wall:", json.dumps(result["ray_over_local"]))


if __name__ == "__main__":
    main()
