"""`tunegraph lineage PATH` and `tunegraph compare A B`: lineage records read back from MLflow."""

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from stages.lineage import diff, to_markdown


def resolve_version(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    """A version number ("3") or an alias ("champion", "challenger")."""
    if ref.isdigit():
        return client.get_model_version(name, ref)
    return client.get_model_version_by_alias(name, ref)


def version_lineage(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(version.run_id, "lineage/lineage.json", tmp)
        record = json.loads(Path(path).read_text())
    if "landing_files" not in record:
        # A DPO version registered before DPO lineage held files: those of the SFT model it started from.
        sft = record["starts_from"]
        parent = version_lineage(client, client.get_model_version(sft["model_name"], sft["version"]))
        record = {"method": "dpo", "trained_from": f"models:/{sft['model_name']}/{sft['version']}",
                  "landing_files": parent["landing_files"], "code_versions": {}, **record}  # fmt: skip
    elif "method" not in record:  # an SFT version registered before lineage said how it was trained
        warm = (record.get("warm_start_from") or {}).get("model_uri")
        record = {"method": "sft", "trained_from": warm or record["config"].get("model.base"), **record}
    metrics = client.get_run(version.run_id).data.metrics
    record["metrics"] = {
        **record.get("metrics", {}),
        **{k: v for k, v in metrics.items() if k.startswith("eval_")},
    }
    return record


def lineage_of_file(client: MlflowClient, name: str, landing_path: str) -> list[dict[str, Any]]:
    """Every registered version that trained on `landing_path`, with that file's content hash then."""
    rows = []
    for version in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        files = version_lineage(client, version)["landing_files"]
        if landing_path in files:
            aliases = ",".join(version.aliases) if version.aliases else ""
            rows.append({"version": str(version.version), "aliases": aliases, **files[landing_path]})
    return rows


def compare(client: MlflowClient, name: str, a: str, b: str) -> tuple[dict[str, Any], str]:
    """The diff between two versions (older first), also logged as markdown on the newer one's run."""
    va, vb = resolve_version(client, name, a), resolve_version(client, name, b)
    older, newer = sorted((va, vb), key=lambda v: int(v.version))
    result = diff(version_lineage(client, older), version_lineage(client, newer))
    markdown = to_markdown(f"{name}: v{older.version} -> v{newer.version}", result)
    client.log_text(newer.run_id, markdown, f"lineage/compare_v{older.version}_v{newer.version}.md")
    return {"older": str(older.version), "newer": str(newer.version), **result}, markdown
