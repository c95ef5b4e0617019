"""`preference_pairs` and `preference_model`: DPO, or online RL (GRPO/RLOO, `train_rl`) against the reward
model, after the supervised fine-tune (`preference.enabled`, `preference.method`).

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
from assets.metadata import counts_table, md_table, png
from assets.sources import preference_files, reads_config
from assets.training_run import Dataset, TrainingJob, run_training, training_metadata
from assets.versions import latest_data_version
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages import preferences
from stages.code_version import code_version
from stages.config import PipelineConfig, RLConfig
from stages.content import content_hash
from stages.decontamination import eval_ngrams, ngrams
from stages.evaluation import generate
from stages.inference import Placement, inference_placement, load_saved
from stages.lineage import preference_lineage, rl_lineage
from stages.split import eval_score
from stages.tables import read_json, read_jsonl, read_rows, write_json, write_jsonl, write_rows

DISABLED = {"enabled": False, "pairs": 0}


@dg.asset(
    group_name="preference",
    deps=[
        preference_files,
        reads_config(
            "corpus",
            "preference.enabled",
            "preference.synthetic",
            "preference.synthetic_examples",
            "preference.synthetic_max_rouge_l",
            "preference.min_pairs",
            "preference.reward_model.heldout_fraction",
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
    # One split for every reader, made here once by the pairs' stable hash (the `heldout` column): DPO and
    # KTO learn from the training share; the held-out share judges (the reward model's gate, each policy's
    # pair accuracy in model_evaluation).
    train, held_out = preferences.split_pairs(kept, pref.reward_model.heldout_fraction, cfg.data.seed)
    write_rows(
        out / "pairs.parquet",
        [{**r, "heldout": False} for r in train] + [{**r, "heldout": True} for r in held_out],
    )
    (out / "pairs.jsonl").write_text("".join(_jsonl(r) for r in preferences.dpo_rows(train)))
    (out / "heldout_pairs.jsonl").write_text("".join(_jsonl(r) for r in preferences.dpo_rows(held_out)))
    # Thumbs up/down single answers as they came (the pairs they make are in pairs.parquet); KTO's rows.
    write_rows(out / "unpaired.parquet", built.unpaired)
    thumbs, _ = preferences.split_pairs(
        [{**r, "split_id": preferences.prompt_split_id(r["messages"][:-1])} for r in built.unpaired],
        pref.reward_model.heldout_fraction,
        cfg.data.seed,
    )
    kto = preferences.kto_training_rows(train, thumbs)
    (out / "kto.jsonl").write_text("".join(_jsonl(r) for r in kto))
    summary |= {"train_pairs": len(train), "heldout_pairs": len(held_out), "kto_rows": len(kto)}
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
        "stages.rl",
        "stages.rule_rewards",
        "stages.preferences",
        "assets.training_run",
        "stages.lineage",
        "stages.tables",
        asset_module=__name__,
    ),
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),  # a crash retries into resume, as for the fine-tune
    kinds={"pytorch", "mlflow"},
    description="DPO, or online RL (GRPO/RLOO) against the reward model, from the fine-tuned model (TRL); "
    "MLflow run; registered version.",
)
def preference_model(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    launcher: TrainingLauncher,
    preference_pairs: Path,
    fine_tuned_model: Path,
    augmented_corpus: Path,
    reward_model: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    if not cfg.preference.enabled:
        out = new_output(context, paths)
        write_json(out / "summary.json", DISABLED)
        return dg.MaterializeResult(
            data_version=dg.DataVersion("disabled"), metadata={"enabled": False, **recorded(out)}
        )
    if cfg.preference.method in ("grpo", "rloo"):
        return train_rl(
            context,
            settings,
            mlflow_tracking,
            launcher,
            fine_tuned_model,
            augmented_corpus,
            reward_model / "model",
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
            # KTO's rows: the landed thumbs-up/down answers and the training pairs taken apart.
            "unpaired_path": str(pairs_dir / "kto.jsonl"),
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
    write_json(
        trained.out / "summary.json", {"enabled": True, "method": cfg.preference.method, "starts_from": sft}
    )
    summary = trained.summary
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.data_version),
        metadata={
            **training_metadata(trained, mlflow_tracking, cfg.tracking.registered_model),
            "method": cfg.preference.method,
            # DPO learns from the training share of the pairs; KTO from single answers (thumbs, pairs taken apart).
            ("pairs" if cfg.preference.method == "dpo" else "rows"): summary["rows"],
            "synthetic_pairs": pairs["synthetic"],
            "reward_margin": summary["reward_margin"],
            "reward_accuracy": summary["reward_accuracy"],
            **recorded(trained.out),
        },
    )


def train_rl(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    launcher: TrainingLauncher,
    fine_tuned_model: Path,
    augmented_corpus: Path,
    reward_model_dir: Path,
) -> dg.MaterializeResult:
    """GRPO or RLOO (stages/rl.py) from the fine-tuned model against the reward model in `reward_model_dir`
    (the model folder itself): `preference_model`'s body for `preference.method: grpo | rloo`."""
    cfg, paths = settings.config(), settings.paths()
    # Beside the checkpoints: the same prompts are what a resumed run continues on (its resume key has their
    # hash); the MLflow run keeps a copy and stages.rl one in the output folder.
    asset = context.asset_key.to_user_string()
    prompts = write_rl_prompts(cfg, augmented_corpus, paths.checkpoints(asset) / "prompts.jsonl")
    job = rl_job(context, cfg, fine_tuned_model, prompts, reward_model_dir)
    trained = run_training(context, cfg, paths, mlflow_tracking, launcher, job)
    sft = read_json(fine_tuned_model / "mlflow.json")
    write_json(
        trained.out / "summary.json", {"enabled": True, "method": cfg.preference.method, "starts_from": sft}
    )
    summary = trained.summary
    generations = read_jsonl(Path(summary["generations_file"]))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.data_version),
        metadata={
            **training_metadata(trained, mlflow_tracking, cfg.tracking.registered_model),
            "method": cfg.preference.method,
            "prompts": summary["prompts"],
            "reward_first_steps": summary["reward_first_steps"],
            "reward_last_steps": summary["reward_last_steps"],
            "kl": "not computed (beta 0)" if summary["kl"] is None else summary["kl"],
            "seconds_per_step": round(summary["seconds_per_step"], 2),
            "generated_tokens_per_s": round(summary["generated_tokens_per_s"], 1),
            "reward_curve": png(Path(summary["reward_plot"]), "reward and KL"),
            "generations": md_table(generations, ["step", "prompt", "completion", "reward"], limit=12),
            **recorded(trained.out),
        },
    )


def write_rl_prompts(cfg: PipelineConfig, augmented: Path, path: Path) -> Path:
    """The held-in prompts RL samples from (original train records, chosen as synthetic pairs are), as JSONL."""
    rows = read_rows(augmented / "train.parquet")
    records = preferences.held_in_records(rows, cfg.preference.rl.prompts, cfg.data.seed + 11)
    if not records:
        raise dg.Failure(
            "no original train record answers a prompt: RL needs prompts (check the corpus format)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(path, preferences.rl_prompts(records))


def rl_job(
    context: dg.AssetExecutionContext,
    cfg: PipelineConfig,
    sft_dir: Path,
    prompts_path: Path,
    reward_model_dir: Path,
) -> TrainingJob:
    """The training job of `stages.rl`: the fine-tuned model as policy and reference, the prompts file, the
    reward model folder. It resumes only with the same data, starting model, reward model, config and code."""
    pref = cfg.preference
    sft = read_json(sft_dir / "mlflow.json")
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    prompts = {
        "count": len(prompts_path.read_text().splitlines()),
        "content_hash": content_hash(prompts_path),
    }
    reward = {"dir": str(reward_model_dir), "content_hash": content_hash(reward_model_dir)}
    registered, reward_lineage = (
        reward_model_dir.parent / "mlflow.json",
        reward_model_dir.parent / "lineage.json",
    )
    if (
        registered.exists()
    ):  # the reward_model asset's output: its registry entry and gate, for lineage and card
        entry, gate = read_json(registered), read_json(reward_model_dir.parent / "summary.json")
        reward |= {"uri": f"models:/{entry['model_name']}/{entry['version']}", "model_name": entry["model_name"],
                   "version": entry["version"], "heldout_accuracy": gate.get("heldout_accuracy")}  # fmt: skip
    return TrainingJob(
        module="stages.rl",
        run_name=pref.method,
        inputs={
            "init_model_dir": str(sft_dir / "model"),
            "prompts_path": str(prompts_path),
            "reward_model_dir": str(reward_model_dir),
            "preference": pref,
        },
        resume_key={
            "data_version": prompts["content_hash"],
            "initial_model": f"{sft['model_name']}/{sft['version']}",
            "reward_model": reward["content_hash"],
            "config": cfg.section_hash("preference", "training"),
            "code_version": code_version,
        },
        tags={
            "tunegraph.starts_from": f"models:/{sft['model_name']}/{sft['version']}",
            "tunegraph.rl_prompts": str(prompts["count"]),
            "tunegraph.reward_model_dir": str(reward_model_dir),
        },
        artifacts=[(prompts_path, "rl")],
        lineage=rl_lineage(
            read_json(sft_dir / "lineage.json"),
            sft,
            pref.method,
            prompts,
            reward,
            cfg.flat(),
            {"preference_model": code_version},
            # The reward model's own lineage holds the preference files it learnt from.
            read_json(reward_lineage)["landing_files"] if reward_lineage.exists() else None,
        ),  # fmt: skip
        card={
            "data_summary": f"{pref.method.upper()} on {prompts['count']} held-in prompts of the training split, "
            f"rewarded by {_rewards_summary(pref.rl)}"
            + (
                f"; the reward model is `{reward['uri']}` (held-out pair accuracy {reward['heldout_accuracy']:.2f})."
                if "uri" in reward
                else "."
            ),  # fmt: skip
            "training": {
                "method": f"{pref.method} ({pref.weights})",
                "beta": pref.rl.beta,
                "learning_rate": pref.rl.learning_rate,
                "num_generations": pref.rl.num_generations,
                "prompts_per_step": pref.rl.prompts_per_step,
                "max_completion_tokens": pref.rl.max_completion_tokens,
            },
            "data_versions": {
                "augmented_corpus": latest_data_version(context.instance, "augmented_corpus") or "",
                "fine_tuned_model": latest_data_version(context.instance, "fine_tuned_model") or "",
            },
            "config_hash": cfg.section_hash("preference", "training"),
        },
    )


def _rewards_summary(rl: RLConfig) -> str:
    """The rewards as the model card states them: each with its weight."""
    parts = {"the reward model": rl.rewards.reward_model.weight, "stopping at EOS": rl.rewards.stops_at_eos.weight,
             f"a length of {rl.rewards.length.min_tokens}-{rl.rewards.length.max_tokens} tokens": rl.rewards.length.weight,
             "ROUGE-L to the reference": rl.rewards.rouge_l.weight}  # fmt: skip
    return ", ".join(f"{name} (x{weight:g})" for name, weight in parts.items() if weight)


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
