"""`reward_model`: a learnt model of what the labellers prefer, gated by `reward_better_than_chance`.

TRL's RewardTrainer puts a scalar head on the fine-tuned model and trains it on the training share
of the preference pairs that passed their gates (stages/reward.py); the held-out share measures it.
It is registered under `<tracking.registered_model>-reward`, a name of its own, so it is never a
champion candidate (model_evaluation chooses among the versions of `tracking.registered_model`).
Its blocking check stops everything that reads it, on every path: a reward model a coin ranks pairs
as well as must not steer training or judge models. With `preference.enabled: false` it records
that and does nothing, like `preference_model`.
"""

from pathlib import Path

import dagster as dg

from assets.metadata import md_table
from assets.sources import reads_config
from assets.training_run import Dataset, TrainingJob, run_training, training_metadata
from assets.versions import latest_data_version
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages.code_version import code_version
from stages.config import PipelineConfig
from stages.lineage import preference_lineage
from stages.reward import HELD_OUT_FILE
from stages.reward_gate import judge
from stages.tables import read_json, read_rows, write_json

DISABLED = {"enabled": False, "heldout_accuracy": None, "heldout_pairs": 0}
SHOWN = 8  # held-out pairs in the metadata's table


def reward_registered_model(cfg: PipelineConfig) -> str:
    """The registry name of the reward model: beside the policy's, never one of its versions."""
    return f"{cfg.tracking.registered_model}-reward"


@dg.asset(
    group_name="preference",
    deps=[
        reads_config(
            "preference.enabled",
            # Whether its gate blocks (online RL) or warns (DPO, KTO) is decided in its step.
            "preference.method",
            "preference.weights",
            "preference.reward_model",
            "training",
            "tracking",
            "data.seed",
        )
    ],
    code_version=code_version(
        "stages.launch",
        "stages.reward",
        "stages.reward_gate",
        "stages.reward_scoring",
        "assets.training_run",
        "stages.lineage",
        "stages.tables",
        asset_module=__name__,
    ),
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),  # a crash retries into resume, as for the fine-tune
    kinds={"pytorch", "mlflow"},
    description="Reward model (TRL RewardTrainer) from the fine-tuned model on the preference pairs; held-out "
    "pair accuracy; registered as <registered_model>-reward.",
    # Checked in the asset's own step, so automation's runs evaluate it too (see preference_pairs).
    check_specs=[
        dg.AssetCheckSpec(
            "reward_better_than_chance",
            asset="reward_model",
            blocking=True,
            description="The reward model ranks the held-out pairs better than a coin would (one-sided binomial "
            "test at preference.reward_model.significance) and at least preference.reward_model.min_accuracy.",
        )
    ],
)
def reward_model(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    launcher: TrainingLauncher,
    preference_pairs: Path,
    fine_tuned_model: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    if not cfg.preference.enabled:
        out = new_output(context, paths)
        write_json(out / "summary.json", DISABLED)
        return dg.MaterializeResult(
            data_version=dg.DataVersion("disabled"),
            metadata={"enabled": False, **recorded(out)},
            check_results=[reward_better_than_chance(cfg, out)],
        )
    pairs_dir, sft_dir = preference_pairs, fine_tuned_model
    pairs = read_json(pairs_dir / "summary.json")
    sft = read_json(sft_dir / "mlflow.json")
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    pairs_version = latest_data_version(context.instance, "preference_pairs") or ""
    job = TrainingJob(
        module="stages.reward",
        run_name="reward",
        inputs={
            "init_model_dir": str(sft_dir / "model"),
            "reward_pairs_path": str(pairs_dir / "pairs.parquet"),
            "preference": cfg.preference,
        },
        resume_key={
            "data_version": pairs_version,
            "initial_model": f"{sft['model_name']}/{sft['version']}",
            "config": cfg.section_hash(
                "preference.enabled", "preference.weights", "preference.reward_model", "training", "data.seed"
            ),
            "code_version": code_version,
        },
        tags={
            "tunegraph.starts_from": f"models:/{sft['model_name']}/{sft['version']}",
            "tunegraph.preference_pairs": str(pairs["pairs"]),
            "tunegraph.synthetic_pairs": str(pairs["synthetic"]),
        },
        artifacts=[(pairs_dir / "summary.json", "preference")],
        datasets=[Dataset("preference_pairs", "training", pairs_dir / "pairs.parquet", pairs_version)],
        lineage=preference_lineage(
            read_json(sft_dir / "lineage.json"),
            sft,
            pairs.get("landing_files", {}),
            pairs,
            cfg.flat(),
            {"reward_model": code_version},
            method="reward_model",
        ),
        registered_model=reward_registered_model(cfg),
        scalar_head=True,
    )
    trained = run_training(context, cfg, paths, mlflow_tracking, launcher, job)
    summary = trained.summary
    # The held-out accuracy and margin are in the run already (final_heldout_*); the pairs with their scores too.
    mlflow_tracking.client().log_artifact(trained.run_id, str(trained.out / HELD_OUT_FILE), "heldout")
    heldout = {
        k: summary[k] for k in ("heldout_pairs", "heldout_correct", "heldout_accuracy", "heldout_margin")
    }
    write_json(trained.out / "summary.json", {"enabled": True, "starts_from": sft, **heldout})
    scored = read_rows(trained.out / HELD_OUT_FILE)
    rows = [{**r, "chosen_score": round(r["chosen_score"], 3), "rejected_score": round(r["rejected_score"], 3)}
            for r in scored]  # fmt: skip
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.data_version),
        metadata={
            **training_metadata(trained, mlflow_tracking, reward_registered_model(cfg)),
            "pairs_train": summary["train_pairs"],
            "pairs_trained_on": summary["train_pairs_used"],  # TRL leaves out pairs over max_length
            "pairs_heldout": summary["heldout_pairs"],
            "synthetic_pairs": pairs["synthetic"],
            "heldout_accuracy": _number(summary["heldout_accuracy"]),
            "heldout_margin": _number(summary["heldout_margin"]),
            "heldout_pairs_scored": md_table(
                rows,
                ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"],
                limit=SHOWN,
                width=60,
            ),
            **recorded(trained.out),
        },
        check_results=[reward_better_than_chance(cfg, trained.out)],
    )


def reward_better_than_chance(cfg: PipelineConfig, out: Path) -> dg.AssetCheckResult:
    """The gate, on what this step wrote (read back, as whatever reads the reward model reads it)."""
    summary = read_json(out / "summary.json")
    if not summary["enabled"]:
        return dg.AssetCheckResult(
            check_name="reward_better_than_chance", passed=True, metadata={"enabled": False}
        )
    rm = cfg.preference.reward_model
    verdict = judge(summary["heldout_correct"], summary["heldout_pairs"], rm)
    # It blocks where the reward model steers training (online RL); for DPO and KTO, which learn from the
    # pairs themselves, a failed gate warns, and model_evaluation leaves its judgement out of the leaderboard.
    steers = cfg.preference.method in ("grpo", "rloo")
    return dg.AssetCheckResult(
        check_name="reward_better_than_chance",
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR if steers else dg.AssetCheckSeverity.WARN,
        metadata={
            "steers_training": steers,
            "heldout_pairs": verdict.pairs,
            "correct": verdict.correct,
            "accuracy": _number(verdict.accuracy),
            "p_value": _number(verdict.p_value),
            "significance": rm.significance,
            "min_accuracy": rm.min_accuracy,
            ("verdict" if verdict.passed else "fix"): verdict.reason,
        },
    )


def _number(value: float | None) -> float | str:
    return "not measured" if value is None else round(value, 4)
