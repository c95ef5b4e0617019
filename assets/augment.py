"""`augmented_corpus`: the final training records, plus the blocking data gates before training."""

from collections import Counter
from pathlib import Path

import dagster as dg

from assets.automation import EAGER_BEHIND_GATES
from assets.dedup import deduplicated_corpus, eval_records
from assets.gates import require_upstream_gates
from assets.metadata import counts_table, md_table
from assets.model import base_model
from assets.sources import reads_config
from assets.versions import latest_data_version
from resources.settings import Paths, TunegraphSettings
from stages import pii
from stages.augmentation import apply_model_paraphrases, augment, model_paraphrases, paraphrase_sources
from stages.config import DataConfig, PipelineConfig
from stages.content import content_hash
from stages.decontamination import decontaminate, record_text
from stages.dedup import residual_duplicates
from stages.evaluation import generate
from stages.model_source import load_saved
from stages.readers import schema_problem
from stages.scan_cache import CleanSet, source_salt
from stages.tables import read_rows, write_json, write_rows

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
        deduplicated_corpus,
        base_model,
        reads_config(
            "data.augmentation",
            "data.seed",
            "data.decontamination",
            "data.max_duplicate_rate",
            "evaluation.max_new_tokens",
        ),
    ],  # fmt: skip
    code_version="augment-3",
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"parquet"},
    description="Train records plus seeded instruction paraphrases (train only; capped share).",
    # The gates run in the asset's own step, so every path that materialises it (automation
    # included) evaluates them on what it wrote: tokenized_dataset's automation waits for them.
    check_specs=[
        dg.AssetCheckSpec(n, asset="augmented_corpus", blocking=True, description=d) for n, d in GATES.items()
    ],
)
def augmented_corpus(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    require_upstream_gates(context)
    cfg, paths = settings.config(), settings.paths()
    train = read_rows(paths.latest("deduplicated_corpus") / "train.parquet")
    aug = cfg.data.augmentation
    new = augment(train, aug.max_share, cfg.data.seed, aug.few_shot_k) if aug.enabled else []
    if aug.enabled and aug.model_paraphrase:
        new = _with_model_paraphrases(context, settings, new, train)
    rows = [{**r, "source_id": r["id"], "augmentation": "none"} for r in train] + new
    methods = Counter(r["augmentation"] for r in rows)
    with paths.publish("augmented_corpus") as out:
        write_rows(out / "train.parquet", rows)
        write_json(out / "summary.json", {"train_examples": len(rows), "methods": dict(methods)})
        version = content_hash(out / "train.parquet")
    context.log.info(f"{len(train)} train records + {len(new)} augmented")
    # Judged on what the next stage will read: the published file, read back.
    gates = training_data_gates(paths, cfg, read_rows(paths.latest("augmented_corpus") / "train.parquet"))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": len(rows),
            "train_examples": len(rows),
            "augmented": len(new),
            "augmented_share": round(len(new) / max(len(rows), 1), 4),
            "methods": counts_table(dict(methods), key="method"),
            "sample": md_table(
                [{"source_id": r["source_id"], "prompt": r["messages"][-2]["content"]} for r in new],
                ["source_id", "prompt"],
            ),
        },
        check_results=gates,
    )


def _with_model_paraphrases(
    context: dg.AssetExecutionContext, settings: TunegraphSettings, new: list[dict], train: list[dict]
) -> list[dict]:
    paths = settings.paths()
    folder = paths.latest("base_model")
    model, tokenizer = load_saved(folder / "model")
    ev = settings.config().evaluation

    def rewrite(prompts: list[str]) -> list[str]:
        context.log.info(f"the base model paraphrases {len(prompts)} instructions")
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return [o["text"] for o in generate(model, tokenizer, convs, ev.max_new_tokens, ev.batch_size)]

    # Keyed by the base model's content version: another model writes other paraphrases.
    cache = paths.home / "cache" / f"paraphrases-{latest_data_version(context.instance, base_model.key)}.json"
    paraphrases = model_paraphrases(paraphrase_sources(new, train), rewrite, cache)
    return apply_model_paraphrases(new, train, paraphrases)


def training_data_gates(paths: Paths, cfg: PipelineConfig, train: list[dict]) -> list[dg.AssetCheckResult]:
    """The blocking gates on the final train records, in one pass (one read of the eval sets)."""
    eval_rows = eval_records(paths)
    return [
        _no_eval_contamination(paths.home, train, eval_rows, cfg.data.decontamination.ngram),
        _enough_examples(train, eval_rows),
        _no_residual_pii(paths.home, train, eval_rows),
        _duplicate_rate(paths.home, train, cfg.data),
        _schema_valid(train, eval_rows),
    ]


def _no_eval_contamination(
    home: Path, train: list[dict], eval_rows: list[dict], n: int
) -> dg.AssetCheckResult:
    # Only records not already found clean against this very eval set are scanned again.
    _, leaked = decontaminate(train, eval_rows, n, home / "cache" / "contamination-clean.json")
    eval_ids = {r["id"] for r in eval_rows}
    same_id = [r for r in train if r["source_id"] in eval_ids]
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


def _enough_examples(train: list[dict], eval_rows: list[dict]) -> dg.AssetCheckResult:
    passed = len(train) >= MIN_TRAIN_EXAMPLES and len(eval_rows) >= MIN_EVAL_EXAMPLES
    return dg.AssetCheckResult(
        check_name="enough_examples",
        passed=passed,
        metadata={
            "train": len(train),
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


def _no_residual_pii(home: Path, train: list[dict], eval_rows: list[dict]) -> dg.AssetCheckResult:
    records = train + eval_rows
    # Texts already found clean by these very patterns are not scanned again.
    cache = CleanSet(home / "cache" / "pii-clean.json", source_salt(pii))
    found: Counter[str] = Counter()
    offenders = []
    for r, hits in zip(records, cache.scan([record_text(r) for r in records], pii.find), strict=True):
        if hits:
            found += hits
            offenders.append({**{k: r.get(k) for k in ("id", "source_file", "source_line")},
                              "types": ", ".join(sorted(hits))})  # fmt: skip
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


def _duplicate_rate(home: Path, train: list[dict], data: DataConfig) -> dg.AssetCheckResult:
    originals = [r for r in train if r["augmentation"] == "none"]  # augmented copies repeat by design
    nd = data.near_dedup
    duplicates = residual_duplicates(originals, home / "cache" / f"minhash-{nd.ngram}-{nd.num_perm}.npz",
                                     nd.threshold, nd.ngram, nd.num_perm, DUPLICATE_CHECK_MIN_WORDS)  # fmt: skip
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


def _schema_valid(train: list[dict], eval_rows: list[dict]) -> dg.AssetCheckResult:
    bad = [
        {**{k: r.get(k) for k in ("id", "source_file", "source_line")}, "problem": problem}
        for r in train + eval_rows
        if (problem := schema_problem(r)) is not None
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
