"""`tunegraph report`: the latest state, assembled from the published outputs under $TUNEGRAPH_HOME."""

from typing import Any

from assets.dataset_card import corpus_accounting, summary
from resources.settings import Paths
from stages.evaluation import VARIANTS
from stages.tables import read_json

METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate")


def build_report(paths: Paths) -> dict[str, Any]:
    last = read_json(paths.runs / "last.json") if (paths.runs / "last.json").is_file() else {}
    dedup = summary(paths, "deduplicated_corpus")
    accounting = corpus_accounting(paths)
    augmented = summary(paths, "augmented_corpus")
    tokens = summary(paths, "tokenized_dataset")
    train = summary(paths, "fine_tuned_model", "train_summary.json")
    registry = summary(paths, "fine_tuned_model", "mlflow.json")
    evaluation = summary(paths, "model_evaluation")
    scores = evaluation.get("evaluation", {})
    return {
        "status": last.get("status"),
        "run_id": last.get("run_id"),
        "errors": last.get("errors", []),
        # What Dagster reported stale when the run began (asset -> causes), and what gates held back.
        "stale": last.get("stale", {}),
        "blocked": last.get("blocked", {}),
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
            "partitions_total": last.get("partitions_total"),
            "partitions_processed": last.get("partitions_processed", []),
            "partitions_removed": last.get("partitions_removed", []),
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
        "preference": _preference(paths),
        "evaluation": {
            v: ({m: scores[v].get(m) for m in METRICS} if scores.get(v) else None)
            for v in [*VARIANTS, *(["preference"] if "preference" in scores else [])]
        },
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


def _preference(paths: Paths) -> dict[str, Any] | None:
    """The DPO stage, when it ran: its pairs and how training went."""
    pairs = summary(paths, "preference_pairs")
    if not pairs.get("enabled"):
        return None
    train = summary(paths, "preference_model", "train_summary.json")
    registry = summary(paths, "preference_model", "mlflow.json")
    return {
        "pairs": pairs.get("pairs"),
        "synthetic": pairs.get("synthetic"),
        "dropped": pairs.get("dropped", {}),
        "mlflow_run_id": registry.get("mlflow_run_id"),
        "version": registry.get("version"),
        **{
            k: train.get(k)
            for k in ("steps", "resumed_from_step", "train_loss", "reward_margin", "reward_accuracy")
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
    if report.get("preference"):
        pr = report["preference"]
        kind = "synthetic " if pr["synthetic"] else ""
        lines.append(
            f"preference (DPO): {pr['pairs']} {kind}pairs, {pr['steps']} steps, final loss {_f(pr['train_loss'])}, "
            f"reward margin {_f(pr['reward_margin'])}, v{pr['version']}"
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
