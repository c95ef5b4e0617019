"""Prompt engineering as a method of its own: each variant scored on each model kind, and a search.

- `base_prompt_evaluation[variant]`, `fine_tuned_prompt_evaluation[variant]`: one partition per
  variant of `prompts:` that names the model kind. A partition depends on its variant's text
  (`prompt_variant[variant]`), so editing one variant makes exactly its partitions unsynced and
  `tunegraph run` scores only those; a new fine-tuned model makes all of its own stale, and none
  of the base model's. Each registers its variant in MLflow's Prompt Registry (a version per
  distinct text) and records its scores in an MLflow run linked to that version.
- `prompt_search`: candidate variants on a dev split of the training data (stages/prompt_search.py);
  the winner is registered as the prompt `searched` and scored on the eval sets, dev and held-out
  side by side.

`model_evaluation` puts all of them, and the trained models, on one leaderboard.
"""

import time
from pathlib import Path
from typing import Any

import dagster as dg
from mlflow import MlflowClient
from mlflow.entities import Metric

from assets.metadata import md_table
from assets.partitions import prompt_variants, prompts_by_model
from assets.sources import prompt_variant, reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages import metrics
from stages.code_version import code_version
from stages.content import content_hash
from stages.evaluation import Item, eval_items, score
from stages.inference import inference_placement, load_saved
from stages.prompt_config import PromptVariant
from stages.prompt_registry import prompt_name, register
from stages.prompt_search import SEARCHED, dev_split, search
from stages.prompts import applies, conversations, example_pool
from stages.tables import read_rows, write_json

EVAL_METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate", "prompt_tokens")
# Everything a variant's scores depend on besides its text, the model and the data.
# The number format the model runs in too (stages/inference.py): bf16 scores are another measurement.
SCORING_KEYS = ("evaluation.max_examples", "evaluation.max_new_tokens", "evaluation.repetition_penalty",
                "data.seed", "tracking", "training.precision", "model.dtype")  # fmt: skip
PROMPT_CODE = code_version("stages.evaluation", "stages.prompts", "stages.prompt_registry", "stages.inference",
                           "stages.content", "stages.tables", asset_module=__name__)  # fmt: skip


def _variant_dep() -> dg.AssetDep:
    # The variant's own text: a partition of prompts_base/prompts_fine_tuned maps to the same key.
    return dg.AssetDep(prompt_variant, partition_mapping=dg.IdentityPartitionMapping())


@dg.asset(
    group_name="evaluation",
    partitions_def=prompts_by_model["base"],
    deps=[_variant_dep(), reads_config(*SCORING_KEYS)],
    code_version=PROMPT_CODE,
    kinds={"pytorch", "mlflow"},
    description="The base model asked with one prompt variant: held-out scores, the rendered prompt, samples.",
)
def base_prompt_evaluation(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    base_model: Path,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
) -> dg.MaterializeResult:
    return _evaluate_partition(context, settings, mlflow_tracking, "base", base_model, deduplicated_corpus,
                               augmented_corpus)  # fmt: skip


@dg.asset(
    group_name="evaluation",
    partitions_def=prompts_by_model["fine_tuned"],
    deps=[_variant_dep(), reads_config(*SCORING_KEYS)],
    code_version=PROMPT_CODE,
    kinds={"pytorch", "mlflow"},
    description="The fine-tuned model asked with one prompt variant (zero_shot: its own row on the leaderboard).",
)
def fine_tuned_prompt_evaluation(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    fine_tuned_model: Path,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
) -> dg.MaterializeResult:
    return _evaluate_partition(context, settings, mlflow_tracking, "fine_tuned", fine_tuned_model,
                               deduplicated_corpus, augmented_corpus)  # fmt: skip


def _evaluate_partition(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    tracking: MlflowTracking,
    kind: str,
    model_folder: Path,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    variant = cfg.variant(context.partition_key)
    eval_sets = read_eval_sets(deduplicated_corpus, cfg.evaluation.max_examples)
    pool = example_pool(read_rows(augmented_corpus / "train.parquet"))
    placement = inference_placement(cfg)  # the training device and precision
    model, tokenizer = load_saved(model_folder / "model", placement)
    result = score_variant(model, tokenizer, variant, eval_sets, pool, cfg, f"{kind}/{variant.name}")
    tracking.activate()
    client = tracking.client()
    version = register(client, cfg.tracking.registered_model, variant)
    row = row_name(kind, variant.name)
    run_id = log_row(client, tracking.experiment_id(cfg.tracking.experiment), row, kind, variant.name,
                     result["scores"].get("held_out"), version)  # fmt: skip
    summary = {
        "row": row,
        "model_kind": kind,
        "variant": variant.name,
        "variant_text": variant.text(),
        "model": str(model_folder),  # model_evaluation checks it scored the model it compares
        "prompt": {"name": version.name, "version": str(version.version), "uri": version.uri},
        "mlflow_run_id": run_id,
        "inference": placement.as_metadata(),
        **result,
    }
    out = new_output(context, paths)
    write_json(out / "summary.json", summary)
    held = result["scores"].get("held_out") or {}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(content_hash(out / "summary.json")),
        metadata={
            "row": row,
            **{m: held.get(m) for m in EVAL_METRICS if held.get(m) is not None},
            "prompt_version": f"{version.name} v{version.version}",
            **placement.as_metadata(),
            "rendered_prompt": dg.MetadataValue.md(f"```\n{result['rendered_example']}\n```"),
            "samples": md_table(result["samples"], ["question", "reference", "answer"], limit=6, width=100),
            **recorded(out),
        },
    )


def read_eval_sets(deduplicated_corpus: Path, max_examples: int) -> dict[str, list[dict[str, Any]]]:
    """The first `max_examples` records of each eval set (held_out, and one per data.eval_files entry)."""
    eval_sets = {
        p.stem: read_rows(p)[:max_examples] for p in sorted((deduplicated_corpus / "eval").glob("*.parquet"))
    }
    if not eval_sets.get("held_out"):
        raise dg.Failure("the held-out split is empty: raise data.eval_fraction or add landing files")
    return eval_sets


def score_variant(
    model: Any,
    tokenizer: Any,
    variant: PromptVariant,
    eval_sets: dict[str, list[dict[str, Any]]],
    pool: list[dict[str, Any]],
    cfg: Any,
    desc: str,
) -> dict[str, Any]:
    """A variant's scores on each eval set (None where it does not apply), held-out answers and samples."""
    ev = cfg.evaluation
    scores: dict[str, dict[str, Any] | None] = {}
    texts: list[str] = []
    items: list[Item] = []
    for set_name, rows in eval_sets.items():
        if not rows or not applies(variant, rows):
            scores[set_name] = None
            continue
        asked = eval_items(
            conversations(variant, rows, pool, cfg.data.seed), rows, tokenizer, ev.max_new_tokens
        )
        scores[set_name], answers = score(model, tokenizer, asked, ev.batch_size, ev.max_new_tokens,
                                          ev.repetition_penalty, f"{desc}/{set_name}")  # fmt: skip
        scores[set_name]["prompt_tokens"] = prompt_tokens(tokenizer, asked)
        if set_name == "held_out":
            texts, items = answers, asked
    samples = [
        {"question": i.shown, "reference": i.reference, "answer": t}
        for i, t in zip(items, texts, strict=True)
    ]
    return {
        "scores": scores,
        "texts": texts,
        "samples": samples[:8],
        "rendered_example": items[0].gen_prompt
        if items
        else "(the variant does not apply to the held-out set)",
    }


def prompt_tokens(tokenizer: Any, items: list[Item]) -> float:
    """Mean tokens of prompt per request: the price a prompt variant pays on every call."""
    return metrics.mean(
        [
            float(len(ids))
            for ids in tokenizer([i.gen_prompt for i in items], add_special_tokens=False)["input_ids"]
        ]
    )


def row_name(kind: str, variant: str) -> str:
    """A leaderboard row: `base_<variant>`; a trained model asked plainly is its own name (`fine_tuned`)."""
    return kind if variant == "zero_shot" and kind != "base" else f"{kind}_{variant}"


def log_row(
    client: MlflowClient,
    experiment_id: str,
    row: str,
    kind: str,
    variant: str,
    scores: dict[str, Any] | None,
    prompt: Any = None,  # noqa: ANN401 (a PromptVersion)
    extra: dict[str, float] | None = None,
) -> str:
    """One FINISHED MLflow run per leaderboard row: `eval/*` as every row has them, tagged prompt|model."""
    tags = {"tunegraph.leaderboard_row": row, "tunegraph.row_kind": "prompt" if kind == "base" else "model",
            "tunegraph.model_kind": kind, "tunegraph.prompt": variant}  # fmt: skip
    run = client.create_run(experiment_id, run_name=f"leaderboard {row}", tags=tags)
    now = int(time.time() * 1000)
    values = {f"eval/{m}": scores[m] for m in EVAL_METRICS if scores and scores.get(m) is not None}
    values.update(extra or {})
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    if prompt is not None:
        client.link_prompt_version_to_run(run.info.run_id, prompt)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@dg.asset(
    group_name="evaluation",
    deps=[reads_config("prompt_search", *SCORING_KEYS)],
    code_version=code_version(
        "stages.prompt_search",
        "stages.evaluation",
        "stages.prompts",
        "stages.prompt_registry",
        "stages.inference",
        "stages.tables",
        "stages.content",
        asset_module=__name__,
    ),  # fmt: skip
    kinds={"pytorch", "mlflow"},
    description="Candidate prompts scored on a dev split of the training data; the winner registered and "
    "scored on the eval sets (dev and held-out side by side).",
)
def prompt_search(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    base_model: Path,
    deduplicated_corpus: Path,
    augmented_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    space, ev = cfg.prompt_search, cfg.evaluation
    out = new_output(context, paths)
    train = read_rows(augmented_corpus / "train.parquet")
    # A corpus of documents has no prompt to search (every variant is the plain one there).
    why_not = None if space.enabled else "prompt_search.enabled is false"
    if space.enabled and not example_pool(train):
        why_not = "no training record has a prompt (documents only)"
    if why_not:
        write_json(out / "summary.json", {"enabled": False, "reason": why_not})
        return dg.MaterializeResult(metadata={"enabled": False, "reason": why_not, **recorded(out)})
    # Keys only, to keep every eval record out of the dev split and the pool (all rows, not max_examples).
    # (An eval file's rows (data.eval_files) carry an id, not always a record_key.)
    held_out_keys = {r[k] for p in (deduplicated_corpus / "eval").glob("*.parquet") for r in read_rows(p)
                     for k in ("record_key", "id") if r.get(k) is not None}  # fmt: skip
    dev, dev_pool = dev_split(train, held_out_keys, space.dev_examples, cfg.data.seed)
    model, tokenizer = load_saved(base_model / "model", inference_placement(cfg))

    def on_dev(variant: PromptVariant) -> dict[str, Any]:
        result = score_variant(model, tokenizer, variant, {"held_out": dev}, dev_pool, cfg, "search/dev")
        context.log.info(f"dev {_describe(variant)}: {result['scores']['held_out'][space.metric]:.4f}")
        return result["scores"]["held_out"]

    found = search(space, on_dev)
    # The winner on the eval sets, with the whole training set to retrieve from (as every variant).
    eval_sets = read_eval_sets(deduplicated_corpus, ev.max_examples)
    result = score_variant(model, tokenizer, found.winner, eval_sets, example_pool(train), cfg, "search/eval")
    mlflow_tracking.activate()
    client = mlflow_tracking.client()
    version = register(client, cfg.tracking.registered_model, found.winner)
    dev_metrics = {
        f"dev/{m}": found.winner_scores[m] for m in EVAL_METRICS if found.winner_scores.get(m) is not None
    }
    run_id = log_row(client, mlflow_tracking.experiment_id(cfg.tracking.experiment), f"base_{SEARCHED}", "base",
                     SEARCHED, result["scores"]["held_out"], version, dev_metrics)  # fmt: skip
    summary = {
        "enabled": True,
        "row": f"base_{SEARCHED}",
        "model_kind": "base",
        "variant": SEARCHED,
        "variant_text": found.winner.text(),
        "prompt": {
            "name": prompt_name(cfg.tracking.registered_model, SEARCHED),
            "version": str(version.version),
            "uri": version.uri,
        },  # fmt: skip
        "mlflow_run_id": run_id,
        "metric": space.metric,
        "dev_examples": len(dev),
        "tried": found.tried,
        "dev": found.winner_scores,
        **result,
    }
    write_json(out / "summary.json", summary)
    held = result["scores"]["held_out"] or {}
    side_by_side = [{"metric": m, "dev": _r(found.winner_scores.get(m)), "held_out": _r(held.get(m))}
                    for m in ("rouge_l", "perplexity", "exact_match", "prompt_tokens")]  # fmt: skip
    return dg.MaterializeResult(
        data_version=dg.DataVersion(content_hash(out / "summary.json")),
        metadata={
            "winner": _describe(found.winner),
            "tried": md_table(found.tried, list(found.tried[0]), limit=space.budget),
            "dev_vs_held_out": md_table(side_by_side, ["metric", "dev", "held_out"]),
            "prompt_version": f"{version.name} v{version.version}",
            "rendered_prompt": dg.MetadataValue.md(f"```\n{result['rendered_example']}\n```"),
            **recorded(out),
        },
    )


def _describe(variant: PromptVariant) -> str:
    shots = f"{variant.examples.k} {variant.examples.select} examples" if variant.examples else "no examples"
    context = f"{variant.context.k} retrieved" if variant.context else "no context"
    return f"system={'yes' if variant.system else 'no'}, {shots}, {context}"


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


__all__ = ["base_prompt_evaluation", "fine_tuned_prompt_evaluation", "prompt_search", "prompt_variants"]
