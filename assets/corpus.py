"""Per landing file: `raw_corpus` (records as read) and `clean_corpus` (normalised, redacted, filtered)."""

from collections import Counter
from pathlib import Path

import dagster as dg

from assets.engine import data_engine
from assets.metadata import counts_table, md_table
from assets.partitions import landing_files
from assets.sources import landing_file, reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from stages import pii
from stages.cleaning import Rules, clean_all
from stages.code_version import code_version
from stages.content import content_hash, file_hash
from stages.dedup import with_keys
from stages.readers import ReadResult, read_file
from stages.tables import read_json, read_rows, write_json, write_rows


@dg.asset(
    group_name="data",
    partitions_def=landing_files,
    deps=[landing_file, reads_config("corpus")],
    code_version=code_version(
        "stages.readers", "stages.pii", "stages.content", "stages.tables", asset_module=__name__
    ),
    kinds={"parquet"},
    description="Records read from one landing file, with source file and line; unreadable rows quarantined.",
)
def raw_corpus(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    key = context.partition_key
    source = paths.landing / key
    removed = not source.is_file()
    # A deleted file is read as empty: its records leave the training set the way an edit's do.
    result = ReadResult([], []) if removed else read_file(source, key, cfg.corpus.format, cfg.corpus.fields)
    quarantined = Counter(q["reason"] for q in result.quarantine)
    out = new_output(context, paths)
    write_rows(out / "records.parquet", result.records)
    write_rows(out / "quarantine.parquet", result.quarantine)
    write_json(
        out / "summary.json",
        {
            "content_hash": None if removed else file_hash(source),
            "removed": removed,
            "documents_in": len(result.records) + len(result.quarantine),
            "records": len(result.records),
            "quarantined": dict(quarantined),
        },
    )
    version = content_hash(out / "records.parquet", out / "quarantine.parquet")
    context.log.info(
        f"{key}: removed from landing/, no records" if removed
        else f"{key}: {len(result.records)} records, {len(result.quarantine)} quarantined"
    )  # fmt: skip
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "removed": removed,
            "dagster/row_count": len(result.records),
            "records": len(result.records),
            "quarantined": len(result.quarantine),
            "quarantine_reasons": counts_table(dict(quarantined)),
            "schemas": counts_table(dict(Counter(r["schema"] for r in result.records)), key="schema"),
            "sample": md_table(
                [
                    {
                        "id": r["id"],
                        "line": r["source_line"],
                        "response": pii.redact(r["messages"][-1]["content"]),
                    }
                    for r in result.records[:5]  # the table shows 5: redacting all took a third of this step
                ],
                ["id", "line", "response"],
            ),
            **recorded(out),
        },
    )


@dg.asset(
    group_name="data",
    partitions_def=landing_files,
    deps=[reads_config("data.cleaning")],
    code_version=code_version(
        "stages.cleaning",
        "stages.pii",
        "stages.dedup",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
    kinds={"parquet"},
    description="Unicode repaired, markup stripped, hard wraps joined, PII redacted, filter rules applied.",
)
def clean_corpus(
    context: dg.AssetExecutionContext, settings: TunegraphSettings, raw_corpus: Path
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    key = context.partition_key
    records = read_rows(raw_corpus / "records.parquet")
    raw = read_json(raw_corpus / "summary.json")
    result = clean_all(records, Rules(**cfg.data.cleaning.model_dump()), data_engine(context, cfg))
    dropped = Counter(d["reason"] for d in result.dropped)
    out = new_output(context, paths)
    write_rows(out / "records.parquet", with_keys(result.kept))
    write_rows(out / "quarantine.parquet", result.dropped)
    write_json(
        out / "summary.json",
        {
            # The file's whole account, so the cross-file stages read it from this one input:
            # documents read, quarantined by the reader, dropped here, kept.
            "content_hash": raw["content_hash"],
            "documents_in": raw["documents_in"],
            "quarantined": raw["quarantined"],
            "records_in": len(records),
            "kept": len(result.kept),
            "dropped": dict(dropped),
            "pii": dict(result.pii),
        },
    )
    version = content_hash(out / "records.parquet", out / "quarantine.parquet")
    # Accounting: nothing disappears without a reason.
    assert len(records) == len(result.kept) + len(result.dropped)
    context.log.info(
        f"{key}: kept {len(result.kept)}/{len(records)}, dropped {dict(dropped)}, pii {dict(result.pii)}"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "records_in": len(records),
            "engine": cfg.data.engine,  # where cleaning ran; both engines give these same records
            "dagster/row_count": len(result.kept),
            "kept": len(result.kept),
            "dropped": counts_table(dict(dropped)),
            "pii_redacted": counts_table(dict(result.pii), key="type"),
            "sample": md_table(
                [{"id": r["id"], "response": r["messages"][-1]["content"]} for r in result.kept],
                ["id", "response"],
            ),
            **recorded(out),
        },
    )
