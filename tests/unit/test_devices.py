"""Several processes, each on its own device: the collectives, DataParallel refused, gradient checkpointing,
through the real launcher (`python -m stages.launch`, torchrun over gloo here) and the tiny model."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from stages.config import TrainingConfig
from stages.model_source import save_base_model
from stages.spec import TrainingSpec
from stages.train import TimeBudget, agreed_min, train

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with SmolLM2's tokenizer, and 32 packed blocks of random tokens (the second
    half of each block scored): what training needs, without the data assets."""
    root = tmp_path_factory.mktemp("tiny")
    save_base_model("bundled:tiny-random", root / "base")
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        ids = [rng.randrange(3, 2000) for _ in range(BLOCK)]
        rows.append({"input_ids": ids, "labels": [-100] * (BLOCK // 2) + ids[BLOCK // 2 :], "position_ids": list(range(BLOCK))})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "train.parquet")
    return root


def spec_for(tiny: Path, out: Path, **training: object) -> TrainingSpec:
    settings = {"method": "full", "max_steps": 2, "batch_size": 1, "logging_steps": 1, "save_steps": 100,
                "eval_steps": None, "learning_rate": 1e-3, "precision": "fp32"}  # fmt: skip
    spec = TrainingSpec(
        init_model_dir=tiny / "base",
        train_path=tiny / "train.parquet",
        output_dir=out,
        checkpoint_dir=out.with_name(out.name + "-checkpoints"),
        block_size=BLOCK,
        training=TrainingConfig(**{**settings, **training}),
    )
    out.mkdir(parents=True)
    return spec


def launch(spec: TrainingSpec) -> dict:
    """`python -m stages.launch stages.train SPEC.json`, as the asset runs it; the summary rank 0 wrote."""
    path = spec.write(spec.output_dir / "spec.json")
    env = {**os.environ, "TUNEGRAPH_TORCH_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "stages.launch", "stages.train", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((spec.output_dir / "train_summary.json").read_text())


class _Seen(Exception):
    def __init__(self, tensor: torch.Tensor):
        self.device = tensor.device


def test_the_budgets_collective_runs_on_the_processs_own_device(monkeypatch: pytest.MonkeyPatch):
    """Issue 31's second break: the time budget all-reduced a CPU tensor, which NCCL refuses. The tensor handed
    to the collective must be on the Trainer's device (args.device): "meta" here stands for a GPU, so a
    tensor made on "cpu" fails this test. (torch's all_reduce is replaced by a recorder; gloo runs below.)"""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)

    def all_reduce(tensor: torch.Tensor, op: object = None) -> None:
        raise _Seen(tensor)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    meta = torch.device("meta")
    with pytest.raises(_Seen) as seen:
        agreed_min(7, meta)
    assert seen.value.device == meta

    class Args:  # the Trainer's args as the callback reads them: its device
        device = meta
        eval_strategy = "no"

    budget = TimeBudget(minutes=1.0, max_steps=40, log=lambda _: None)
    budget.on_train_begin(Args(), TrainerState(), TrainerControl())
    with pytest.raises(_Seen) as seen:
        budget.on_step_end(Args(), TrainerState(global_step=1, max_steps=40), TrainerControl())
    assert seen.value.device == meta


def test_two_processes_stop_together_by_the_time_budget(tiny: Path, tmp_path: Path):
    """A 2-process gloo run (torchrun, as the launcher starts it on a CPU) with training.max_minutes: the
    processes agree on the step to stop at every step, stop there together, and checkpoint on the way."""
    spec = spec_for(tiny, tmp_path / "budget", max_steps=100_000, max_minutes=0.05, save_steps=4,
                    num_processes=2, logging_steps=2)  # fmt: skip
    summary = launch(spec)
    assert summary["num_processes"] == 2 and summary["device"] == "cpu" and summary["distributed"] == "ddp"
    stopped = summary["stopped_by_time_budget_at"]
    assert stopped is not None and 4 <= summary["steps"] == stopped < 100_000
    assert summary["memory_estimate_gb"] > 0 and summary["device_memory_gb"] > summary["memory_estimate_gb"]
    checkpoints = sorted(p.name for p in spec.checkpoint_dir.glob("checkpoint-*"))
    assert checkpoints and all(
        int(name.split("-")[1]) % 4 == 0 or name == f"checkpoint-{stopped}" for name in checkpoints
    )


def test_gradient_checkpointing_with_lora_trains_the_same_steps(tiny: Path, tmp_path: Path):
    """training.gradient_checkpointing recomputes activations in backward (non-reentrant, so LoRA's frozen
    inputs still get gradients): the same losses as without it, to fp32 rounding (1e-4 relative: measured
    1.5e-5 apart at one step on 2026-12-07, the recomputed forward summing in another order)."""
    plain = train(spec_for(tiny, tmp_path / "plain", method="lora", max_steps=3, batch_size=2))
    checkpointed = train(spec_for(tiny, tmp_path / "gc", method="lora", max_steps=3, batch_size=2,
                                  gradient_checkpointing=True))  # fmt: skip
    assert checkpointed["gradient_checkpointing"] is True
    for a, b in zip(plain["history"], checkpointed["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert checkpointed["history"][-1]["loss"] < checkpointed["history"][0]["loss"]


def test_a_process_that_sees_several_gpus_is_refused_rather_than_wrapped_in_data_parallel(tmp_path: Path):
    """The training process itself refuses nn.DataParallel (one started by hand, around the launcher)."""
    from stages.train import one_device_per_process

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert one_device_per_process(args) == "cpu"
    args._n_gpu = 2  # what TrainingArguments computes in a process that sees two GPUs
    with pytest.raises(SystemExit, match="sees 2 GPUs and would train them with nn.DataParallel"):
        one_device_per_process(args)
