"""FSDP on the CPU: the shipped configs/accelerate/fsdp.yaml's sharding over 2 gloo processes trains 2 steps
with the chunked loss and matches 1 process (issue 31's fourth break: a loss that read the LM head outside
the wrapped forward would see this process's shard). tests/unit/fsdp_steps.py says how it is wrapped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.launch import SHIPPED_CONFIGS

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("fsdp_steps.py")


def fsdp_environment() -> dict[str, str]:
    """The FSDP_* variables accelerate's launcher gives each process for the shipped file (on GPUs)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", str(SHIPPED_CONFIGS["fsdp"]), "--num_processes", "2", str(WORKER)]
    env = prepare_multi_gpu_env(_validate_launch_command(launch_command_parser().parse_args(argv))[0])
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}


@pytest.mark.slow
def test_two_sharded_processes_train_as_one_with_the_chunked_loss(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **fsdp_environment()}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for command, out in (([sys.executable, str(WORKER)], one),
                         ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(WORKER)], two)):  # fmt: skip
        done = subprocess.run(
            [*command, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
    whole, shards = json.loads(one.read_text()), json.loads(two.read_text())
    assert shards["processes"] == 2
    # Outside the forward the head is this process's flat shard (about half): the loss must read it inside.
    assert shards["head_numel_outside_forward"] < shards["head_numel"] * 0.6
    # fp32, the same global batch and seed: only the order of the sums differs (two halves all-reduced and the
    # gradients reduce-scattered vs one pass), ~1e-7 relative per sum; 2 AdamW steps at lr 1e-3 move weights by
    # ~2e-3, so 1e-5 relative on the loss and 1e-5 absolute on the weights is far above rounding and far below
    # what a missing gradient, a double-counted batch or a loss over a shard would give (>= 1e-3).
    assert whole["losses"][1] < whole["losses"][0]  # it trained
    assert shards["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    a, b = (torch.load(f.with_suffix(".pt"), weights_only=True) for f in (one, two))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"sharded weights differ from one process's by {worst}"
