"""The `tunegraph` command as a user runs it: exit codes, one-line errors, the report contract."""

import json
import os
import subprocess
import sys

from conftest import write_config

from resources.settings import REPO_ROOT

TUNEGRAPH = [sys.executable, "-m", "pipelines.cli"]


def _run(args: list[str], home, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    env.pop("TUNEGRAPH_CONFIG", None)
    return subprocess.run(
        [*TUNEGRAPH, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_invalid_config_value_is_one_line_and_exit_2(home, tmp_path):
    config = write_config(tmp_path / "bad.yaml", data={"eval_fraction": 1.5})
    result = _run(["--config", str(config), "run"], home)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: data.eval_fraction: Input should be less than 1 (got 1.5)"
    ]


def test_run_with_empty_landing_says_what_to_do(home):
    result = _run(["--config", "configs/tiny.yaml", "run"], home)
    assert result.returncode == 1
    assert "no landing files in" in result.stderr and "tunegraph example-data" in result.stderr


def test_report_json_has_the_contract_keys_before_any_run(home):
    result = _run(["report", "--json"], home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"status", "run_id", "data", "training", "evaluation", "registry"}
    assert set(report["data"]) >= {
        "documents_in",
        "documents_kept",
        "dropped",
        "pii",
        "duplicates",
        "contaminated",
        "train_examples",
        "eval_examples",
        "train_tokens",
        "partitions_total",
        "partitions_processed",
    }
    assert set(report["training"]) >= {
        "mlflow_run_id",
        "steps",
        "resumed_from_step",
        "train_loss",
        "effective_tokens_per_s",
        "non_pad_fraction",
    }
    assert set(report["evaluation"]) == {
        "base_zero_shot",
        "base_system_prompt",
        "base_few_shot",
        "fine_tuned",
        "champion",
    }
    assert set(report["registry"]) >= {"model_name", "version", "champion_version", "promoted", "reason"}


def test_example_data_writes_shards_once(home):
    first = _run(["example-data", "--if-empty"], home)
    assert first.returncode == 0 and "to 8 shards" in first.stdout
    shards = sorted(p.name for p in (home / "landing").iterdir())
    assert shards == [f"stdlib-{i:02d}.jsonl" for i in range(8)]
    second = _run(["example-data", "--if-empty"], home)
    assert "already has 8 files" in second.stdout
