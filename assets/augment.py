"""`augmented_corpus`: the final training records, plus the blocking data gates before training."""

from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from assets.automation import EAGER_BEHIND_GATES
from assets.dedup import eval_records
from assets.engine import data_engine
from assets.metadata import counts_table, md_table
from assets.sources import reads_config
from assets.versions import latest_data_version
from resources.outputs import new_output, output_folder, recorded
from resources.settings import Paths, TunegraphSettings
from stages import pii
from stages.augmentation import (
    TrainColumns,
    apply_model_paraphrases,
    augment_table,
    model_paraphrases,
    paraphrase_sources,
)
from stages.code_version import code_version
from stages.config import DataConfig, PipelineConfig
from stages.content import content_hash
from stages.decontamination import contamination, record_text
from stages.dedup import residual_duplicate_of
from stages.evaluation import generate
from stages.inference import Placement, inference_placement, load_saved
from stages.readers import schema_problem
from stages.scan_cache import CleanSet, Texts
from stages.tables import with_new_records, write_json, write_table
from stages.workers import LOCAL, Engine

MIN_TRAIN_EXAMPLES = 8
MIN_EVAL_EXAMPLES = 2

GATES = {
    "no_eval_contamination": "No train record shares an n-gram or id with eval.",
    "enough_examples": "Train and eval sets are big enough to learn from.",
    "no_residual_pii": "No PII pattern survives into training data.",
    "duplicate_rate": "Original train responses that (near-)duplicate an earlier one stay under data.max_duplicate_rate.",
    "schema_valid": "Every record is a valid conversation ending with an answer.",
}


@dg.asset(
    group_name="data",
    # data.decontamination and data.max_duplicate_rate are read by its gates, which rerun with it;
    # evaluation.max_new_tokens by the optional model paraphrases.
    deps=[
        "base_model",  # read only for model paraphrases (data.augmentation.model_paraphrase)
        reads_config(
            "data.augmentation",
            "data.seed",
            "data.decontamination",
            "data.max_duplicate_rate",
            "evaluation.max_new_tokens",
        ),
    ],  # fmt: skip
    code_version=code_version(
        "stages.augmentation",
        "stages.evaluation",
        "stages.inference",
        "stages.decontamination",
        "stages.pii",
        "stages.dedup",
        "stages.readers",
        "stages.scan_cache",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"parquet"},
    description="Train records plus seeded instruction paraphrases (train only; capped share).",
    # The gates run in the asset's own step, so every path that materialises it (automation
    # included) evaluates them on what it wrote: tokenized_dataset's automation waits for them.
    check_specs=[
        dg.AssetCheckSpec(n, asset="augmented_corpus", blocking=True, description=d) for n, d in GATES.items()
    ],
)
def augmented_corpus(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    deduplicated_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    # As an Arrow table: only the records chosen for augmentation become Python dicts.
    train = pq.read_table(deduplicated_corpus / "train.parquet")
    aug = cfg.data.augmentation
    new = augment_table(train, aug.max_share, cfg.data.seed, aug.few_shot_k) if aug.enabled else []
    placement = inference_placement(cfg) if aug.enabled and aug.model_paraphrase else None
    if placement is not None:
        new = _with_model_paraphrases(context, settings, new, train.to_pylist(), placement)
    methods = Counter({"none": train.num_rows} if train.num_rows else {}) + Counter(
        r["augmentation"] for r in new
    )
    out = new_output(context, paths)
    write_table(out / "train.parquet", with_new_records(train, new))
    write_json(out / "summary.json", {"train_examples": train.num_rows + len(new), "methods": dict(methods)})
    version = content_hash(out / "train.parquet")
    context.log.info(f"{train.num_rows} train records + {len(new)} augmented")
    n_rows = train.num_rows + len(new)
    del train
    # Judged on what the next stage will read: the written file, read back.
    gates = training_data_gates(
        paths,
        cfg,
        TrainColumns.read(out / "train.parquet"),
        eval_records(deduplicated_corpus),
        data_engine(context, cfg),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": n_rows,
            "engine": cfg.data.engine,  # where the gates' scans ran
            "train_examples": n_rows,
            "augmented": len(new),
            "augmented_share": round(len(new) / max(n_rows, 1), 4),
            **(placement.as_metadata() if placement else {}),  # where the base model paraphrased
            "methods": counts_table(dict(methods), key="method"),
            "sample": md_table(
                [{"source_id": r["source_id"], "prompt": r["messages"][-2]["content"]} for r in new],
                ["source_id", "prompt"],
            ),
            **recorded(out),
        },
        check_results=gates,
    )


def _with_model_paraphrases(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    new: list[dict],
    train: list[dict],
    placement: Placement,
) -> list[dict]:
    paths = settings.paths()
    base_model = output_folder(context.instance, "base_model")  # Dagster's record, as an input would be
    if base_model is None:
        raise dg.Failure(
            "data.augmentation.model_paraphrase needs the base model: materialise base_model first"
        )
    model, tokenizer = load_saved(base_model / "model", placement)
    ev = settings.config().evaluation

    def rewrite(prompts: list[str]) -> list[str]:
        context.log.info(f"the base model paraphrases {len(prompts)} instructions")
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return [o["text"] for o in generate(model, tokenizer, convs, ev.max_new_tokens, ev.batch_size)]

    # Keyed by the base model's content version: another model writes other paraphrases.
    cache = paths.home / "cache" / f"paraphrases-{latest_data_version(context.instance, 'base_model')}.json"
    paraphrases = model_paraphrases(paraphrase_sources(new, train), rewrite, cache)
    return apply_model_paraphrases(new, train, paraphrases)


def training_data_gates(
    paths: Paths, cfg: PipelineConfig, train: TrainColumns, eval_rows: list[dict], engine: Engine = LOCAL
) -> list[dg.AssetCheckResult]:
    """The blocking gates on the final train records against every eval record, in one pass."""
    return [
        _no_eval_contamination(paths.home, train, eval_rows, cfg.data.decontamination.ngram, engine),
        _enough_examples(train, eval_rows),
        _no_residual_pii(paths.home, train, eval_rows, engine),
        _duplicate_rate(paths, train, cfg.data, engine),
        _schema_valid(train, eval_rows),
    ]


def _no_eval_contamination(
    home: Path, train: TrainColumns, eval_rows: list[dict], n: int, engine: Engine = LOCAL
) -> dg.AssetCheckResult:
    # Only records not already found clean against this very eval set are scanned again (by this
    # gate or by deduplicated_corpus's decontamination, which shares the file).
    found = contamination(train.texts, eval_rows, n, home / "cache" / "contamination-clean.json", engine)
    leaked = [
        {**r, "shared_ngram": shared}
        for r, shared in zip(train.rows(list(found)), found.values(), strict=True)
    ]
    eval_ids = {r["id"] for r in eval_rows}
    same_id = train.rows([i for i, source in enumerate(train.source_ids) if source in eval_ids])
    passed = not leaked and not same_id
    return dg.AssetCheckResult(
        check_name="no_eval_contamination",
        passed=passed,
        metadata={
            "contaminated_train_records": len(leaked),
            "train_ids_in_eval": len(same_id),
            "examples": md_table(
                [{"id": r["id"], "shared_ngram": r["shared_ngram"]} for r in leaked], ["id", "shared_ngram"]
            ),
            **(
                {}
                if passed
                else {
                    "fix": f"remove or rewrite {where(leaked + same_id)}, which share {n}-word "
                    "passages or ids with the eval sets, or set data.decontamination.enabled: true"
                }
            ),
        },
    )


def where(records: list[dict], shown: int = 3) -> str:
    """'id (file:line), ...' for the first few records: where a user goes to fix them."""
    named = [f"{r['id']} ({r.get('source_file')}:{r.get('source_line')})" for r in records[:shown]]
    more = f" and {len(records) - shown} more" if len(records) > shown else ""
    return ", ".join(named) + more


def _enough_examples(train: TrainColumns, eval_rows: list[dict]) -> dg.AssetCheckResult:
    passed = len(train.ids) >= MIN_TRAIN_EXAMPLES and len(eval_rows) >= MIN_EVAL_EXAMPLES
    return dg.AssetCheckResult(
        check_name="enough_examples",
        passed=passed,
        metadata={
            "train": len(train.ids),
            "eval": len(eval_rows),
            "minimum_train": MIN_TRAIN_EXAMPLES,
            "minimum_eval": MIN_EVAL_EXAMPLES,
            **(
                {}
                if passed
                else {
                    "fix": "add landing files, or see the data assets' `dropped` counts for what "
                    "the cleaning rules removed; raise data.eval_fraction for a bigger eval set"
                }
            ),
        },
    )


def _no_residual_pii(
    home: Path, train: TrainColumns, eval_rows: list[dict], engine: Engine = LOCAL
) -> dg.AssetCheckResult:
    # Texts already found clean by these very patterns are not scanned again.
    cache = CleanSet(home / "cache" / "pii-clean.json", code_version("stages.pii"))
    hits = cache.scan(train.texts + Texts.of([record_text(r) for r in eval_rows]), pii.find, engine)
    where_found = [i for i, hit in enumerate(hits) if hit]
    found: Counter[str] = sum((hits[i] for i in where_found), Counter())  # a Counter a record cost ~2 s at 1M
    records = train.rows([i for i in where_found if i < len(train.ids)]) + [
        eval_rows[i - len(train.ids)] for i in where_found if i >= len(train.ids)
    ]
    offenders = [{**{k: r.get(k) for k in ("id", "source_file", "source_line")},
                  "types": ", ".join(sorted(hits[i]))} for i, r in zip(where_found, records, strict=True)]  # fmt: skip
    return dg.AssetCheckResult(
        check_name="no_residual_pii",
        passed=not found,
        metadata={
            "matches": counts_table(dict(found), key="type"),
            "records": md_table(offenders, ["id", "types"]),
            **(
                {"fix": f"remove the personal data from {where(offenders)}; redaction missed it"}
                if found
                else {}
            ),
        },
    )


DUPLICATE_CHECK_MIN_WORDS = 8  # below near dedup's 16: the check sees the short copies dedup leaves


def _duplicate_rate(
    paths: Paths, train: TrainColumns, data: DataConfig, engine: Engine = LOCAL
) -> dg.AssetCheckResult:
    originals = train.originals  # augmented copies repeat by design
    nd = data.near_dedup
    pairs = residual_duplicate_of(train.response_hashes, train.response_keys, train.responses,
                                  paths.signature_cache(nd.ngram, nd.num_perm),
                                  nd.threshold, nd.ngram, nd.num_perm, DUPLICATE_CHECK_MIN_WORDS, engine)  # fmt: skip
    duplicates = [{"id": train.ids[originals[i]], "duplicate_of": train.ids[originals[j]]} for i, j in pairs]
    rate = len(duplicates) / max(len(originals), 1)
    passed = rate <= data.max_duplicate_rate
    return dg.AssetCheckResult(
        check_name="duplicate_rate",
        passed=passed,
        metadata={
            "duplicate_rate": round(rate, 4),
            "limit": data.max_duplicate_rate,
            "duplicates": len(duplicates),
            "originals": len(originals),
            "examples": md_table(
                [{"id": d["id"], "duplicate_of": d["duplicate_of"]} for d in duplicates],
                ["id", "duplicate_of"],
            ),  # fmt: skip
            **(
                {}
                if passed
                else {
                    "fix": "drop the duplicates listed in `examples` (or enable data.near_dedup, "
                    "lower its min_words), or raise data.max_duplicate_rate"
                }
            ),
        },
    )


def _schema_valid(train: TrainColumns, eval_rows: list[dict]) -> dg.AssetCheckResult:
    rows = train.rows(list(train.problems)) + eval_rows
    problems = [*train.problems.values(), *(schema_problem(r) for r in eval_rows)]
    bad = [
        {**{k: r.get(k) for k in ("id", "source_file", "source_line")}, "problem": problem}
        for r, problem in zip(rows, problems, strict=True)
        if problem is not None
    ]
    return dg.AssetCheckResult(
        check_name="schema_valid",
        passed=not bad,
        metadata={
            "invalid": len(bad),
            "examples": md_table(bad, ["id", "problem"]),
            **({"fix": f"fix or remove {where(bad)} ({bad[0]['problem']})"} if bad else {}),
        },
    )
