"""`tunegraph report`: the latest state, read from the Dagster instance, whichever path ran it.

Run status comes from Dagster's runs (the CLI's, the UI's, the sensor's, automation's and the
schedule's alike), what is stale from Dagster's own resolver, and every number from the outputs
Dagster recorded as current (`resources/outputs.py`). Nothing here is written by one path only.
"""

import re
from typing import Any

import dagster as dg
from dagster._utils.error import SerializableErrorInfo

from assets.gates import summary as gate_summary
from assets.sources import ABSENT, landing_file, recorded_versions
from pipelines import definitions
from pipelines.staleness import read_state
from resources.outputs import output_folder
from stages.evaluation import VARIANTS
from stages.leaderboard import format_leaderboard
from stages.plan import plan_run
from stages.tables import read_json

METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate")
STATUS = {"SUCCESS": "success", "FAILURE": "failed"}  # the words `tunegraph run` uses; others lower-cased


def summary(instance: dg.DagsterInstance, asset: str, name: str = "summary.json") -> dict:
    """A file of an asset's current output (its latest recorded materialisation), or {}."""
    folder = output_folder(instance, asset)
    path = folder / name if folder else None
    return read_json(path) if path and path.is_file() else {}


def build_report(instance: dg.DagsterInstance) -> dict[str, Any]:
    [last] = instance.get_runs(limit=1) or [None]
    partitions = instance.get_dynamic_partitions(definitions.landing_files.name)
    state = read_state(instance, definitions.defs.resolve_asset_graph(), partitions)
    blocked = plan_run(state.graph, state.stale, partitions, state.failed_gates).blocked
    landing = recorded_versions(instance, landing_file.key, partitions)
    dedup = summary(instance, "deduplicated_corpus")
    accounting = dedup.get("accounting", {})
    augmented = summary(instance, "augmented_corpus")
    tokens = summary(instance, "tokenized_dataset")
    train = summary(instance, "fine_tuned_model", "train_summary.json")
    registry = summary(instance, "fine_tuned_model", "mlflow.json")
    evaluation = summary(instance, "model_evaluation")
    scores = evaluation.get("evaluation", {})
    return {
        "status": STATUS.get(last.status.value, last.status.value.lower()) if last else None,
        "run_id": last.run_id if last else None,
        # What stopped the latest run, then each failed gate that holds assets back now.
        "errors": [
            *(run_errors(instance, last.run_id) if last else []),
            *dict.fromkeys(
                f"blocking check {g.name} {g.detail}" for gates in blocked.values() for g in gates
            ),
        ],
        # What Dagster calls stale now (asset -> causes), and what failed gates hold back.
        "stale": state.causes,
        "blocked": {asset: [f"{g.name} {g.detail}" for g in gates] for asset, gates in blocked.items()},
        "data": {
            "documents_in": accounting.get("documents_in"),
            "documents_kept": accounting.get("documents_kept"),
            "dropped": accounting.get("dropped", {}),
            "pii": accounting.get("pii", {}),
            "duplicates": dedup["duplicates"] + dedup.get("near_duplicates", 0) if dedup else None,
            "contaminated": dedup.get("contaminated"),
            "train_examples": augmented.get("train_examples"),
            "eval_examples": sum(dedup.get("eval_examples", {}).values()) if dedup else None,
            "train_tokens": tokens.get("tokens"),
            "partitions_total": sum(v != ABSENT for v in landing.values()),
            "partitions_processed": newly_read(instance),
            "partitions_removed": sorted(k for k, v in landing.items() if v == ABSENT),
        },
        "training": {
            "mlflow_run_id": registry.get("mlflow_run_id"),
            "steps": train.get("steps"),
            "resumed_from_step": train.get("resumed_from_step"),
            "stopped_by_time_budget_at": train.get("stopped_by_time_budget_at"),  # training.max_minutes
            "precision": train.get("precision"),
            "malloc": train.get("malloc"),  # tcmalloc roughly halves a CPU step here (stages/launch.py)
            "train_loss": train.get("train_loss"),
            "eval_loss": train.get("eval_loss"),  # held-out loss at the last training.eval_steps
            "effective_tokens_per_s": train.get("effective_tokens_per_s"),
            "non_pad_fraction": tokens.get("non_pad_fraction"),
        },
        "preference": _preference(instance),
        "evaluation": {
            v: ({m: scores[v].get(m) for m in METRICS} if scores.get(v) else None)
            for v in [*VARIANTS, *(["preference"] if "preference" in scores else [])]
        },
        # Every prompt variant and trained model on one table (stages/leaderboard.py), best first.
        "leaderboard": evaluation.get("leaderboard", []),
        "best_prompts": evaluation.get("best_prompts", {}),
        "prompt_search": evaluation.get("prompt_search"),
        "primary_metric": evaluation.get("primary_metric"),
        # What each metric measures for each schema held out; None where a metric does not apply.
        "metrics_by_schema": {
            schema: {"held_out": n, **evaluation["metrics_by_schema"][schema]}
            for schema, n in evaluation.get("schemas", {}).items()
        },
        "registry": {
            "model_name": registry.get("model_name"),
            "version": evaluation.get("registry", {}).get("version", registry.get("version")),
            **{
                k: evaluation.get("registry", {}).get(k)
                for k in ("candidate", "champion_version", "promoted", "reason")
            },
        },
    }


def newly_read(instance: dg.DagsterInstance) -> list[str]:
    """The landing files (re)read into the current training data: clean_corpus partitions recorded
    after the deduplicated_corpus before the current one (all of them for the first)."""
    clean = instance.get_latest_storage_id_by_partition(
        dg.AssetKey("clean_corpus"), dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    records = instance.fetch_materializations(dg.AssetKey("deduplicated_corpus"), limit=2).records
    if not records:
        return []
    after = records[1].storage_id if len(records) == 2 else -1
    return sorted(k for k, storage_id in clean.items() if after < storage_id < records[0].storage_id)


def run_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What stopped a run, a line each: failed blocking checks, then failed steps' own errors."""
    failed = [
        f"blocking check {e.asset_key.to_user_string()}:{e.check_name} failed: {gate_summary(e.metadata)}"
        for e in (r.get_dagster_event().asset_check_evaluation_data
                  for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION))
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]  # fmt: skip
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.get_dagster_event()
        if event.step_failure_data and event.step_failure_data.error:
            failed.append(f"{event.step_key}: {user_error(event.step_failure_data.error)}")
    return failed


def user_error(error: SerializableErrorInfo) -> str:
    """A failed step's own error on one line: not Dagster's wrapper around it, nor its class."""
    while error.cause is not None and "dagster" in (error.cls_name or "").lower():
        error = error.cause
    first_line = error.message.strip().splitlines()[0]
    return re.sub(rf"^[\w.]*{re.escape(error.cls_name or '')}: ", "", first_line)  # drop "pkg.SomeError: "


def _preference(instance: dg.DagsterInstance) -> dict[str, Any] | None:
    """The DPO stage, when it ran: its pairs and how training went."""
    pairs = summary(instance, "preference_pairs")
    if not pairs.get("enabled"):
        return None
    train = summary(instance, "preference_model", "train_summary.json")
    registry = summary(instance, "preference_model", "mlflow.json")
    reward = summary(instance, "reward_model")
    return {
        "method": summary(instance, "preference_model").get("method", "dpo"),
        "pairs": pairs.get("pairs"),
        "reward_model_heldout_accuracy": reward.get("heldout_accuracy"),
        "reward_model_heldout_pairs": reward.get("heldout_pairs"),
        "synthetic": pairs.get("synthetic"),
        "dropped": pairs.get("dropped", {}),
        "mlflow_run_id": registry.get("mlflow_run_id"),
        "version": registry.get("version"),
        **{
            k: train.get(k)
            for k in (
                "steps",
                "resumed_from_step",
                "train_loss",
                "reward_margin",
                "reward_accuracy",
                "reward_first_steps",
                "reward_last_steps",
                "kl",
            )  # fmt: skip
        },
    }


def format_summary(report: dict[str, Any]) -> str:
    d, t, e, r = report["data"], report["training"], report["evaluation"], report["registry"]
    lines = [
        f"status: {report['status']}  (dagster run {report['run_id']})",
        f"data: {d['documents_in']} documents in, {d['documents_kept']} kept; dropped {d['dropped']}; pii {d['pii']}",
        f"      {d['train_examples']} train examples ({d['train_tokens']} tokens), {d['eval_examples']} eval",
        *(
            [f"      landing files removed (their records left the training set): {d['partitions_removed']}"]
            if d["partitions_removed"]
            else []
        ),
        f"training: {t['steps']} steps{' (time budget reached)' if t['stopped_by_time_budget_at'] else ''}, "
        f"final loss {_f(t['train_loss'])}, held-out {_f(t['eval_loss'])}, "
        f"{_f(t['effective_tokens_per_s'], 1)} label tokens/s ({'fp32' if t['precision'] in (None, 'no') else t['precision']}, malloc {t['malloc']}), MLflow run {t['mlflow_run_id']}",
        "evaluation (held-out):",
        f"  {'variant':<20} {'loss':>8} {'perplexity':>11} {'rouge_l':>8} {'exact':>6} {'stop@eos':>9}",
    ]
    for variant, m in e.items():
        if m:
            lines.append(
                f"  {variant:<20} {_f(m['loss']):>8} {_f(m['perplexity'], 2):>11} {_f(m['rouge_l']):>8} "
                f"{_f(m['exact_match'], 2):>6} {_f(m['stop_rate'], 2):>9}"
            )
        else:
            lines.append(f"  {variant:<20} {'-':>8}")
    for schema, meaning in report.get("metrics_by_schema", {}).items():
        applies = [m for m, v in meaning.items() if m != "held_out" and v]
        missing = [m for m, v in meaning.items() if v is None]
        lines.append(f"  {schema} ({meaning['held_out']} held out): {', '.join(applies)}"
                     + (f"; not applicable: {', '.join(missing)}" if missing else ""))  # fmt: skip
    if report.get("leaderboard"):
        lines.append(format_leaderboard(report))
    if report.get("preference"):
        pr = report["preference"]
        kind = "synthetic " if pr["synthetic"] else ""
        method = pr["method"].upper()
        trained = (
            f"reward {_f(pr['reward_first_steps'])} over the first steps, {_f(pr['reward_last_steps'])} over "
            f"the last, KL {_f(pr['kl'])}"
            if pr["method"] in ("grpo", "rloo")
            else f"final loss {_f(pr['train_loss'])}, reward margin {_f(pr['reward_margin'])}"
        )
        judge = pr["reward_model_heldout_accuracy"]
        lines.append(
            f"preference ({method}): {pr['pairs']} {kind}pairs, {pr['steps']} steps, {trained}, v{pr['version']}"
            + (
                f"; reward model {_f(judge)} on {pr['reward_model_heldout_pairs']} held-out pairs"
                if judge
                else ""
            )
        )
    lines.append(
        f"registry: {r['model_name']} v{r['version']}, champion v{r['champion_version']}, "
        f"promoted={r['promoted']} ({r['reason']})"
    )
    for error in report.get("errors") or []:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
