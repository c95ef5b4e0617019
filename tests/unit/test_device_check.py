"""The GPU device check (benchmarks/device_check.sh) run on the CPU with --smoke: every section answers,
so the day a GPU is lent the script spends its minutes measuring, not failing on a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_device_check_runs_every_section_and_prints_one_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TUNEGRAPH_HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    failed = {k: v["error"] for k, v in out.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    assert out["environment"]["precision"] in ("fp32", "bf16")
    assert out["numerics"]["ok"], out["numerics"]
    for run in ("tiny/lora", "tiny/full"):
        result = out["launcher"][run]
        assert "error" not in result, result
        assert (result["steps"], result["num_processes"], result["device"]) == (3, 1, "cpu")
        assert result["launched"].startswith("launching:") and result["peak_memory_mb"] > 0
    assert out["memory_7b"]["step_s"] > 0
