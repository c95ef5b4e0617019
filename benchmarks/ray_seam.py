"""Ray tasks or Ray Data behind the data stages' seam: per-record cleaning of scale.py's corpus.

    python benchmarks/ray_seam.py [--records 100000] [--json]

The same `clean_records` over the same records, results in input order, three ways on this host's
cores: the local engine (forked workers, stages/workers.py), Ray tasks over chunks (what
data.engine: ray uses, stages/ray_engine.py), and Ray Data (`from_items` + `map_batches` with
order preserved, the records carried as Arrow and handed back as Python dicts). Ray is started
before timing. Prints wall seconds and each Ray way's ratio to local.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.scale import build_corpus  # noqa: E402
from stages.cleaning import Rules, clean_all, clean_records  # noqa: E402
from stages.workers import Engine  # noqa: E402


def as_records(n: int) -> list[dict[str, Any]]:
    rows, _ = build_corpus(n)
    return [{"id": r["id"], "source_file": "bench.jsonl", "source_line": i, "schema": "instruction",
             "messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]}
            for i, r in enumerate(rows)]  # fmt: skip


def with_ray_data(records: list[dict[str, Any]], rules: Rules) -> list[str | None]:
    """The drop reason of each record (None: kept), in order, through Ray Data."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True

    def batch(table: Any) -> dict[str, list]:  # noqa: ANN401
        rows = table.to_pylist()
        result = clean_records(rows, rules)
        dropped = {d["detail"]: d["reason"] for d in result.dropped}
        return {"reason": [dropped.get(r["id"]) for r in rows]}

    ds = ray.data.from_items(records).map_batches(batch, batch_format="pyarrow", batch_size=2048)
    return [row["reason"] for row in ds.take_all()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records, rules = as_records(args.records), Rules()
    from stages.ray_engine import connect

    timings, reasons = {}, {}
    for way in ("local", "ray_tasks", "ray_data"):
        if way != "local":
            connect(Engine("ray"))
        start = time.perf_counter()
        if way == "ray_data":
            reasons[way] = with_ray_data(records, rules)
        else:
            result = clean_all(records, rules, Engine("ray") if way == "ray_tasks" else Engine())
            dropped = {d["detail"]: d["reason"] for d in result.dropped}
            reasons[way] = [dropped.get(r["id"]) for r in records]
        timings[way] = round(time.perf_counter() - start, 2)
    assert reasons["ray_tasks"] == reasons["local"] == reasons["ray_data"], "the three ways disagree"
    out = {"records": args.records, "wall_s": timings,
           "ratio_to_local": {k: round(v / timings["local"], 3) for k, v in timings.items()}}  # fmt: skip
    print(
        json.dumps(out)
        if args.json
        else "\n".join(f"{k:>10} {v:>7.2f} s  x{out['ratio_to_local'][k]:.2f}" for k, v in timings.items())
    )


if __name__ == "__main__":
    main()
