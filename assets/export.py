"""`gguf_model`: the champion as GGUF files (f16, q8_0) for llama.cpp, Ollama and LM Studio.

Off by default (`export.gguf`): the asset then records that and does nothing else, so the graph
is the same either way. On, it writes each type with `stages/gguf_export.py`, loads each file
back through transformers' GGUF loader, and the check `gguf_matches_safetensors` (in the asset's
own step) says whether the next-token logits on held-out examples stay within the type's
tolerance and the tokenizer reads them into the same ids.
"""

from pathlib import Path

import dagster as dg
from transformers import AutoTokenizer

from assets.evaluation import model_evaluation
from assets.metadata import md_table
from assets.sources import reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages import gguf_export
from stages.code_version import code_version
from stages.content import content_hash
from stages.tables import read_rows, write_json

CHECK = "gguf_matches_safetensors"
COLUMNS = ["file", "mb", "relative_diff", "tolerance", "max_abs_diff", "top1_agreement", "tokenizer_matches"]


@dg.asset(
    group_name="model",
    deps=[model_evaluation, reads_config("export", "tracking")],  # the champion it exports is MLflow's
    code_version=code_version("stages.gguf_export", "stages.content", "stages.tables", asset_module=__name__),
    kinds={"gguf"},
    description="The champion as GGUF files (export.gguf; off by default), checked by loading them back.",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="gguf_model",
            description="Each GGUF file, read back by transformers, gives the safetensors model's next-token "
            "logits within its type's tolerance on held-out examples, and the same token ids.",
        )
    ],
)
def gguf_model(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    mlflow_tracking: MlflowTracking,
    deduplicated_corpus: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    if not cfg.export.gguf:
        out = new_output(context, paths)
        write_json(out / "summary.json", {"enabled": False})
        return dg.MaterializeResult(
            data_version=dg.DataVersion("disabled"),
            metadata={"enabled": False, **recorded(out)},
            check_results=[dg.AssetCheckResult(check_name=CHECK, passed=True, metadata={"enabled": False})],
        )
    name = cfg.tracking.registered_model
    try:
        champion = mlflow_tracking.resolve_version("champion", name, asked_by="the alias")
    except ValueError as err:
        raise dg.Failure(
            f"gguf_model exports the champion and {name} has none yet: materialise model_evaluation until "
            f"a version is promoted ({err})"
        ) from None
    number = str(champion.version)  # MLflow returns an int for a version found by alias
    model_dir = mlflow_tracking.model_dir(champion, paths.model_cache(name, number))
    held_out = read_rows(deduplicated_corpus / "eval" / "held_out.parquet")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = gguf_export.check_texts(tokenizer, held_out[: cfg.export.gguf_check_examples])
    label = f"{name} v{number}"
    out = new_output(context, paths)
    files, checks = [], []
    for kind in cfg.export.gguf_types:
        context.log.info(f"writing {label} as GGUF {kind} and reading it back")
        path = gguf_export.write_gguf(model_dir, out / f"{name}-v{number}-{kind}.gguf", kind, label)
        comparison = gguf_export.compare_logits(model_dir, path, kind, texts)
        files.append(path)
        checks.append(
            {"file": path.name, "mb": round(path.stat().st_size / 2**20, 1), **comparison.as_dict()}
        )
    summary = {"enabled": True, "model_name": name, "version": number, "checks": checks}
    write_json(out / "summary.json", summary)
    version = content_hash(*files)
    passed = all(c["passed"] for c in checks)
    table = md_table(checks, COLUMNS, limit=len(checks))
    fix = "do not ship a file that fails: it does not reproduce the model within its type's tolerance"
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={"enabled": True, "model_version": label, "files": table, **recorded(out)},
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=passed,
                metadata={"examples": len(texts), "files": table, **({} if passed else {"fix": fix})},
            )
        ],
    )
