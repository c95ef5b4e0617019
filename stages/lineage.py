"""What a model was trained on, and what changed between two models.

A lineage record (written with every trained model, SFT or preference-aligned, logged to its MLflow run) holds
the method and the model it started from, the landing files with their content hashes and train
record counts, the resolved config (flat keys), the code version of every asset, and the
evaluation metrics. A DPO model's landing files are those of the SFT model it started from plus
its preference files (under preferences/), so `tunegraph lineage` follows either kind of file to
it. `diff` compares two records.
"""

from typing import Any


def preference_lineage(
    sft: dict[str, Any],
    sft_version: dict[str, Any],
    preference_files: dict[str, dict[str, Any]],
    pairs: dict[str, Any],
    config: dict[str, Any],
    code_versions: dict[str, Any],
    method: str = "dpo",
    reward_model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage of a model aligned to preferences (DPO, KTO, GRPO, RLOO): its preference files on
    top of what its SFT model learnt from, and for online RL the reward model that steered it.

    `sft` is the SFT model's lineage record, `sft_version` its registry entry (model_name, version,
    mlflow_run_id), `preference_files` {landing path: {content_hash, train_records}}; `reward_model`
    the reward model's registry entry and held-out accuracy (RL only).
    """
    return {
        "method": method,
        "trained_from": f"models:/{sft_version['model_name']}/{sft_version['version']}",
        "starts_from": sft_version,
        "landing_files": {**sft["landing_files"], **preference_files},
        "preference_pairs": pairs,
        **({"reward_model": reward_model} if reward_model else {}),
        "config": config,
        "code_versions": {**sft.get("code_versions", {}), **code_versions},
    }


def rl_lineage(
    sft: dict[str, Any],
    sft_version: dict[str, Any],
    method: str,
    prompts: dict[str, Any],
    reward_model: dict[str, Any],
    config: dict[str, Any],
    code_versions: dict[str, Any],
    preference_files: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The lineage of an RL model (GRPO, RLOO): its SFT model's, the held-in prompts it sampled from and
    the reward model that scored them (`reward_model`: its folder and registry entry); the preference
    files the reward model learnt from are among its landing files, so `tunegraph lineage` follows a
    preference file to the RL versions it steered."""
    return {
        "method": method,
        "trained_from": f"models:/{sft_version['model_name']}/{sft_version['version']}",
        "starts_from": sft_version,
        "landing_files": {**sft["landing_files"], **(preference_files or {})},
        "rl_prompts": prompts,
        "reward_model": reward_model,
        "config": config,
        "code_versions": {**sft.get("code_versions", {}), **code_versions},
    }


def diff(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    a_files, b_files = older["landing_files"], newer["landing_files"]
    changed = [
        {
            "file": f,
            "records_before": a_files[f]["train_records"],
            "records_after": b_files[f]["train_records"],
        }
        for f in sorted(set(a_files) & set(b_files))
        if a_files[f]["content_hash"] != b_files[f]["content_hash"]
    ]
    keys = sorted(set(older["config"]) | set(newer["config"]))
    start = [
        {"key": k, "before": older.get(k), "after": newer.get(k)}
        for k in ("method", "trained_from")
        if older.get(k) != newer.get(k)
    ]
    metrics = sorted(set(older.get("metrics", {})) & set(newer.get("metrics", {})))
    return {
        "files_added": [
            {"file": f, "records": b_files[f]["train_records"]} for f in sorted(set(b_files) - set(a_files))
        ],
        "files_removed": [
            {"file": f, "records": a_files[f]["train_records"]} for f in sorted(set(a_files) - set(b_files))
        ],
        "files_changed": changed,
        "starting_point": start,
        "config_changed": [
            {"key": k, "before": older["config"].get(k), "after": newer["config"].get(k)}
            for k in keys
            if older["config"].get(k) != newer["config"].get(k)
        ],
        "code_changed": [
            {"asset": a, "before": older["code_versions"].get(a), "after": newer["code_versions"].get(a)}
            for a in sorted(set(older["code_versions"]) | set(newer["code_versions"]))
            if older["code_versions"].get(a) != newer["code_versions"].get(a)
        ],
        "metric_deltas": {
            m: {
                "before": older["metrics"][m],
                "after": newer["metrics"][m],
                "delta": newer["metrics"][m] - older["metrics"][m],
            }
            for m in metrics
        },
    }


def to_markdown(title: str, d: dict[str, Any]) -> str:
    lines = [f"# {title}", ""]
    sections = [
        ("Landing files added", d["files_added"], ["file", "records"]),
        ("Landing files removed", d["files_removed"], ["file", "records"]),
        ("Landing files changed", d["files_changed"], ["file", "records_before", "records_after"]),
        ("How they were trained", d["starting_point"], ["key", "before", "after"]),
        ("Config keys that differ", d["config_changed"], ["key", "before", "after"]),
        ("Code versions that differ", d["code_changed"], ["asset", "before", "after"]),
        (
            "Metric deltas",
            [{"metric": m, **v} for m, v in d["metric_deltas"].items()],
            ["metric", "before", "after", "delta"],
        ),
    ]
    for heading, rows, columns in sections:
        lines.append(f"## {heading}")
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


SHOWN_CHANGES = 2  # config keys named in a run's name; more are counted


def run_name(kind: str, data_version: str, config: dict[str, Any], previous: dict[str, Any] | None,
             version: str | None = None) -> str:  # fmt: skip
    """An MLflow run's name says what differs from the previous run of its kind: "sft v3 · data
    9c1d2e3f · training.learning_rate=0.0005". `config` and `previous` are flat (MLflow params)."""
    parts = [f"{kind} v{version}" if version else kind, f"data {data_version[:8]}"]
    if previous is not None:
        changed = [k for k in sorted(config) if str(config[k]) != str(previous.get(k))]
        named = [f"{k}={config[k]}" for k in changed[:SHOWN_CHANGES]]
        parts += named + ([f"+{len(changed) - SHOWN_CHANGES} keys"] if len(changed) > SHOWN_CHANGES else [])
    return " · ".join(parts)
