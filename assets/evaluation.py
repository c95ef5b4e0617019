"""`model_evaluation`: one leaderboard of prompt variants and trained models; gated promotion.

The prompt variants come scored from their partitions (assets/prompts.py); the DPO candidate and
the champion are scored here. Promotion compares the candidates with the champion and today's
three prompting baselines; the leaderboard compares every method.
"""

import functools
import gc
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
from mlflow.entities import Metric, RunTag

from assets.metadata import md_table
from assets.prompts import log_row, read_eval_sets, row_name, score_variant
from assets.sources import reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages import leaderboard, model_card, reward_gate, reward_judge
from stages.chat import prompt_messages
from stages.code_version import code_version
from stages.config import RewardModelConfig
from stages.content import content_hash
from stages.evaluation import METRICS_BY_SCHEMA
from stages.inference import Placement, inference_placement, load_saved
from stages.promotion import Candidate, choose
from stages.prompt_config import PLAIN
from stages.prompt_registry import set_best
from stages.prompts import example_pool
from stages.reward_scoring import load_reward_model, reward_scores
from stages.tables import read_json, read_jsonl, read_rows, write_json

# The base model's rows a candidate must beat to be promoted: today's three prompting baselines.
# The other variants (retrieval, the searched prompt) are on the leaderboard to compare methods:
# a better prompt there says "prompting wins", not "do not serve this model".
PROMOTION_BASELINES = ("base_zero_shot", "base_system_prompt", "base_few_shot")


@dg.asset(
    group_name="evaluation",
    deps=[reads_config("evaluation", "tracking", "data.seed", "preference.reward_model")],
    code_version=code_version(
        "stages.evaluation",
        "stages.leaderboard",
        "stages.model_card",
        "stages.inference",
        "stages.promotion",
        "stages.prompts",
        "stages.prompt_registry",
        "stages.reward_gate",
        "stages.reward_judge",
        "stages.reward_scoring",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
    kinds={"pytorch", "mlflow"},
    description="One leaderboard of every prompt variant and trained model on the held-out split; champion "
    "alias if the candidate is better; best-base / best-fine-tuned prompt aliases.",
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
    base_prompt_evaluation: dict[str, Path],
    fine_tuned_prompt_evaluation: dict[str, Path],
    prompt_search: Path,
    reward_model: Path,
    preference_pairs: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    ev = cfg.evaluation
    folders = {"base": base_model, "fine_tuned": fine_tuned_model, "preference": preference_model}
    eval_sets = read_eval_sets(deduplicated_corpus, ev.max_examples)
    records = eval_sets["held_out"]
    pool = example_pool(read_rows(augmented_corpus / "train.parquet"))
    # The rows scored in their own partitions, each on the model this evaluation compares.
    scored = {**_partition_rows("base_prompt_evaluation", base_prompt_evaluation, base_model),
              **_partition_rows("fine_tuned_prompt_evaluation", fine_tuned_prompt_evaluation, fine_tuned_model)}  # fmt: skip
    searched = read_json(prompt_search / "summary.json")
    if searched["enabled"]:
        scored[searched["row"]] = searched
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

    # Scored here: models that are no asset of their own (the DPO candidate asked plainly, the
    # champion with the variants that name it), since the registry, not Dagster, says which they are.
    here = {"preference": [cfg.variant(PLAIN)]} if "preference" in candidates else {}
    if champion_version is not None and incumbent is None:
        here["champion"] = [v for v in cfg.prompts if "champion" in v.models]
    # Where training ran, in its precision: bf16 on this CPU class, the GPU's format on a GPU.
    placement = inference_placement(cfg)
    inference = placement.as_metadata()
    progress = Progress(context, sum(len(v) for v in here.values()))
    for source, variants in here.items():
        model, tokenizer = _load(source, folders, paths, mlflow_tracking, name, champion_version, placement)
        for variant in variants:
            result = score_variant(
                model, tokenizer, variant, eval_sets, pool, cfg, f"{source}/{variant.name}"
            )
            scored[row_name(source, variant.name)] = {"model_kind": source, "variant": variant.name, **result}
            progress.done(variant.name, "evaluated")
        del model
        gc.collect()
    by_set: dict[str, dict[str, dict[str, Any] | None]] = {
        s: {row: entry["scores"].get(s) for row, entry in scored.items()} for s in eval_sets
    }
    for scores in by_set.values():
        scores.setdefault("champion", scores[incumbent] if incumbent else None)
    results = by_set["held_out"]
    # The reward model's judgement of every row (reward, win rate vs base, each policy's pair accuracy):
    # promotion stays on the primary metric; these say which answers people would prefer.
    judged = _judge(context, reward_model, preference_pairs, records, scored, results,
                    {"base_zero_shot": "base", **{c: c for c in candidates}}, folders, placement, ev.batch_size,
                    cfg.preference.reward_model)  # fmt: skip

    decision = choose(
        {c: Candidate(entry["version"], results[c]) for c, entry in candidates.items()}, champion_version,
        results["champion"], {v: results.get(v) for v in PROMOTION_BASELINES}, ev.primary_metric,
        ev.promotion_margin,
    )  # fmt: skip
    best, promoted, reason, version = decision.candidate, decision.promoted, decision.reason, decision.version
    registry = candidates[best]
    if decision.alias:
        client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, "tunegraph.promotion", reason)
    new_champion = decision.champion_version
    context.log.info(f"{best} (v{version}) {'promoted' if promoted else 'not promoted'}: {reason}")

    # One leaderboard: every (variant, model) pair and every trained model, the same metrics.
    train_minutes = read_json(fine_tuned_model / "train_summary.json")["wall_s"] / 60
    board = leaderboard.rows(scored, results, ev.primary_metric, {"fine_tuned": train_minutes})
    mlflow_tracking.activate()
    best_prompts = leaderboard.best_prompts(board, ev.primary_metric)
    for kind, row in best_prompts.items():
        prompt = scored[row]["prompt"]
        set_best(
            client,
            cfg.tracking.registered_model,
            kind,
            client.get_prompt_version(prompt["name"], prompt["version"]),
        )
        if kind == "fine_tuned":  # the model carries the prompt it answers best with (its Prompts tab)
            client.link_prompt_version_to_model(prompt["name"], str(prompt["version"]), registry["model_id"])
    experiment_id = mlflow_tracking.experiment_id(cfg.tracking.experiment)
    for row in here_rows(scored, here):
        log_row(client, experiment_id, row, scored[row]["model_kind"], scored[row]["variant"], results[row])

    table = [{"variant": v, **(m or {})} for v, m in results.items()]
    plain_base, plain_tuned = scored.get("base_zero_shot"), scored.get("fine_tuned")
    samples = [
        {"prompt": b["question"], "reference": b["reference"], "base": b["answer"], "fine_tuned": f["answer"]}
        for b, f in zip(plain_base["samples"], plain_tuned["samples"], strict=True)
    ] if plain_base and plain_tuned else []  # fmt: skip
    decoding = {"max_new_tokens": ev.max_new_tokens, "repetition_penalty": ev.repetition_penalty}
    _log_to_mlflow(mlflow_tracking, registry["mlflow_run_id"], results, table, samples, decoding, inference)
    # The candidates' scores under the same metric names as every leaderboard run, so the MLflow
    # runs table and chart view compare fine-tunes with each other and with prompting.
    for variant, entry in candidates.items():
        _log_scores(client, entry["mlflow_run_id"], results[variant])
    if judged:  # the prompt rows' leaderboard runs get the judged columns under the same names
        for row, entry in scored.items():
            if entry.get("mlflow_run_id") and results.get(row) and row not in candidates:
                _log_scores(
                    client, entry["mlflow_run_id"], {m: results[row].get(m) for m in leaderboard.JUDGED}
                )
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
        "leaderboard": board,
        "best_prompts": best_prompts,
        "prompt_search": _search_summary(searched),
        # Which metric means what for the schemas held out (None: does not apply to that schema).
        "schemas": dict(Counter(r["schema"] for r in records)),
        "metrics_by_schema": {s: METRICS_BY_SCHEMA[s] for s in sorted({r["schema"] for r in records})},
        "decoding": decoding,
        "inference": inference,
        "reward_judge": judged,
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
        "samples": samples[:8],
    }
    out = new_output(context, paths)
    write_json(out / "summary.json", summary)
    for c, card in cards.items():
        if card:
            folder = out / "model_cards" / c
            folder.mkdir(parents=True)
            client.log_model_artifact(candidates[c]["model_id"], str(model_card.write(card, folder)))
    data_version = content_hash(out / "summary.json")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_version),
        metadata={
            "leaderboard": md_table(board, list(leaderboard.COLUMNS), limit=len(board)),
            "samples": md_table(samples, ["prompt", "reference", "base", "fine_tuned"], limit=8, width=120),
            "promoted": promoted,
            "reason": reason,
            "best_prompts": ", ".join(f"{k}: {v}" for k, v in best_prompts.items()),
            **inference,
            "model_version": f"{name} v{version}",
            "champion_version": str(new_champion),
            "model_card": dg.MetadataValue.md(
                model_card.body(cards[best]) if cards[best] else "(trained before model cards: none)"
            ),
            **recorded(out),
        },
    )


def _judge(
    context: dg.AssetExecutionContext,
    reward_model: Path,
    preference_pairs: Path,
    records: list[dict[str, Any]],
    scored: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any] | None],
    policies: dict[str, str],
    folders: dict[str, Path],
    placement: Placement,
    batch_size: int,
    rules: RewardModelConfig,
) -> dict[str, Any] | None:
    """Every row's held-out answers judged by the reward model (stages/reward_judge.py) and each policy's
    pair accuracy on the held-out preference pairs, written into the rows' held-out scores; None when no
    reward model was trained. `policies`: leaderboard row -> the model folder it is (folders' key)."""
    gate = read_json(reward_model / "summary.json")
    if not gate["enabled"]:
        return None
    verdict = reward_gate.judge(gate["heldout_correct"], gate["heldout_pairs"], rules)
    if not verdict.passed:  # its check warned (DPO/KTO did not need it): no coin judges the leaderboard
        context.log.warning(f"the reward model does not judge the leaderboard: {verdict.reason}")
        return {"skipped": verdict.reason}
    start = time.perf_counter()
    model, tokenizer = load_reward_model(reward_model / "model", placement)
    questions = [prompt_messages(r) if r["schema"] != "text" else None for r in records]
    answers = {
        row: entry["texts"] for row, entry in scored.items() if entry.get("texts") and results.get(row)
    }
    score = functools.partial(reward_scores, model, tokenizer, batch_size=batch_size)
    judged = reward_judge.judge(questions, answers, score)
    del score, model
    gc.collect()
    for row, values in judged.items():
        results[row].update(values)  # type: ignore[union-attr]
    held_out = read_jsonl(preference_pairs / "heldout_pairs.jsonl")
    accuracy = {}
    for row, source in policies.items():
        if held_out and results.get(row):
            policy, tok = load_saved(folders[source] / "model", placement)
            accuracy[row] = reward_judge.pair_accuracy(policy, tok, held_out, batch_size)
            results[row]["pair_accuracy"] = accuracy[row]  # type: ignore[index]
            del policy
            gc.collect()
    context.log.info(f"judged by the reward model: {len(judged)} rows, pair accuracy of {len(accuracy)} policies "
                     f"on {len(held_out)} held-out pairs ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return {
        "rows": len(judged),
        "questions": sum(q is not None for q in questions),
        "heldout_pairs": len(held_out),
        "reward_model_heldout_accuracy": gate.get("heldout_accuracy"),
        "baseline": reward_judge.BASELINE,
    }


def _partition_rows(asset: str, partitions: dict[str, Path], model: Path) -> dict[str, dict[str, Any]]:
    """Each partition's summary by leaderboard row; refuses one scored on another model than `model`."""
    rows = {}
    for key, folder in sorted(partitions.items()):
        summary = read_json(folder / "summary.json")
        if summary["model"] != str(model):
            raise dg.Failure(f"{asset}[{key}] scored another model than the one compared here: run "
                             "`tunegraph run` (it scores the stale partitions first)", allow_retries=False)  # fmt: skip
        rows[summary["row"]] = summary
    return rows


def here_rows(scored: dict[str, dict[str, Any]], here: dict[str, list]) -> list[str]:
    """The rows scored inside model_evaluation (they get their MLflow leaderboard run here)."""
    return [row for row, entry in scored.items() if entry["model_kind"] in here]


def _search_summary(searched: dict[str, Any]) -> dict[str, Any] | None:
    if not searched["enabled"]:
        return None
    held = searched["scores"]["held_out"] or {}
    return {
        "winner": searched["variant_text"],
        "metric": searched["metric"],
        "tried": searched["tried"],
        "dev": {m: searched["dev"].get(m) for m in leaderboard.METRICS},
        "held_out": {m: held.get(m) for m in leaderboard.METRICS},
        "prompt_version": searched["prompt"]["version"],
    }


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


EVAL_METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate", *leaderboard.JUDGED)


def _log_scores(client: mlflow.MlflowClient, run_id: str, scores: dict[str, Any] | None) -> None:
    """`eval/<metric>` on a run: the names every candidate and baseline run shares."""
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval/{m}", float(scores[m]), now, 0) for m in EVAL_METRICS
               if scores and scores.get(m) is not None]  # fmt: skip
    client.log_batch(run_id, metrics=metrics)


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
