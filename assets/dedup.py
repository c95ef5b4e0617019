"""`deduplicated_corpus`: all clean partitions joined, deduplicated, split, decontaminated."""

from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.automation import EAGER_BEHIND_GATES
from assets.dataset_card import corpus_accounting
from assets.engine import data_engine
from assets.metadata import counts_table, md_table
from assets.sources import reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from stages.cleaning import Rules, clean_records
from stages.code_version import code_version
from stages.columns import last_contents_at, record_keys, record_texts
from stages.content import content_hash, key_bytes
from stages.decontamination import contamination
from stages.dedup import exact_duplicate_of, near_duplicate_of, with_column
from stages.readers import read_file
from stages.scan_cache import Texts
from stages.split import eval_scores
from stages.tables import read_json, read_rows, write_json, write_rows, write_table


@dg.asset(
    group_name="data",
    # corpus and data.cleaning: data.eval_files are read and cleaned like the landing files.
    deps=[
        reads_config(
            "corpus",
            "data.cleaning",
            "data.eval_fraction",
            "data.eval_files",
            "data.seed",
            "data.max_train_examples",
            "data.near_dedup",
            "data.decontamination",
        ),
    ],  # fmt: skip
    code_version=code_version(
        "stages.dedup",
        "stages.near_dedup",
        "stages.columns",
        "stages.split",
        "stages.decontamination",
        "stages.scan_cache",
        "stages.readers",
        "stages.cleaning",
        "stages.content",
        "stages.tables",
        "assets.dataset_card",
        asset_module=__name__,
    ),
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"parquet"},
    description="Exact dedup across all landing files (first kept), stable train/eval split, n-gram decontamination.",
    # Checked in the asset's own step: a separate check step costs a one-record fix ~0.1 s of events.
    check_specs=[
        dg.AssetCheckSpec(
            "accounting_holds",
            asset="deduplicated_corpus",
            blocking=True,
            description="Accounting: every document read is kept or dropped with a named reason.",
        )
    ],
)
def deduplicated_corpus(
    context: dg.AssetExecutionContext, settings: TunegraphSettings, clean_corpus: dict[str, Path]
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    keys = sorted(clean_corpus)
    if not keys:
        raise dg.Failure(f"no landing files registered: put files in {paths.landing} and run `tunegraph run`")
    # One Arrow table, not a dict per record (those were ~2 KB each: 2 GB at 1M records); the
    # decisions take lists of the columns they read, and the outputs are rows taken from it.
    # In one chunk: a take from 64 chunks of nested rows combined them first, every time (0.27 s
    # for one row at 1M records, and dedup takes rows six times); combined once it costs 0.25 s.
    records = pa.concat_tables(
        [_clean_partition(clean_corpus[key], key) for key in keys], promote_options="permissive"
    ).combine_chunks()
    engine = data_engine(context, cfg)
    ids = records.column("id").to_pylist() if records.num_rows else []
    every_key = record_keys(records)
    exact = exact_duplicate_of(records.column("response_hash").to_pylist() if records.num_rows else [])
    kept = [i for i in range(records.num_rows) if i not in exact]
    near: dict[int, int] = {}
    if cfg.data.near_dedup.enabled:
        nd = cfg.data.near_dedup
        cache = paths.signature_cache(nd.ngram, nd.num_perm)
        kept_keys = key_bytes([every_key[i] for i in kept])

        def answers(rows: list[int]) -> list[str]:  # of kept[rows]: asked only for the cache's misses
            return last_contents_at(records, [kept[r] for r in rows])

        near = {kept[i]: kept[j] for i, j in near_duplicate_of(kept_keys, answers, cache, nd.threshold, nd.ngram,
                                                               nd.num_perm, nd.min_words, engine).items()}  # fmt: skip
        del kept_keys
        kept = [i for i in kept if i not in near]
    held = (eval_scores([ids[i] for i in kept], cfg.data.seed) < cfg.data.eval_fraction).tolist()
    train = [i for i, h in zip(kept, held, strict=True) if not h]
    held_out = records.take(
        pa.array([i for i, h in zip(kept, held, strict=True) if h], pa.int64())
    ).to_pylist()
    eval_sets = {"held_out": held_out, **_eval_files(cfg.data.eval_files, settings)}
    all_eval = [r for rows in eval_sets.values() for r in rows]
    contaminated: dict[int, str] = {}
    if cfg.data.decontamination.enabled:
        # Texts found clean, kept for a rerun; shared with the no_eval_contamination gate, which asks
        # the same question of the same eval sets (the salt), so it scans only augmented records.
        cache = paths.home / "cache" / "contamination-clean.json"
        # Texts of unseen keys only are read back from the array (C++ joins, no dict per record).
        texts = Texts([every_key[i] for i in train], record_texts(records).take(pa.array(train, pa.int64())))
        found = contamination(texts, all_eval, cfg.data.decontamination.ngram, cache, engine)
        del texts
        contaminated = {train[i]: shared for i, shared in found.items()}
        train = [i for i in train if i not in contaminated]
    capped = 0
    if cfg.data.max_train_examples is not None:
        capped = max(0, len(train) - cfg.data.max_train_examples)
        train = train[: cfg.data.max_train_examples]
    duplicates = [{"id": ids[i], "duplicate_of": ids[j]} for i, j in exact.items()]
    sources = (
        Counter(records.column("source_file").take(pa.array(train, pa.int64())).to_pylist()) if train else {}
    )
    out = new_output(context, paths)
    write_table(out / "train.parquet", _rows(records, train))
    (out / "eval").mkdir()
    for name, rows in eval_sets.items():
        write_rows(out / "eval" / f"{name}.parquet", rows)
    write_table(
        out / "duplicates.parquet",
        _rows(records, list(exact), duplicate_of=[ids[j] for j in exact.values()]),
    )
    write_table(
        out / "near_duplicates.parquet",
        _rows(records, list(near), duplicate_of=[ids[j] for j in near.values()]),
    )
    write_table(
        out / "contaminated.parquet",
        _rows(records, list(contaminated), shared_ngram=list(contaminated.values())),
    )
    summary = {
        "partitions": keys,
        "records_in": records.num_rows,
        "duplicates": len(duplicates),
        "near_duplicates": len(near),
        "contaminated": len(contaminated),
        "capped": capped,
        "train_examples": len(train),
        "eval_examples": {name: len(rows) for name, rows in eval_sets.items()},
    }
    files = {key: read_json(clean_corpus[key] / "summary.json") for key in keys}
    summary["accounting"] = corpus_accounting(summary, files)
    # What a model's lineage names: each landing file's content, as read into this version.
    summary["landing_files"] = {key: files[key]["content_hash"] for key in keys}
    write_json(out / "summary.json", summary)
    version = content_hash(*(out / f for f in DATA_FILES), out / "eval")
    context.log.info(
        f"{records.num_rows} records from {len(keys)} files: {len(duplicates)} duplicates, "
        f"{len(contaminated)} contaminated, {len(train)} train, {len(held_out)} held out"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "partitions": len(keys),
            "engine": cfg.data.engine,
            "dagster/row_count": len(train),
            "records_in": records.num_rows,
            "duplicates": len(duplicates),
            "near_duplicates": len(near),
            "contaminated": len(contaminated),
            "train_examples": len(train),
            "eval_examples": counts_table({n: len(r) for n, r in eval_sets.items()}, key="eval set"),
            "duplicate_examples": md_table(
                [{"id": d["id"], "duplicate_of": d["duplicate_of"]} for d in duplicates],
                ["id", "duplicate_of"],
            ),
            "sources": counts_table(dict(sources), key="landing file"),
            **recorded(out),
        },
        check_results=[_accounting_holds(summary["accounting"])],
    )


DATA_FILES = ("train.parquet", "duplicates.parquet", "near_duplicates.parquet", "contaminated.parquet")


def eval_records(deduplicated: Path) -> list[dict]:
    """Every held-out record of a deduplicated_corpus output, all eval sets together."""
    return [r for p in sorted((deduplicated / "eval").glob("*.parquet")) for r in read_rows(p)]


def _clean_partition(folder: Path, key: str) -> pa.Table:
    rows = pq.read_table(folder / "records.parquet")
    if rows.num_rows and "response_hash" not in rows.column_names:
        raise dg.Failure(
            f"clean_corpus[{key}] was written by an older tunegraph (no response_hash column): "
            "rematerialise clean_corpus for it (`tunegraph run` does, or 'Materialize unsynced' in the UI)"
        )
    return rows if rows.num_rows else pa.table({})


def _rows(records: pa.Table, at: list[int], **columns: list[str]) -> pa.Table:
    """The records at these rows, with extra string columns (duplicate_of, shared_ngram) after."""
    table = records.take(pa.array(at, pa.int64()))
    for name, values in columns.items():
        table = with_column(table, name, values)
    return table


def _eval_files(files: list[str], settings: TunegraphSettings) -> dict[str, list[dict]]:
    """User eval sets (data.eval_files), read and cleaned like the corpus; paths relative to the config."""
    cfg = settings.config()
    sets = {}
    for name in files:
        path = settings.eval_file(name)
        if not path.is_file():
            raise dg.Failure(f"data.eval_files: {path} not found; fix the path in {settings.config_path}")
        read = read_file(path, path.name, "auto", cfg.corpus.fields)
        cleaned = clean_records(read.records, Rules(**cfg.data.cleaning.model_dump()))
        sets[path.stem] = [{**r, "id": f"eval:{path.name}:{r['id']}"} for r in cleaned.kept]
    return sets


def _accounting_holds(acc: dict) -> dg.AssetCheckResult:
    dropped = sum(acc["dropped"].values())
    passed = acc["documents_in"] == acc["documents_kept"] + dropped
    return dg.AssetCheckResult(
        check_name="accounting_holds",
        passed=passed,
        metadata={"documents_in": acc["documents_in"], "documents_kept": acc["documents_kept"],
                  "dropped": dropped, "by_reason": counts_table(acc["dropped"]),
                  **({} if passed else {"fix": f"{acc['documents_in'] - acc['documents_kept'] - dropped} documents "
                                               "are neither kept nor dropped with a reason: a stage lost records "
                                               "(a bug); rematerialise raw_corpus and clean_corpus"})},
    )  # fmt: skip
