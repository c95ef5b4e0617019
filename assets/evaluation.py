"""`model_evaluation`: base-model prompting baselines vs fine-tuned vs champion; gated promotion."""

import gc
import time
from typing import Any

import dagster as dg
import mlflow
from mlflow.entities import Metric

from assets.augment import augmented_corpus
from assets.dedup import deduplicated_corpus
from assets.metadata import md_table
from assets.model import base_model, fine_tuned_model
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages import metrics
from stages.config import EvaluationConfig
from stages.evaluation import generate, references, response_nll, variant_conversations
from stages.model_source import load_saved
from stages.promotion import decide
from stages.split import eval_score
from stages.tables import read_json, read_rows, write_json

BASE_VARIANTS = ("base_zero_shot", "base_system_prompt", "base_few_shot")


@dg.asset(
    group_name="evaluation",
    deps=[fine_tuned_model, base_model, deduplicated_corpus, augmented_corpus],
    code_version="evaluate-1",
    kinds={"pytorch", "mlflow"},
    description="Held-out perplexity, ROUGE-L and exact match for each variant; champion alias if better.",
)
def model_evaluation(
    context: dg.AssetExecutionContext, settings: TunegraphSettings, mlflow_tracking: MlflowTracking
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    ev = cfg.evaluation
    records = read_rows(paths.latest("deduplicated_corpus") / "eval" / "held_out.parquet")[: ev.max_examples]
    if not records:
        raise dg.Failure("the held-out split is empty: raise data.eval_fraction or add landing files")
    shots = _few_shot_examples(
        read_rows(paths.latest("augmented_corpus") / "train.parquet"), ev.few_shot_k, cfg.data.seed
    )
    registry = read_json(paths.latest("fine_tuned_model") / "mlflow.json")
    client = mlflow_tracking.client()
    name = registry["model_name"]
    champion_version = _alias_version(client, name, "champion")

    results: dict[str, dict[str, Any] | None] = {}
    generations: dict[str, list[str]] = {}
    models = {
        "base": paths.latest("base_model") / "model",
        "fine_tuned": paths.latest("fine_tuned_model") / "model",
    }
    if champion_version is not None:
        models["champion"] = client.get_model_version(name, champion_version).tags["tunegraph.model_dir"]
    for source, folder in models.items():
        model, tokenizer = load_saved(folder)
        model.eval()
        variants = BASE_VARIANTS if source == "base" else (source,)
        for variant in variants:
            context.log.info(f"evaluating {variant} on {len(records)} held-out examples")
            convs = variant_conversations(variant, records, shots, ev.system_prompt)
            results[variant], generations[variant] = _score(model, tokenizer, convs, records, ev, variant)
        del model
        gc.collect()
    results.setdefault("champion", None)

    candidate = results["fine_tuned"]
    champion = results["champion"]
    promoted, reason = decide(
        candidate, champion, {v: results[v] for v in BASE_VARIANTS}, ev.primary_metric, ev.promotion_margin
    )
    version = registry["version"]
    client.set_registered_model_alias(name, "champion" if promoted else "challenger", version)
    client.set_model_version_tag(name, version, "tunegraph.promotion", reason)
    new_champion = version if promoted else champion_version
    context.log.info(f"{'promoted' if promoted else 'not promoted'}: {reason}")

    table = [{"variant": v, **(m or {})} for v, m in results.items()]
    samples = [
        {"prompt": r["messages"][-2]["content"], "reference": ref, "base": b, "fine_tuned": f}
        for r, ref, b, f in zip(
            records,
            references(records),
            generations["base_zero_shot"],
            generations["fine_tuned"],
            strict=True,
        )
    ][:8]
    _log_to_mlflow(mlflow_tracking, registry["mlflow_run_id"], results, table, samples)
    summary = {
        "evaluation": results,
        "primary_metric": ev.primary_metric,
        "registry": {
            "model_name": name,
            "version": version,
            "champion_version": new_champion,
            "previous_champion_version": champion_version,
            "promoted": promoted,
            "reason": reason,
        },
        "samples": samples,
    }
    with paths.publish("model_evaluation") as out:
        write_json(out / "summary.json", summary)
    columns = ["variant", "loss", "perplexity", "rouge_l", "exact_match", "stop_rate"]
    return dg.MaterializeResult(
        metadata={
            "comparison": md_table([_rounded(row) for row in table], columns, limit=10),
            "samples": md_table(samples, ["prompt", "reference", "base", "fine_tuned"], limit=8, width=120),
            "promoted": promoted,
            "reason": reason,
            "model_version": f"{name} v{version}",
            "champion_version": str(new_champion),
        },
    )


@dg.asset_check(
    asset=model_evaluation, blocking=True, description="The candidate beat the champion and baselines."
)
def candidate_promoted(settings: TunegraphSettings) -> dg.AssetCheckResult:
    summary = read_json(settings.paths().latest("model_evaluation") / "summary.json")
    registry = summary["registry"]
    return dg.AssetCheckResult(
        passed=registry["promoted"],
        severity=dg.AssetCheckSeverity.WARN,  # a better champion is kept: not an error in the pipeline
        metadata={
            "reason": registry["reason"],
            "version": registry["version"],
            "champion_version": str(registry["champion_version"]),
        },
    )


def _score(
    model: Any, tokenizer: Any, convs: list, records: list[dict], ev: EvaluationConfig, variant: str
) -> tuple[dict[str, Any], list[str]]:
    refs = references(records)
    nll, tokens = response_nll(model, tokenizer, convs, refs, ev.batch_size, desc=f"{variant} perplexity")
    outputs = generate(model, tokenizer, convs, ev.max_new_tokens, ev.batch_size, desc=f"{variant} generate")
    texts = [o["text"] for o in outputs]
    loss = nll / tokens
    scores = {
        "loss": loss,
        "perplexity": metrics.perplexity(loss),
        "rouge_l": metrics.mean([metrics.rouge_l(t, r) for t, r in zip(texts, refs, strict=True)]),
        "exact_match": metrics.mean([metrics.exact_match(t, r) for t, r in zip(texts, refs, strict=True)]),
        "stop_rate": metrics.mean([float(o["stopped"]) for o in outputs]),
        "examples": len(records),
    }
    return scores, texts


def _few_shot_examples(train: list[dict], k: int, seed: int) -> list[dict]:
    """k short original train records, chosen by a stable hash (same shots every run)."""
    originals = [
        r for r in train if r.get("augmentation") == "none" and len(r["messages"][-1]["content"]) < 400
    ]
    return sorted(originals, key=lambda r: eval_score(r["id"], seed + 7))[:k]


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> str | None:
    model = client.get_registered_model(name)
    return model.aliases.get(alias)


def _log_to_mlflow(
    tracking: MlflowTracking, run_id: str, results: dict, table: list[dict], samples: list[dict]
) -> None:
    client = tracking.client()
    now = int(time.time() * 1000)
    batch = [
        Metric(f"eval_{variant}_{key}", float(value), now, 0)
        for variant, scores in results.items()
        if scores
        for key, value in scores.items()
    ]
    client.log_batch(run_id, metrics=batch)
    client.log_table(run_id, data=_columns(table), artifact_file="evaluation/comparison.json")
    client.log_table(run_id, data=_columns(samples), artifact_file="evaluation/samples.json")


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
