"""`base_model` (the pretrained model, saved once as safetensors) and `fine_tuned_model` (the MLflow-tracked fine-tune)."""

from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from assets.automation import EAGER_BEHIND_GATES
from assets.sources import reads_config
from assets.training_run import Dataset, TrainingJob, run_training, training_metadata
from assets.versions import latest_data_version
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages.code_version import code_version
from stages.content import content_hash
from stages.model_source import save_base_model
from stages.tables import read_json, write_json


@dg.asset(
    group_name="model",
    deps=[reads_config("model")],
    code_version=code_version(
        "stages.model_source", "stages.content", "stages.tables", asset_module=__name__
    ),
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"pytorch"},
    description="The pretrained model + tokenizer + chat template, stored as safetensors (model.base).",
)
def base_model(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    context.log.info(f"resolving model.base = {cfg.model.base}")
    out = new_output(context, paths, keep=2)
    facts = save_base_model(cfg.model.base, out / "model")
    write_json(out / "summary.json", facts)
    version = content_hash(out / "model")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "source": facts["source"],
            "architecture": facts["architecture"],
            "parameters": facts["parameters"],
            "vocab_size": facts["vocab_size"],
            "eos_token": facts["eos_token"],
            "chat_template_defaulted": facts["chat_template_defaulted"],
            "chat_template": dg.MetadataValue.md(f"```jinja\n{facts['chat_template']}\n```"),
            **recorded(out),
        },
    )


@dg.asset(
    group_name="model",
    # The evaluation's decoding is saved with the model (generation_config.json), so it is read here too.
    deps=[
        reads_config("training", "tracking", "evaluation.max_new_tokens", "evaluation.repetition_penalty"),
    ],
    # With the training code's own hash: new training code makes the model stale, and a
    # checkpoint written by other code is never resumed (the code version is in the resume key).
    code_version=code_version(
        "stages.launch",
        "stages.train",
        "assets.training_run",
        "stages.content",
        "stages.tables",
        asset_module=__name__,
    ),
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
    tokenized_dataset: Path,
    base_model: Path,
    augmented_corpus: Path,
    deduplicated_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    init_dir, warm_start = _initial_model(mlflow_tracking, paths, cfg, base_model)
    tokens_dir = tokenized_dataset
    # The content versions Dagster recorded: the same data gives the same key after any crash.
    upstream = {a: latest_data_version(context.instance, a) or "" for a in UPSTREAM_VERSIONS}
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    config_hash = cfg.section_hash("corpus", "data", "model", "training")
    job = TrainingJob(
        module="stages.train",
        run_name="sft",
        inputs={
            "init_model_dir": str(init_dir),
            "train_path": str(tokens_dir / "train_blocks.parquet"),
            "eval_path": str(tokens_dir / "eval.parquet"),  # held-out loss every training.eval_steps
            "block_size": cfg.data.block_size,  # the memory estimate's sequence length
        },
        resume_key={
            "data_version": upstream["tokenized_dataset"],
            "initial_model": warm_start["model_uri"] if warm_start else upstream["base_model"],
            "config": cfg.section_hash("training"),
            "code_version": code_version,
        },
        tags={
            "tunegraph.config_hash": config_hash,
            "tunegraph.base_model": cfg.model.base,
            **({"tunegraph.warm_start_from": warm_start["model_uri"]} if warm_start else {}),
            **{f"tunegraph.data_version.{a}": v for a, v in upstream.items()},
        },
        artifacts=[(tokens_dir / "dataset_card.md", "dataset"), (tokens_dir / "lengths.png", "dataset")],
        datasets=_datasets(augmented_corpus, deduplicated_corpus, upstream["tokenized_dataset"]),
        lineage={
            "method": "sft",
            "trained_from": warm_start["model_uri"] if warm_start else cfg.model.base,
            **_lineage(context, augmented_corpus, deduplicated_corpus, cfg),
            "warm_start_from": warm_start,
        },
        card={
            "data_summary": (tokens_dir / "dataset_card.md").read_text(),
            "training": {
                "method": cfg.training.method,
                "learning_rate": cfg.training.learning_rate,
                "batch_size": cfg.training.batch_size * cfg.training.gradient_accumulation_steps,
                "block_size": cfg.data.block_size,
                **(
                    {"lora": cfg.training.lora.model_dump(mode="json")}
                    if cfg.training.method == "lora"
                    else {}
                ),
            },
            "data_versions": upstream,
            "config_hash": config_hash,
        },
    )
    trained = run_training(context, cfg, paths, mlflow_tracking, launcher, job)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(trained.data_version),
        metadata={
            **training_metadata(trained, mlflow_tracking, cfg.tracking.registered_model),
            "warm_start_from": warm_start["model_uri"] if warm_start else "",
            "effective_tokens_per_s": round(trained.summary["effective_tokens_per_s"], 1),
            **recorded(trained.out),
        },
    )


def _datasets(augmented: Path, deduplicated: Path, tokens_version: str) -> list[Dataset]:
    """The train records (digest: the tokenized data version trained on) and the held-out set."""
    held_out = deduplicated / "eval" / "held_out.parquet"
    return [
        Dataset("train", "training", augmented / "train.parquet", tokens_version),
        Dataset("held_out", "evaluation", held_out, content_hash(held_out)),
    ]


UPSTREAM_VERSIONS = ("base_model", "augmented_corpus", "tokenized_dataset")  # tagged on the model version


def _initial_model(tracking: MlflowTracking, paths, cfg, base_model: Path) -> tuple[Path, dict | None]:  # noqa: ANN001
    """The base model, or the registered version `training.warm_start_from` names (step 0 either way)."""
    if not cfg.training.warm_start_from:
        return base_model / "model", None
    version = tracking.resolve_version(cfg.training.warm_start_from, cfg.tracking.registered_model)
    model_uri = f"models:/{version.name}/{version.version}"
    local = tracking.model_dir(version, paths.model_cache(version.name, version.version))
    return local, {"model_uri": model_uri, "requested": cfg.training.warm_start_from, "model_dir": str(local)}


UPSTREAM_ASSETS = ("raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset",
                   "base_model")  # fmt: skip


def _lineage(context: dg.AssetExecutionContext, augmented: Path, deduplicated: Path, cfg) -> dict:  # noqa: ANN001
    """Landing files (content hash, train records), config, code versions: what `compare` diffs."""
    per_file = Counter(
        pq.read_table(augmented / "train.parquet", columns=["source_file"]).column(0).to_pylist()
    )
    files = {key: {"content_hash": content, "train_records": per_file.get(key, 0)}
             for key, content in read_json(deduplicated / "summary.json")["landing_files"].items()}  # fmt: skip
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
    }
