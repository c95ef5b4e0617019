"""Where data.engine: ray spends its time, one seam at a time, beside the local engine.

    python benchmarks/ray_profile.py [--records 100000] [--json]

scale.py's corpus (as records, as ray_seam.py builds them) through each place the data stages hand
work to an engine, local then Ray, the results asserted equal: cleaning per landing file (32 files
of records, as scale.py writes them at 100k), MinHash signatures, the near-dedup join, the
decontamination scan (5 % of the records held out) and tokenising (the bundled tokenizer, a fresh
cache). For Ray, each call's log line splits its wall into the driver's sending (pickling chunks into
the object store), the time inside the stage's function (summed over tasks) and the driver's
receiving (unpickling results); those lines are printed as they come. Ray is started first, not timed.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.ray_seam import as_records  # noqa: E402
from stages.chat import tokenize_cached  # noqa: E402
from stages.cleaning import Rules, clean_all  # noqa: E402
from stages.content import key_bytes, record_key  # noqa: E402
from stages.decontamination import _all_scanned, record_text  # noqa: E402
from stages.dedup import cached_signatures  # noqa: E402
from stages.model_source import _smollm2_tokenizer  # noqa: E402
from stages.near_dedup import lsh_join  # noqa: E402
from stages.workers import Engine  # noqa: E402

FILES = 32  # scale.py's landing files at 100k records


def seams(records: list[dict[str, Any]], tokenizer: Any, engine: Engine, tmp: Path) -> dict[str, Any]:  # noqa: ANN401
    """Each seam's (wall seconds, result) with this engine."""
    out: dict[str, Any] = {}

    def timed(name: str, run: Callable[[], Any]) -> Any:  # noqa: ANN401
        start = time.perf_counter()
        result = run()
        out[name] = (round(time.perf_counter() - start, 2), result)
        return result

    size = -(-len(records) // FILES)
    files = [records[a : a + size] for a in range(0, len(records), size)]

    def clean() -> tuple[list, list, dict]:
        kept, dropped, pii = [], [], {}
        for part in files:
            result = clean_all(part, Rules(), engine)
            kept += result.kept
            dropped += result.dropped
            for kind, count in result.pii.items():
                pii[kind] = pii.get(kind, 0) + count
        return kept, dropped, pii

    kept, _, _ = timed("clean", clean)
    texts = [r["messages"][-1]["content"] for r in kept]
    keys = key_bytes([record_key(r) for r in kept])
    _, signatures = timed("signatures", lambda: cached_signatures(
        keys, lambda at: [texts[i] for i in at], tmp / f"sig-{engine.kind}", 128, 3, 0, engine))  # fmt: skip

    def join() -> list[int | None]:
        if engine.kind == "local":
            return lsh_join(signatures, 0.5)
        from stages import ray_engine

        return ray_engine.lsh_join(signatures, 0.5, engine)

    timed("near_dedup_join", join)
    held_out = len(kept) // 20
    full = [record_text(r) for r in kept]
    timed("decontamination", lambda: _all_scanned(full[held_out:], full[:held_out], 13, engine))
    batches = [pa.Table.from_pylist(kept[a : a + 10_000]) for a in range(0, len(kept), 10_000)]
    timed(
        "tokenize", lambda: tokenize_cached(tokenizer, batches, tmp / f"tok-{engine.kind}", engine)[0].table()
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records, tokenizer = as_records(args.records), _smollm2_tokenizer()
    from stages.ray_engine import connect

    on_ray = Engine("ray", log=lambda line: print(line, file=sys.stderr, flush=True))
    connect(on_ray)
    with tempfile.TemporaryDirectory() as tmp:
        local = seams(records, tokenizer, Engine(), Path(tmp))
        ray = seams(records, tokenizer, on_ray, Path(tmp))
    for name, (_, result) in local.items():
        same = result.equals(ray[name][1]) if isinstance(result, pa.Table) else _equal(result, ray[name][1])
        assert same, f"{name}: ray's result differs from local's"
    wall = {name: {"local_s": local[name][0], "ray_s": ray[name][0],
                   "ratio": round(ray[name][0] / local[name][0], 3)} for name in local}  # fmt: skip
    out = {"records": args.records, "seams": wall}
    print(json.dumps(out) if args.json else "\n".join(f"{k:>16} {v}" for k, v in wall.items()))


def _equal(a: Any, b: Any) -> bool:  # noqa: ANN401
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


if __name__ == "__main__":
    main()
