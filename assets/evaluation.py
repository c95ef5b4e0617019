"""`model_evaluation`: base-model prompting baselines vs fine-tuned vs champion; gated promotion."""

import dataclasses
import gc
import hashlib
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
from mlflow.entities import Metric, RunTag
from transformers import AutoTokenizer

from assets.metadata import md_table
from assets.sources import reads_config
from assets.versions import latest_data_version
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages import model_card
from stages.code_version import code_version
from stages.content import content_hash
from stages.evaluation import (
    METRICS_BY_SCHEMA,
    Item,
    applies,
    eval_items,
    few_shot_examples,
    score,
)
from stages.inference import Placement, inference_placement, load_saved
from stages.promotion import Candidate, choose
from stages.tables import read_json, read_rows, write_json

BASE_VARIANTS = ("base_zero_shot", "base_system_prompt", "base_few_shot")


@dg.asset(
    group_name="evaluation",
    deps=[reads_config("evaluation", "tracking", "data.seed")],
    code_version=code_version(
        "stages.evaluation",
        "stages.model_card",
        "stages.inference",
        "stages.promotion",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
    kinds={"pytorch", "mlflow"},
    description="Held-out perplexity, ROUGE-L and exact match for each variant; champion alias if better.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    fine_tuned_model: Path,
    preference_model: Path,
    base_model: Path,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    ev = cfg.evaluation
    folders = {"base": base_model, "fine_tuned": fine_tuned_model, "preference": preference_model}
    eval_dir = deduplicated_corpus / "eval"
    eval_sets = {p.stem: read_rows(p)[: ev.max_examples] for p in sorted(eval_dir.glob("*.parquet"))}
    records = eval_sets["held_out"]
    if not records:
        raise dg.Failure("the held-out split is empty: raise data.eval_fraction or add landing files")
    shots = few_shot_examples(read_rows(augmented_corpus / "train.parquet"), ev.few_shot_k, cfg.data.seed)
    # The candidates: the fine-tuned model, and the DPO model trained from it when that is on.
    candidates = {"fine_tuned": read_json(fine_tuned_model / "mlflow.json")}
    dpo = read_json(preference_model / "summary.json")
    if cfg.preference.enabled and dpo["enabled"] and dpo["starts_from"] == candidates["fine_tuned"]:
        candidates["preference"] = read_json(preference_model / "mlflow.json")
    client = mlflow_tracking.client()
    name = candidates["fine_tuned"]["model_name"]
    champion_version = _alias_version(client, name, "champion")
    # The champion as one of the candidates is scored once, as that candidate, and stays a rival.
    incumbent = next((c for c, entry in candidates.items() if entry["version"] == champion_version), None)

    # by_set[eval set][variant] -> scores; the held-out set is the one promotion and the report use.
    by_set: dict[str, dict[str, dict[str, Any] | None]] = {s: {} for s in eval_sets}
    generations: dict[str, list[str]] = {}
    items: dict[str, list] = {}  # held-out items per variant, for the samples
    sources = {"base": BASE_VARIANTS, **{c: (c,) for c in candidates}}
    if champion_version is not None and incumbent is None:
        sources["champion"] = ("champion",)
    decoding = {"max_new_tokens": ev.max_new_tokens, "repetition_penalty": ev.repetition_penalty}
    # Where training ran, in its precision: bf16 on this CPU class, the GPU's format on a GPU.
    placement = inference_placement(cfg)
    inference = placement.as_metadata()
    context.log.info(
        f"evaluating on {placement.device} in {inference['inference_dtype']} ({placement.precision.reason})"
    )
    experiment_id = mlflow_tracking.experiment_id(cfg.tracking.experiment)
    # A baseline scored in another dtype or on another device is not the same measurement.
    scored_as = {**decoding, "device": placement.device, "dtype": inference["inference_dtype"]}
    baselines = BaselineCache(
        client, experiment_id, latest_data_version(context.instance, "base_model"), scored_as
    )
    progress = Progress(context, sum(len(v) for v in sources.values()))
    baseline_runs: dict[str, dict[str, Any]] = {}  # variant -> its MLflow run, and whether it was cached
    base_tokenizer = AutoTokenizer.from_pretrained(base_model / "model")
    for source, variants in sources.items():
        # The base model is loaded only if a baseline is not in the cache.
        loaded = (
            None
            if source == "base"
            else _load(source, folders, paths, mlflow_tracking, name, champion_version, placement)
        )
        for variant in variants:
            tokenizer = loaded[1] if loaded else base_tokenizer
            scored = {
                set_name: eval_items(variant, rows, shots, ev.system_prompt, tokenizer, ev.max_new_tokens)
                for set_name, rows in eval_sets.items()
                if rows and applies(variant, rows)  # a prompt baseline on documents only: not applicable
            }
            key = baselines.key(variant, scored) if source == "base" else None
            result = baselines.get(variant, key) if key else None
            was_cached = result is not None
            if result:
                progress.done(variant, f"cached in MLflow run {result['run_id']}")
            else:
                loaded = loaded or _load(
                    source, folders, paths, mlflow_tracking, name, champion_version, placement
                )
                result = {"run_id": None, "scores": {}, "texts": {}}
                for set_name, set_items in scored.items():
                    context.log.info(f"evaluating {variant} on {len(set_items)} examples of {set_name}")
                    result["scores"][set_name], result["texts"][set_name] = score(
                        loaded[0], loaded[1], set_items, ev.batch_size, ev.max_new_tokens,
                        ev.repetition_penalty, f"{variant}/{set_name}",
                    )  # fmt: skip
                if key:
                    baselines.put(variant, key, result)
                progress.done(variant, "evaluated")
            if key:
                baseline_runs[variant] = {"run_id": result["run_id"], "cached": was_cached}
            for set_name in eval_sets:
                by_set[set_name][variant] = result["scores"].get(set_name)
            if "held_out" in scored:
                generations[variant], items[variant] = result["texts"]["held_out"], scored["held_out"]
        del loaded
        gc.collect()
    for scores in by_set.values():
        scores.setdefault("champion", scores[incumbent] if incumbent else None)
    results = by_set["held_out"]

    decision = choose(
        {c: Candidate(entry["version"], results[c]) for c, entry in candidates.items()}, champion_version,
        results["champion"], {v: results[v] for v in BASE_VARIANTS}, ev.primary_metric, ev.promotion_margin,
    )  # fmt: skip
    best, promoted, reason, version = decision.candidate, decision.promoted, decision.reason, decision.version
    registry = candidates[best]
    if decision.alias:
        client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, "tunegraph.promotion", reason)
    new_champion = decision.champion_version
    context.log.info(f"{best} (v{version}) {'promoted' if promoted else 'not promoted'}: {reason}")

    table = [{"variant": v, **(m or {})} for v, m in results.items()]
    samples = [
        {"prompt": item.shown, "reference": item.reference, "base": b, "fine_tuned": f}
        for item, b, f in zip(
            items["base_zero_shot"], generations["base_zero_shot"], generations["fine_tuned"], strict=True
        )
    ][:8]
    _log_to_mlflow(mlflow_tracking, registry["mlflow_run_id"], results, table, samples, decoding, inference)
    # The candidates' and the baselines' scores under the same metric names, one run each, so the
    # MLflow runs table and chart view compare fine-tunes with each other and with prompting.
    for variant, entry in candidates.items():
        _log_scores(client, entry["mlflow_run_id"], results[variant])
    # Each candidate's model card, now with this comparison; it replaces README.md in its MLflow model.
    verdict = {"results": results, "primary_metric": ev.primary_metric, "examples": len(records)}
    cards = {
        c: _evaluated_card(context, folders[c], c, {
            **verdict, "candidate": c, "promoted": promoted and c == best,
            "reason": reason if c == best else f"{best} was the better candidate by {ev.primary_metric}",
        })
        for c in candidates
    }  # fmt: skip
    summary = {
        "evaluation": results,
        "evaluation_sets": by_set,
        # Which metric means what for the schemas held out (None: does not apply to that schema).
        "schemas": dict(Counter(r["schema"] for r in records)),
        "metrics_by_schema": {s: METRICS_BY_SCHEMA[s] for s in sorted({r["schema"] for r in records})},
        "decoding": decoding,
        "inference": inference,
        "primary_metric": ev.primary_metric,
        "registry": {
            "model_name": name,
            "candidate": best,
            "version": version,
            "champion_version": new_champion,
            "previous_champion_version": champion_version,
            "promoted": promoted,
            "reason": reason,
        },
        "samples": samples,
        "baselines": baseline_runs,
    }
    out = new_output(context, paths)
    write_json(out / "summary.json", summary)
    for c, card in cards.items():
        if card:
            folder = out / "model_cards" / c
            folder.mkdir(parents=True)
            client.log_model_artifact(candidates[c]["model_id"], str(model_card.write(card, folder)))
    data_version = content_hash(out / "summary.json")
    columns = ["variant", "loss", "perplexity", "rouge_l", "exact_match", "stop_rate"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_version),
        metadata={
            "comparison": md_table([_rounded(row) for row in table], columns, limit=10),
            "samples": md_table(samples, ["prompt", "reference", "base", "fine_tuned"], limit=8, width=120),
            "promoted": promoted,
            "reason": reason,
            "baselines_cached": sum(b["cached"] for b in baseline_runs.values()),
            **inference,
            "model_version": f"{name} v{version}",
            "champion_version": str(new_champion),
            "model_card": dg.MetadataValue.md(
                model_card.body(cards[best]) if cards[best] else "(trained before model cards: none)"
            ),
            **recorded(out),
        },
    )


MIN_STOP_RATE = 0.95


@dg.asset_check(
    asset=model_evaluation,
    description="Serving consistency: with the saved chat template, fine-tuned generations end at EOS.",
)
def generations_stop_at_eos(model_evaluation: Path) -> dg.AssetCheckResult:
    summary = read_json(model_evaluation / "summary.json")
    rate = summary["evaluation"]["fine_tuned"]["stop_rate"]
    return dg.AssetCheckResult(
        passed=rate is None or rate >= MIN_STOP_RATE,  # None: only documents held out, nothing to stop
        severity=dg.AssetCheckSeverity.WARN,  # a quality signal to act on, not a broken pipeline
        metadata={
            "stop_rate": rate,
            "minimum": MIN_STOP_RATE,
            **summary["decoding"],  # what the evaluation used, not what the config says now
        },
    )


@dg.asset_check(asset=model_evaluation, description="The candidate beat the champion and baselines.")
def candidate_promoted(model_evaluation: Path) -> dg.AssetCheckResult:
    summary = read_json(model_evaluation / "summary.json")
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


def _load(
    source: str,
    folders: dict[str, Path],
    paths: Any,
    tracking: MlflowTracking,
    name: str,
    champion_version: str | None,
    placement: Placement,
) -> tuple[Any, Any]:
    """The model behind a variant: an input's folder, or the champion's from MLflow."""
    if source in folders:
        folder = folders[source] / "model"
    else:
        version = tracking.client().get_model_version(name, champion_version)
        folder = tracking.model_dir(version, paths.model_cache(name, champion_version))
    return load_saved(folder, placement)


def _evaluated_card(
    context: dg.AssetExecutionContext, model: Path, variant: str, evaluation: dict[str, Any]
) -> str | None:
    """The model card of a candidate with this evaluation (None for a model trained before cards)."""
    facts = model / "card.json"
    if not facts.is_file():
        context.log.warning(f"the {variant} model was trained before model cards: retrain it to get one")
        return None
    return model_card.render(read_json(facts), evaluation)


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> str | None:
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)  # MLflow returns alias versions as ints


def _log_to_mlflow(
    tracking: MlflowTracking,
    run_id: str,
    results: dict,
    table: list[dict],
    samples: list[dict],
    decoding: dict[str, Any],
    inference: dict[str, str],
) -> None:
    client = tracking.client()
    now = int(time.time() * 1000)
    batch = [
        Metric(f"eval_{variant}_{key}", float(value), now, 0)
        for variant, scores in results.items()
        if scores
        for key, value in scores.items()
        if value is not None  # a metric that does not apply to the schemas held out
    ]
    # A tag, not a param: a re-evaluation with other decoding settings may overwrite it.
    tags = [
        RunTag("tunegraph.eval_decoding", json.dumps(decoding, sort_keys=True)),
        *(RunTag(f"tunegraph.eval_{k}", v) for k, v in inference.items()),
    ]
    client.log_batch(run_id, metrics=batch, tags=tags)
    client.log_table(run_id, data=_columns(table), artifact_file="evaluation/comparison.json")
    client.log_table(run_id, data=_columns(samples), artifact_file="evaluation/samples.json")


EVAL_METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate")


def _log_scores(client: mlflow.MlflowClient, run_id: str, scores: dict[str, Any] | None) -> None:
    """`eval/<metric>` on a run: the names every candidate and baseline run shares."""
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval/{m}", float(scores[m]), now, 0) for m in EVAL_METRICS
               if scores and scores.get(m) is not None]  # fmt: skip
    client.log_batch(run_id, metrics=metrics)


SCORES_FILE = "evaluation/baseline.json"


class BaselineCache:
    """A prompting baseline's scores and answers, kept in its MLflow run, found again by what decides them.

    The key is the scoring code's version, the base model's data version, the variant, the decoding
    settings and every item the variant is scored on (the rendered prompts, with the system prompt
    or the few-shot demonstrations in them, the scored targets and the references), for every eval
    set. So a retrain on the same base model and eval sets scores only the new model and the
    champion, and whatever would change a baseline's answers or scores misses the cache.
    """

    def __init__(
        self, client: mlflow.MlflowClient, experiment_id: str, base_version: str | None, decoding: dict
    ):
        self.client, self.experiment_id = client, experiment_id
        self.base_version, self.decoding = base_version, decoding

    def key(self, variant: str, scored: dict[str, list[Item]]) -> str:
        items = {
            set_name: [dataclasses.astuple(i) for i in rows] for set_name, rows in sorted(scored.items())
        }
        payload = [code_version("stages.evaluation"), self.base_version, variant, self.decoding, items]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def get(self, variant: str, key: str) -> dict[str, Any] | None:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`tunegraph.baseline` = '{variant}' and tags.`tunegraph.baseline_key` = '{key}' "
            "and tags.`tunegraph.baseline_scores` = 'true'",
            max_results=1,
        )
        if not found:
            return None
        run_id = found[0].info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            stored = json.loads(Path(self.client.download_artifacts(run_id, SCORES_FILE, tmp)).read_text())
        return {"run_id": run_id, **stored}

    def put(self, variant: str, key: str, result: dict[str, Any]) -> None:
        """One FINISHED run per baseline and key: its scores under `eval/*`, its answers as an artifact."""
        run = self.client.create_run(self.experiment_id, run_name=f"baseline {variant} · {key[:8]}",
                                     tags={"tunegraph.baseline": variant, "tunegraph.baseline_key": key})  # fmt: skip
        run_id = run.info.run_id
        self.client.log_dict(run_id, {"scores": result["scores"], "texts": result["texts"]}, SCORES_FILE)
        _log_scores(self.client, run_id, result["scores"].get("held_out"))
        self.client.set_tag(run_id, "tunegraph.baseline_scores", "true")  # complete: found by `get` now
        self.client.set_terminated(run_id, "FINISHED")
        result["run_id"] = run_id


class Progress:
    """`evaluation i/n: variant ... (elapsed, ETA)` lines: what is done and about how long is left."""

    def __init__(self, context: dg.AssetExecutionContext, total: int):
        self.context, self.total, self.done_n = context, total, 0
        self.start = time.perf_counter()
        self.scored_n, self.scored_s = 0, 0.0
        self.mark = self.start

    def done(self, variant: str, how: str) -> None:
        now = time.perf_counter()
        self.done_n += 1
        if how == "evaluated":
            self.scored_n, self.scored_s = self.scored_n + 1, self.scored_s + now - self.mark
        self.mark = now
        left = self.total - self.done_n
        eta = f", about {left * self.scored_s / self.scored_n:.0f} s left" if left and self.scored_n else ""
        self.context.log.info(
            f"evaluation {self.done_n}/{self.total}: {variant} {how} ({now - self.start:.0f} s{eta})"
        )


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
