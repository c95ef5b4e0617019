"""`base_model` (the pretrained model, saved once as safetensors) and `fine_tuned_model` (the MLflow-tracked fine-tune)."""

import hashlib
import os
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import mlflow
import torch
from mlflow.entities import Metric, Param, RunTag

from assets.automation import EAGER_BEHIND_GATES
from assets.metadata import folder_version, png
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages import checkpoints, plots, processes
from stages.model_source import load_saved, save_base_model
from stages.tables import read_json, read_rows, write_json


@dg.asset(
    group_name="model",
    code_version="base-1",
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"pytorch"},
    description="The pretrained model + tokenizer + chat template, stored as safetensors (model.base).",
)
def base_model(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    context.log.info(f"resolving model.base = {cfg.model.base}")
    with paths.publish("base_model", keep=2) as out:
        facts = save_base_model(cfg.model.base, out / "model")
        write_json(out / "summary.json", facts)
    return dg.MaterializeResult(
        data_version=folder_version(out),
        metadata={
            "source": facts["source"],
            "architecture": facts["architecture"],
            "parameters": facts["parameters"],
            "vocab_size": facts["vocab_size"],
            "eos_token": facts["eos_token"],
            "chat_template_defaulted": facts["chat_template_defaulted"],
            "chat_template": dg.MetadataValue.md(f"```jinja\n{facts['chat_template']}\n```"),
        },
    )


# Part of the resume key: a checkpoint written by other training code is never resumed.
TRAINING_CODE_HASH = hashlib.sha256(
    b"".join((Path(__file__).parents[1] / "stages" / f).read_bytes() for f in ("train.py", "checkpoints.py"))
).hexdigest()[:12]

# Listed explicitly: MLflow's inferred requirements import torchvision, which is not installed.
PIP_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    "transformers>=5",
    "safetensors",
    "accelerate",
]


@dg.asset(
    group_name="model",
    deps=["tokenized_dataset", base_model],
    code_version="finetune-2",
    pool="gpu",
    # A crash or a killed training process is retried, and the retry resumes from the last checkpoint.
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),
    kinds={"pytorch", "mlflow"},
    description="LoRA (merged) or full fine-tune in its own process; one MLflow run; a registered model version.",
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    client = mlflow_tracking.client()
    experiment_id = mlflow_tracking.experiment_id(cfg.tracking.experiment)
    for stale in mlflow_tracking.end_orphaned_runs(experiment_id):
        context.log.warning(f"MLflow run {stale} was left RUNNING by a killed process: marked KILLED")
    init_dir, warm_start = _initial_model(mlflow_tracking, paths, cfg)
    upstream = {a: paths.latest(a).name for a in ("base_model", "augmented_corpus")}
    upstream["tokenized_dataset"] = read_json(paths.latest("tokenized_dataset") / "summary.json")[
        "content_version"
    ]
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    resume_key = {
        "data_version": upstream["tokenized_dataset"],
        "initial_model": warm_start["model_uri"] if warm_start else upstream["base_model"],
        "config": cfg.section_hash("model", "training"),
        "code_version": f"{code_version}/{TRAINING_CODE_HASH}",
    }
    tags = {
        "dagster.run_id": context.run_id,
        "tunegraph.asset": "fine_tuned_model",
        "tunegraph.host": processes.host(),
        "tunegraph.pid": str(os.getpid()),
        "tunegraph.code_version": code_version,
        "tunegraph.config_hash": cfg.section_hash("corpus", "data", "model", "training"),
        "tunegraph.base_model": cfg.model.base,
        **({"tunegraph.warm_start_from": warm_start["model_uri"]} if warm_start else {}),
        **{f"tunegraph.data_version.{a}": v for a, v in upstream.items()},
    }
    run = client.create_run(experiment_id, run_name=f"fine-tune {context.run_id[:8]}", tags=tags)
    run_id = run.info.run_id
    context.log.info(f"MLflow run {run_id}")
    try:
        checkpoint_dir = paths.checkpoints("fine_tuned_model")
        plan = checkpoints.plan_resume(checkpoint_dir, resume_key, run_id)
        context.log.info(plan.reason)
        client.log_batch(
            run_id,
            params=[Param(k, str(v)[:6000]) for k, v in cfg.flat().items()],
            tags=[RunTag("tunegraph.resumed_from_step", str(plan.step))]
            + ([RunTag("tunegraph.resumed_from_run", plan.previous_run_id)] if plan.previous_run_id else []),
        )
        with paths.publish("fine_tuned_model", keep=3) as out:
            spec = {
                "init_model_dir": str(init_dir),
                "train_path": str(paths.latest("tokenized_dataset") / "train_blocks.parquet"),
                "output_dir": str(out),
                "checkpoint_dir": str(checkpoint_dir),
                "resume_from": str(plan.checkpoint) if plan.checkpoint else None,
                "resumed_from_step": plan.step if plan.checkpoint else None,
                "parent_pid": os.getpid() if launcher.local else None,
                "training": cfg.training.model_dump(mode="json"),
                "mlflow": {"tracking_uri": mlflow_tracking.uri(), "run_id": run_id},
            }
            write_json(out / "spec.json", spec)
            launcher.launch(context, str(out / "spec.json"), cfg.training, use_gpu=torch.cuda.is_available())
            summary = read_json(out / "train_summary.json")
            history = summary["history"]
            plots.curve(
                [h["step"] for h in history],
                [h["loss"] for h in history],
                out / "loss.png",
                "training loss",
                "loss",
            )
            client.log_artifact(run_id, str(out / "loss.png"))
            tokens_dir = paths.latest("tokenized_dataset")
            client.log_artifact(run_id, str(tokens_dir / "dataset_card.md"), "dataset")
            client.log_artifact(run_id, str(tokens_dir / "lengths.png"), "dataset")
            client.log_batch(run_id, metrics=_final_metrics(summary))
            version = _log_and_register(mlflow_tracking, run_id, out, cfg.tracking.registered_model)
            final_dir = paths.published(out)
            for key, value in {**tags, "tunegraph.model_dir": str(final_dir / "model")}.items():
                client.set_model_version_tag(cfg.tracking.registered_model, version, key, value)
            lineage = _lineage(context, paths, cfg, summary, warm_start)
            write_json(out / "lineage.json", lineage)
            client.log_dict(run_id, lineage, "lineage/lineage.json")
            registry = {
                "mlflow_run_id": run_id,
                "model_name": cfg.tracking.registered_model,
                "version": version,
            }
            write_json(out / "mlflow.json", registry)
            loss_png = png(out / "loss.png", "training loss")
        client.set_terminated(run_id, "FINISHED")
        checkpoints.clear(checkpoint_dir)  # the model is published: nothing left to resume
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as interrupt:
        client.set_terminated(run_id, "KILLED")  # Ctrl-C or a terminated run: the checkpoints stay
        raise dg.Failure(
            "interrupted: MLflow run marked KILLED, checkpoints kept; materialise again to resume",
            allow_retries=False,  # a user's stop is not a crash to retry
        ) from interrupt
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # never leave a crashed fine-tune RUNNING
        raise
    return dg.MaterializeResult(
        data_version=folder_version(out),
        metadata={
            "steps": summary["steps"],
            "resumed_from_step": plan.step,
            "resume": plan.reason,
            "warm_start_from": warm_start["model_uri"] if warm_start else "",
            "train_loss": round(summary["train_loss"], 4),
            "effective_tokens_per_s": round(summary["effective_tokens_per_s"], 1),
            "wall_s": round(summary["wall_s"], 1),
            "device": f"{summary['num_processes']} x {summary['device']}",
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(mlflow_tracking.ui_url(run_id, experiment_id)),
            "registered_model": f"{cfg.tracking.registered_model} v{version}",
            "loss_curve": loss_png,
        },
    )


def _initial_model(tracking: MlflowTracking, paths, cfg) -> tuple[Path, dict | None]:  # noqa: ANN001
    """The base model, or the registered version `training.warm_start_from` names (step 0 either way)."""
    if not cfg.training.warm_start_from:
        return paths.latest("base_model") / "model", None
    version = tracking.resolve_version(cfg.training.warm_start_from, cfg.tracking.registered_model)
    model_uri = f"models:/{version.name}/{version.version}"
    local = Path(version.tags.get("tunegraph.model_dir", ""))
    if not (local / "config.json").is_file():  # published elsewhere or pruned: fetch it from MLflow
        local = paths.model_cache(version.name, version.version)
        if not (local / "config.json").is_file():
            tracking.activate()
            parts = mlflow.transformers.load_model(model_uri, return_type="components")
            parts["model"].save_pretrained(local)
            parts["tokenizer"].save_pretrained(local)
    return local, {"model_uri": model_uri, "requested": cfg.training.warm_start_from, "model_dir": str(local)}


UPSTREAM_ASSETS = ("raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset",
                   "base_model")  # fmt: skip


def _lineage(context: dg.AssetExecutionContext, paths, cfg, summary: dict, warm_start: dict | None) -> dict:  # noqa: ANN001
    """Landing files (content hash, train records), config, code versions: what `compare` diffs."""
    train = read_rows(paths.latest("augmented_corpus") / "train.parquet")
    per_file = Counter(r["source_file"] for r in train)
    files = {}
    for key in read_json(paths.latest("deduplicated_corpus") / "summary.json")["partitions"]:
        raw = read_json(paths.latest("raw_corpus", key) / "summary.json")
        files[key] = {"content_hash": raw["content_hash"], "train_records": per_file.get(key, 0)}
    # Upstream code versions as recorded on their latest materialisations; this asset's own from its definition.
    code_versions = {"fine_tuned_model": context.assets_def.code_versions_by_key[context.asset_key]}
    for name in UPSTREAM_ASSETS:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is not None and event.asset_materialization is not None:
            code_versions[name] = (event.asset_materialization.tags or {}).get("dagster/code_version")
    return {
        "landing_files": files,
        "config": cfg.flat(),
        "code_versions": code_versions,
        "warm_start_from": warm_start,
        "resumed_from_step": summary["resumed_from_step"],
        "metrics": {"train_loss": summary["train_loss"]},
    }


def _final_metrics(summary: dict) -> list[Metric]:
    now = int(time.time() * 1000)
    keys = ("train_loss", "mean_train_loss", "label_tokens", "wall_s", "effective_tokens_per_s", "tracking_s")
    return [Metric(f"final_{k}", float(summary[k]), now, summary["steps"]) for k in keys]


def _log_and_register(tracking: MlflowTracking, run_id: str, out: Path, registered_model: str) -> str:
    """Log the merged model with its tokenizer and chat template; register it; return the version."""
    tracking.activate()
    model, tokenizer = load_saved(out / "model")
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="model",
            task="text-generation",
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model,
        )
    return str(info.registered_model_version)
