"""One tracked training run, shared by `fine_tuned_model` (SFT), `preference_model` (DPO) and
`reward_model` (a scalar head on the fine-tuned model, registered under a name of its own).

The same path for both: end MLflow runs orphaned by killed processes, open an MLflow run, decide
whether to resume from checkpoints (same data, config and code) or start at step 0, launch the
training process through Dagster Pipes, then log the loss curve, metrics and model, register a
version and write the lineage. A crash marks the run FAILED and a user's stop marks it KILLED
(never retried); nothing is ever left RUNNING.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import torch
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from assets.metadata import png
from resources.outputs import new_output
from resources.settings import Paths
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages import checkpoints, launch, memory, model_card, plots, processes, serving
from stages.config import PipelineConfig
from stages.content import content_hash
from stages.inference import Placement, inference_placement, load_saved
from stages.lineage import run_name
from stages.reward_scoring import load_reward_model
from stages.spec import MlflowTarget, TrainingSpec
from stages.tables import read_json, read_rows, records_frame, write_json

# Listed explicitly: MLflow's inferred requirements import torchvision, which is not installed.
PIP_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    "transformers>=5",
    "safetensors",
    "accelerate",
]


@dataclass
class TrainingJob:
    """What differs between the training assets; everything else is shared."""

    module: str  # the entry point, run as `python -m MODULE SPEC.json`
    run_name: str
    inputs: dict[str, Any]  # this stage's TrainingSpec fields: the model to start from, its data, its config
    resume_key: dict[str, str]
    tags: dict[str, str]
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, MLflow folder)
    lineage: dict[str, Any] = field(default_factory=dict)
    datasets: list["Dataset"] = field(default_factory=list)  # logged as the run's inputs
    # What the model card says of this stage: data_summary (markdown), training (settings),
    # data_versions (asset -> Dagster data version), config_hash. Empty: no card (the reward model).
    card: dict[str, Any] = field(default_factory=dict)
    # The registry name; None: tracking.registered_model, the one the champion is chosen from.
    registered_model: str | None = None
    # A reward model: a sequence classifier that scores answers, logged as such; no decoding to save.
    scalar_head: bool = False


@dataclass(frozen=True)
class Dataset:
    """Records a run trained or was evaluated on, as MLflow shows them under the run's inputs."""

    name: str
    context: str  # MLflow's dataset context: "training" or "evaluation"
    path: Path  # records Parquet
    digest: str  # the content version: the same data has the same digest in every run


@dataclass
class TrainedModel:
    summary: dict[str, Any]
    out: Path  # the output folder (this run's)
    run_id: str
    experiment_id: str
    version: str
    plan: checkpoints.ResumePlan
    loss_png: dg.MetadataValue
    data_version: str  # the model folder's content (weights, tokenizer, decoding), not its card
    inference: dict[str, str]  # where and in which dtype the model was loaded to be logged (Placement)


def run_training(
    context: dg.AssetExecutionContext,
    cfg: PipelineConfig,
    paths: Paths,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
    job: TrainingJob,
) -> TrainedModel:
    asset = context.asset_key.to_user_string()
    registered_model = job.registered_model or cfg.tracking.registered_model
    client = tracking.client()
    experiment_id = tracking.experiment_id(cfg.tracking.experiment)
    for stale in tracking.end_orphaned_runs(experiment_id):
        context.log.warning(f"MLflow run {stale} was left RUNNING by a killed process: marked KILLED")
    for version in _delete_unrecorded_versions(context, client, registered_model):
        context.log.warning(
            f"{registered_model} v{version} was registered by a run that ended before Dagster "
            "recorded it (killed or failed): deleted, as nothing may use a model Dagster never recorded"
        )
    tags = {
        "mlflow.source.type": "JOB",  # the runs table's Source column
        "mlflow.source.name": f"dagster {asset}",
        "dagster.run_id": context.run_id,
        "tunegraph.asset": asset,
        "tunegraph.host": processes.host(),
        "tunegraph.pid": str(os.getpid()),
        "tunegraph.pid_started": str(processes.started()),  # a reused pid is not this process
        "tunegraph.code_version": context.assets_def.code_versions_by_key[context.asset_key] or "",
        **job.tags,
    }
    params = {k: str(v)[:6000] for k, v in cfg.flat().items()}
    previous = _previous_params(client, experiment_id, asset)
    name = run_name(job.run_name, job.resume_key["data_version"], params, previous)
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    context.log.info(f"MLflow run {run_id} ({name})")
    try:
        checkpoint_dir = paths.checkpoints(asset)
        plan = checkpoints.plan_resume(checkpoint_dir, job.resume_key, run_id)
        context.log.info(plan.reason)
        resumed = [RunTag("tunegraph.resumed_from_run", plan.previous_run_id)] if plan.previous_run_id else []
        client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag("tunegraph.resumed_from_step", str(plan.step)), *resumed],
        )
        client.log_inputs(run_id, datasets=[_dataset_input(d) for d in job.datasets])
        out = new_output(context, paths)
        spec_model = TrainingSpec(
            **job.inputs,
            output_dir=out,
            checkpoint_dir=checkpoint_dir,
            resume_from=plan.checkpoint,
            resumed_from_step=plan.step if plan.checkpoint else None,
            # A local training process watches this step's pid; a pod cannot see it.
            parent_pid=os.getpid() if cfg.training.launcher.kind == "local" else None,
            training=cfg.training,
            model_dtype=cfg.model.dtype,
            mlflow=MlflowTarget(tracking_uri=tracking.uri(), run_id=run_id),
        )
        spec = spec_model.write(out / "spec.json")
        if cfg.training.launcher.kind == "local":
            # stages.launch runs this gate where training runs; here too, so that a run that cannot fit
            # fails its step once, in one line, instead of a retried launch (a pod's gate runs in the pod).
            devices = launch.visible_devices()
            try:
                memory.gate(spec_model, devices, launch.process_count(cfg.training, devices))
            except memory.DoesNotFit as err:
                raise dg.Failure(str(err), allow_retries=False) from None
        # Where it trains is the config's; the device and process count are decided there.
        launcher.launch(context, job.module, str(spec), cfg.training.launcher, str(paths.home))
        summary = read_json(out / "train_summary.json")
        history, evals = summary["history"], summary.get("eval_history", [])
        plots.curves({"train": ([h["step"] for h in history], [h["loss"] for h in history]),
                      "held-out": ([e["step"] for e in evals], [e["eval_loss"] for e in evals])},
                     out / "loss.png", "training and held-out loss", "loss")  # fmt: skip
        for path, folder in [(out / "loss.png", None), *job.artifacts]:
            client.log_artifact(run_id, str(path), folder)
        client.log_batch(run_id, metrics=_final_metrics(summary))
        # Serve as evaluated: the evaluation's decoding becomes the model's generation_config.json.
        decoding = {} if job.scalar_head else serving.write_generation_config(out / "model", {
            "max_new_tokens": cfg.evaluation.max_new_tokens,
            "repetition_penalty": cfg.evaluation.repetition_penalty,
        })  # fmt: skip
        placement = inference_placement(cfg)
        client.log_batch(
            run_id, tags=[RunTag(f"tunegraph.{k}", v) for k, v in placement.as_metadata().items()]
        )
        version, model_id = _log_and_register(
            tracking, run_id, out, registered_model, placement, job.scalar_head
        )
        name = run_name(job.run_name, job.resume_key["data_version"], params, previous, version)
        client.update_run(run_id, name=name)  # the version is known only now
        for key, value in {**tags, "tunegraph.model_dir": str(out / "model")}.items():
            client.set_model_version_tag(registered_model, version, key, value)
        lineage = {**job.lineage, "resumed_from_step": summary["resumed_from_step"],
                   "metrics": {"train_loss": summary["train_loss"]}}  # fmt: skip
        write_json(out / "lineage.json", lineage)
        client.log_dict(run_id, lineage, "lineage/lineage.json")
        if job.card:
            card = _card_facts(context, cfg, job, summary, decoding, version, run_id)
            write_json(out / "card.json", card)  # model_evaluation renders the card again with its results
            client.log_model_artifact(model_id, str(model_card.write(model_card.render(card), out / "model")))
        registry = {
            "mlflow_run_id": run_id,
            "model_name": registered_model,
            "version": version,
            "model_id": model_id,
        }
        write_json(out / "mlflow.json", registry)
        loss_png = png(out / "loss.png", "training loss")
        client.set_terminated(run_id, "FINISHED")
        checkpoints.clear(checkpoint_dir)  # the model is written and registered: nothing left to resume
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as interrupt:
        client.set_terminated(run_id, "KILLED")  # Ctrl-C or a terminated run: the checkpoints stay
        raise dg.Failure(
            "interrupted: MLflow run marked KILLED, checkpoints kept; materialise again to resume",
            allow_retries=False,  # a user's stop is not a crash to retry
        ) from interrupt
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # never leave a crashed training RUNNING
        raise
    data_version = content_hash(out / "model", ignore=(model_card.FILE,))
    return TrainedModel(
        summary, out, run_id, experiment_id, version, plan, loss_png, data_version, placement.as_metadata()
    )


def _delete_unrecorded_versions(
    context: dg.AssetExecutionContext, client: mlflow.MlflowClient, name: str
) -> list[str]:
    """Delete the versions this asset registered in runs that ended without Dagster recording them.

    Registering comes last in the training step, but a kill can still fall between it and the
    materialisation Dagster records: such a version was never evaluated, promoted or read.
    """
    asset = context.asset_key.to_user_string()
    recorded = {
        str(r.asset_materialization.metadata["registered_model"].value)
        for r in context.instance.fetch_materializations(context.asset_key, limit=10_000).records
        if r.asset_materialization and "registered_model" in r.asset_materialization.metadata
    }
    deleted = []
    for version in client.search_model_versions(f"name = '{name}'"):
        if f"{name} v{version.version}" in recorded or not version.run_id:
            continue
        tags = client.get_run(version.run_id).data.tags
        run = context.instance.get_run_by_id(tags.get("dagster.run_id", ""))
        if tags.get("tunegraph.asset") != asset or run is None or not run.is_finished:
            continue  # another asset's, another instance's, or its run may still record it
        client.delete_model_version(name, version.version)
        deleted.append(str(version.version))
    return deleted


def training_metadata(
    trained: TrainedModel, tracking: MlflowTracking, registered_model: str
) -> dict[str, Any]:
    summary = trained.summary
    return {
        "steps": summary["steps"],
        "resumed_from_step": trained.plan.step,
        "resume": trained.plan.reason,
        "train_loss": round(summary["train_loss"], 4),
        "eval_loss": "not measured" if summary.get("eval_loss") is None else round(summary["eval_loss"], 4),
        "wall_s": round(summary["wall_s"], 1),
        "device": f"{summary['num_processes']} x {summary['device']} ({summary['distributed']}), malloc {summary.get('malloc', 'unknown')}",
        **(
            {
                "memory": f"about {summary['memory_estimate_gb']} GB estimated of {summary['device_memory_gb']} GB"
            }
            if "memory_estimate_gb" in summary
            else {}
        ),
        "mlflow_run_id": trained.run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.ui_url(trained.run_id, trained.experiment_id)),
        "registered_model": f"{registered_model} v{trained.version}",
        "registered_version": dg.MetadataValue.url(tracking.model_url(registered_model, trained.version)),
        "loss_curve": trained.loss_png,
        **trained.inference,
    }


def _previous_params(client: mlflow.MlflowClient, experiment_id: str, asset: str) -> dict[str, str] | None:
    """The config of the last finished run of this asset: what a new run's name says has changed."""
    runs = client.search_runs([experiment_id], f"tags.`tunegraph.asset` = '{asset}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    return runs[0].data.params if runs else None


def _dataset_input(dataset: Dataset) -> DatasetInput:
    frame = records_frame(read_rows(dataset.path))
    entity = mlflow.data.from_pandas(
        frame, source=str(dataset.path), name=dataset.name, digest=dataset.digest
    )
    return DatasetInput(entity._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, dataset.context)])


def _final_metrics(summary: dict) -> list[Metric]:
    now = int(time.time() * 1000)
    numbers = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return [Metric(f"final_{k}", float(v), now, summary["steps"]) for k, v in numbers.items()]


def _log_and_register(
    tracking: MlflowTracking,
    run_id: str,
    out: Path,
    registered_model: str,
    placement: Placement,
    scalar_head: bool = False,
) -> tuple[str, str]:
    """Log the merged model as a chat model (its chat template, its saved decoding), or a reward model
    as a text classifier with its one score; register it; return (version, MLflow logged-model id).
    Loaded as the evaluation loads it, so the logged weights are in the dtype the evaluation measured
    (bf16 where training ran bf16: half the artifact)."""
    tracking.activate()
    model, tokenizer = (load_reward_model if scalar_head else load_saved)(out / "model", placement)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        if scalar_head:
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model",
                task="text-classification",
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=registered_model,
            )
        else:
            info = serving.log_chat_model(model, tokenizer, registered_model, PIP_REQUIREMENTS)
    return str(info.registered_model_version), info.model_id


def _card_facts(
    context: dg.AssetExecutionContext,
    cfg: PipelineConfig,
    job: TrainingJob,
    summary: dict[str, Any],
    decoding: dict[str, Any],
    version: str,
    run_id: str,
) -> dict[str, Any]:
    """What the model card of this version states (stages/model_card.py renders it)."""
    return {
        "model_name": cfg.tracking.registered_model,
        "version": version,
        "base_model": cfg.model.base,
        "method": job.lineage["method"],
        "trained_from": job.lineage["trained_from"],
        "training": {
            **job.card["training"],
            "steps": summary["steps"],
            "train_loss": summary["train_loss"],
            "eval_loss": summary.get("eval_loss"),
        },
        "decoding": decoding,
        "data_summary": job.card["data_summary"],
        "lineage": {
            "landing_files": job.lineage["landing_files"],
            "data_versions": job.card["data_versions"],
            "config_hash": job.card["config_hash"],
            "dagster_run_id": context.run_id,
            "mlflow_run_id": run_id,
        },
    }
