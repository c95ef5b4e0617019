"""`preference_pairs` and `preference_model`: DPO after the supervised fine-tune (`preference.enabled`).

Both are in the graph always; with `preference.enabled: false` (the default) they record that
and do nothing else, so the evaluation and the UI stay the same graph either way.
"""

import gc
import json
from collections import Counter
from pathlib import Path

import dagster as dg

from assets.automation import FOLLOWS_THE_MODEL
from assets.dedup import eval_records
from assets.metadata import counts_table, md_table
from assets.sources import preference_files, reads_config
from assets.training_run import Dataset, TrainingJob, run_training, training_metadata
from assets.versions import latest_data_version
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages import preferences
from stages.code_version import code_version
from stages.content import content_hash
from stages.decontamination import eval_ngrams, ngrams
from stages.evaluation import generate
from stages.inference import Placement, inference_placement, load_saved
from stages.lineage import preference_lineage
from stages.split import eval_score
from stages.tables import read_json, read_rows, write_json, write_rows

DISABLED = {"enabled": False, "pairs": 0}


@dg.asset(
    group_name="preference",
    deps=[
        preference_files,
        reads_config(
            "preference",
            "data.cleaning",
            "data.decontamination",
            "data.seed",
            "evaluation.max_new_tokens",
            "evaluation.repetition_penalty",
        ),
    ],  # fmt: skip
    code_version=code_version(
        "stages.preferences",
        "stages.cleaning",
        "stages.decontamination",
        "stages.evaluation",
        "stages.inference",
        "stages.split",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
    automation_condition=FOLLOWS_THE_MODEL,
    kinds={"json"},
    description="Preference pairs from landing/preferences/ (or synthetic from the corpus), cleaned and checked.",
    # Checked in the asset's own step, so automation's runs evaluate them too (see augmented_corpus).
    check_specs=[
        dg.AssetCheckSpec(
            "pairs_well_formed",
            asset="preference_pairs",
            blocking=True,
            description="Every pair has a prompt, two different non-empty answers, and there are enough of them.",
        ),
        dg.AssetCheckSpec(
            "pairs_not_in_eval",
            asset="preference_pairs",
            blocking=True,
            description="No pair (prompt, chosen or rejected answer) shares an n-gram with any evaluation set.",
        ),
    ],
)
def preference_pairs(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
    fine_tuned_model: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    pref = cfg.preference
    if not pref.enabled:
        out = new_output(context, paths)
        write_json(out / "summary.json", DISABLED)
        write_rows(out / "pairs.parquet", [])
        write_rows(out / "unpaired.parquet", [])
        return dg.MaterializeResult(
            data_version=dg.DataVersion("disabled"),
            metadata={"enabled": False, **recorded(out)},
            check_results=_checks(settings, out, deduplicated_corpus),
        )

    files = {path: path.relative_to(paths.landing).as_posix() for path in paths.preference_files()}
    if not files and not pref.synthetic:
        raise dg.Failure(
            f"preference.enabled but no files in {paths.preference_landing} and preference.synthetic is false: "
            "add prompt/chosen/rejected files there (see the README) or set preference.synthetic: true"
        )
    placement = None if files else inference_placement(cfg)
    synthetic = (
        None
        if placement is None
        else _synthetic(context, settings, augmented_corpus, fine_tuned_model, placement)
    )
    built = preferences.build_pairs(files, synthetic, cfg, eval_records(deduplicated_corpus))
    kept, summary, reasons = built.kept, built.summary, built.summary["dropped"]
    out = new_output(context, paths)
    write_rows(out / "pairs.parquet", kept)
    (out / "pairs.jsonl").write_text("".join(_jsonl(r) for r in preferences.dpo_rows(kept)))
    # Thumbs up/down single answers as they came (KTO's data; the pairs they make are in pairs.parquet).
    write_rows(out / "unpaired.parquet", built.unpaired)
    (out / "kto.jsonl").write_text("".join(_jsonl(r) for r in preferences.kto_rows(built.unpaired)))
    write_rows(out / "quarantine.parquet", built.dropped)
    write_json(out / "summary.json", summary)
    version = content_hash(out / "pairs.parquet", out / "unpaired.parquet", out / "quarantine.parquet")
    context.log.info(f"{len(kept)} preference pairs kept of {summary['pairs_in']} ({dict(reasons)})")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "enabled": True,
            "synthetic": summary["synthetic"],
            **(placement.as_metadata() if placement else {}),  # where the rejected answers were generated
            "pairs": len(kept),
            "pairs_by_origin": counts_table(summary["origins"], "origin"),  # pair, ranked, thumbs, synthetic
            "unpaired": summary["unpaired"],
            "unpaired_up": summary["unpaired_labels"]["up"],
            "unpaired_down": summary["unpaired_labels"]["down"],
            "dropped": counts_table(dict(reasons)),
            "sample": md_table(
                [
                    {
                        "prompt": p["messages"][-2]["content"],
                        "chosen": p["messages"][-1]["content"],
                        "rejected": p["rejected"],
                    }
                    for p in kept
                ],  # fmt: skip
                ["prompt", "chosen", "rejected"],
            ),
            **recorded(out),
        },
        check_results=_checks(settings, out, deduplicated_corpus),
    )


def _checks(settings: TunegraphSettings, out: Path, deduplicated: Path) -> list[dg.AssetCheckResult]:
    """The blocking checks, on what this step wrote (read back, as preference_model reads it)."""
    return [pairs_well_formed(settings, out), pairs_not_in_eval(settings, out, deduplicated)]


def pairs_well_formed(settings: TunegraphSettings, out: Path) -> dg.AssetCheckResult:
    if not read_json(out / "summary.json")["enabled"]:
        return dg.AssetCheckResult(check_name="pairs_well_formed", passed=True, metadata={"enabled": False})
    pairs = read_rows(out / "pairs.parquet")
    problems = Counter()
    for p in pairs:
        chosen, rejected = p["messages"][-1]["content"], p["rejected"]
        # A synthetic pair may reject a blank answer (the model said nothing); a landed one may not.
        if (
            not chosen.strip()
            or not p["messages"][-2]["content"].strip()
            or not (rejected.strip() or p["synthetic"])
        ):
            problems["empty"] += 1
        elif chosen == rejected:
            problems["chosen_equals_rejected"] += 1
    minimum = settings.config().preference.min_pairs
    passed = not problems and len(pairs) >= minimum
    fix = (
        f"fix the pairs counted in {', '.join(problems)} in landing/preferences/" if problems
        else f"add preference pairs (at least {minimum}) or lower preference.min_pairs"
    )  # fmt: skip
    return dg.AssetCheckResult(
        check_name="pairs_well_formed",
        passed=passed,
        metadata={"pairs": len(pairs), "minimum": minimum, **problems, **({} if passed else {"fix": fix})},
    )


def pairs_not_in_eval(settings: TunegraphSettings, out: Path, deduplicated: Path) -> dg.AssetCheckResult:
    # Whether or not decontamination ran: this is the check that it did its job, or that it was needed.
    cfg = settings.config()
    if not read_json(out / "summary.json")["enabled"]:
        return dg.AssetCheckResult(check_name="pairs_not_in_eval", passed=True, metadata={"enabled": False})
    n = cfg.data.decontamination.ngram
    grams = eval_ngrams(eval_records(deduplicated), n)
    pairs = read_rows(out / "pairs.parquet")
    hits = [p for p in pairs if ngrams(preferences.pair_text(p), n) & grams]
    return dg.AssetCheckResult(
        check_name="pairs_not_in_eval",
        passed=not hits,
        metadata={
            "pairs": len(pairs),
            "contaminated": len(hits),
            "ids": ", ".join(p["id"] for p in hits[:10]),
            **(
                {
                    "fix": "remove these pairs from landing/preferences/ or set data.decontamination.enabled: true"
                }
                if hits
                else {}
            ),  # fmt: skip
        },
    )


@dg.asset(
    group_name="preference",
    deps=[
        reads_config(
            "preference", "training", "tracking", "evaluation.max_new_tokens", "evaluation.repetition_penalty"
        ),
    ],
    code_version=code_version(
        "stages.launch",
        "stages.dpo",
        "assets.training_run",
        "stages.lineage",
        "stages.tables",
        asset_module=__name__,
    ),
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),  # a crash retries into resume, as for the fine-tune
    kinds={"pytorch", "mlflow"},
    description="DPO (TRL) from the fine-tuned model on the preference pairs; MLflow run; registered version.",
)
def preference_model(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    launcher: TrainingLauncher,
    preference_pairs: Path,
    fine_tuned_model: Path,
    reward_model: Path,  # noqa: ARG001 - read by grpo/rloo; its gate, reward_better_than_chance, holds every method
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    if not cfg.preference.enabled:
        out = new_output(context, paths)
        write_json(out / "summary.json", DISABLED)
        return dg.MaterializeResult(
            data_version=dg.DataVersion("disabled"), metadata={"enabled": False, **recorded(out)}
        )
    pairs_dir, sft_dir = preference_pairs, fine_tuned_model
    pairs = read_json(pairs_dir / "summary.json")
    sft = read_json(sft_dir / "mlflow.json")
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    job = TrainingJob(
        module="stages.dpo",
        run_name=cfg.preference.method,
        inputs={
            "init_model_dir": str(sft_dir / "model"),
            "pairs_path": str(pairs_dir / "pairs.jsonl"),
            # KTO also learns from the landed thumbs-up/down answers (written by preference_pairs).
            "unpaired_path": str(pairs_dir / "kto.jsonl") if (pairs_dir / "kto.jsonl").exists() else None,
            "preference": cfg.preference,
        },
        resume_key={
            "data_version": latest_data_version(context.instance, "preference_pairs") or "",
            "initial_model": f"{sft['model_name']}/{sft['version']}",
            "config": cfg.section_hash("preference", "training"),
            "code_version": code_version,
        },
        tags={
            "tunegraph.starts_from": f"models:/{sft['model_name']}/{sft['version']}",
            "tunegraph.preference_pairs": str(pairs["pairs"]),
            "tunegraph.synthetic_pairs": str(pairs["synthetic"]),
        },
        artifacts=[(pairs_dir / "summary.json", "preference")],
        datasets=[
            Dataset(
                "preference_pairs",
                "training",
                pairs_dir / "pairs.parquet",
                latest_data_version(context.instance, "preference_pairs") or "",
            )
        ],  # fmt: skip
        lineage=preference_lineage(
            read_json(sft_dir / "lineage.json"),
            sft,
            pairs.get("landing_files", {}),
            pairs,
            cfg.flat(),
            {"preference_model": code_version},
            method=cfg.preference.method,
        ),
        card={
            "data_summary": _pairs_summary(pairs),
            "training": {
                "method": f"{cfg.preference.method} ({cfg.preference.weights})",
                "beta": cfg.preference.beta,
                "learning_rate": cfg.preference.learning_rate,
                "batch_size": cfg.preference.batch_size,
            },
            "data_versions": {
                "preference_pairs": latest_data_version(context.instance, "preference_pairs") or "",
                "fine_tuned_model": latest_data_version(context.instance, "fine_tuned_model") or "",
            },
            "config_hash": cfg.section_hash("preference", "training"),
        },
    )
    trained = run_training(context, cfg, paths, mlflow_tracking, launcher, job)
    write_json(trained.out / "summary.json", {"enabled": True, "starts_from": sft})
    summary = trained.summary
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.data_version),
        metadata={
            **training_metadata(trained, mlflow_tracking, cfg.tracking.registered_model),
            "pairs": summary["pairs"],
            "synthetic_pairs": pairs["synthetic"],
            "reward_margin": summary["reward_margin"],
            "reward_accuracy": summary["reward_accuracy"],
            **recorded(trained.out),
        },
    )


def _synthetic(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    augmented: Path,
    fine_tuned: Path,
    placement: Placement,
) -> list[dict]:
    """The fine-tuned model answers some original train prompts; pairs where the reference is better."""
    cfg = settings.config()
    pref = cfg.preference
    train = [r for r in read_rows(augmented / "train.parquet") if r["augmentation"] == "none"]
    train = sorted(train, key=lambda r: eval_score(r["id"], cfg.data.seed + 11))[: pref.synthetic_examples]
    model, tokenizer = load_saved(fine_tuned / "model", placement)
    context.log.info(
        f"synthetic pairs: the fine-tuned model answers {len(train)} train prompts "
        f"on {placement.device} in {placement.dtype}"
    )
    outputs = generate(model, tokenizer, [r["messages"][:-1] for r in train], cfg.evaluation.max_new_tokens,
                       cfg.evaluation.batch_size, desc="synthetic rejected answers",
                       repetition_penalty=cfg.evaluation.repetition_penalty)  # fmt: skip
    del model
    gc.collect()
    return preferences.synthetic_pairs(train, [o["text"] for o in outputs], pref.synthetic_max_rouge_l)


def _pairs_summary(pairs: dict) -> str:
    """The preference data as the model card states it: how many pairs, from where."""
    if pairs["synthetic"]:
        source = "synthetic (the reference answer chosen, the fine-tuned model's answer rejected)"
    else:
        source = f"from {', '.join(pairs['files'])} in landing/preferences/"
    dropped = pairs["dropped"] or "none"
    return f"DPO on {pairs['pairs']} preference pairs {source}; {pairs['pairs_in']} read, dropped: {dropped}."


def _jsonl(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"
