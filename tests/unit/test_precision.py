"""Precision by capability and measurement (stages/precision.py): the decision for each kind of device,
the probe it rests on, and bf16 training that follows the fp32 loss curve on the tiny model."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from conftest import output

from stages.precision import (
    cpu_choice,
    cuda_choice,
    matmul_gflops,
    resolve_precision,
    weights_dtype,
)


def test_a_cpu_trains_bf16_only_where_its_bf16_matmul_measures_faster():
    # AMD EPYC, AVX-512 BF16, no AMX (measured 2026-12-07): "bf16 only with AMX" chose fp32 here.
    epyc = cpu_choice("auto", {"fp32": 140.0, "bf16": 407.0})
    assert (epyc.name, epyc.dtype) == ("bf16", torch.bfloat16)
    assert "2.9x" in epyc.reason and epyc.peak_flops == 407e9
    # An AVX2-only CPU emulates bf16: slower, so fp32; and a tie is not worth bf16's rounding.
    assert cpu_choice("auto", {"fp32": 100.0, "bf16": 30.0}).name == "fp32"
    assert cpu_choice("auto", {"fp32": 100.0, "bf16": 115.0}).name == "fp32"
    # What the user sets is kept, with the probe for the record.
    forced = cpu_choice("fp32", {"fp32": 140.0, "bf16": 407.0})
    assert forced.name == "fp32" and forced.as_params()["matmul_gflops_bf16"] == 407.0


def test_fp16_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU") as err:
        resolve_precision("fp16", "cpu")
    assert "\n" not in str(err.value)


def test_a_gpu_trains_bf16_by_compute_capability_not_by_is_bf16_supported():
    # is_bf16_supported() says yes on a T4 (7.5) and V100 (7.0), where bf16 is emulated.
    assert cuda_choice("auto", (7, 5), "Tesla T4").name == "fp16"
    assert cuda_choice("auto", (7, 0), "Tesla V100").name == "fp16"
    assert cuda_choice("auto", (8, 0), "A100").name == "bf16"
    assert cuda_choice("auto", (9, 0), "H100").name == "bf16"
    with pytest.raises(ValueError, match="emulated and slow: use fp16 or auto"):
        cuda_choice("bf16", (7, 5), "Tesla T4")


def test_frozen_weights_take_the_training_format_and_trained_ones_stay_fp32_masters():
    bf16 = cpu_choice("auto", {"fp32": 140.0, "bf16": 407.0})
    assert weights_dtype("auto", bf16, trains_all_weights=False) == torch.bfloat16  # LoRA's frozen base
    assert weights_dtype("auto", bf16, trains_all_weights=True) == torch.float32  # full fine-tune
    assert weights_dtype("fp32", bf16, trains_all_weights=False) == torch.float32
    fp32 = cpu_choice("auto", {"fp32": 100.0, "bf16": 30.0})
    assert weights_dtype("auto", fp32, trains_all_weights=False) == torch.float32


def test_the_probe_measures_a_real_matmul_rate():
    """Positive and finite, and the same function the choice uses (no data-sheet guess on a CPU)."""
    rate = matmul_gflops(torch.float32, n=256, repeats=2)
    assert 0.1 < rate < 1e6


@pytest.mark.skipif(platform.machine() != "x86_64", reason="oneDNN's and ATen's ISA limits are x86 names")
def test_a_cpu_held_to_avx2_probes_in_seconds_and_trains_fp32():
    """This CPU with oneDNN, ATen and MKL held to AVX2 is an AVX2-only CPU to torch: bf16 matmuls emulated.
    The probe's 2048² bf16 matmul took 340 s there (0.3 GFLOP/s); a minute is plenty for the probe now."""
    probe = (
        "import json, torch; from stages.precision import resolve_precision; torch.set_num_threads(2); "
        "p = resolve_precision('auto', 'cpu'); print(json.dumps([p.name, p.reason, p.matmul_gflops]))"
    )
    env = {
        **os.environ,
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    name, reason, rates = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "fp32" and "emulated" in reason
    assert rates["bf16"] * 10 < rates["fp32"]  # emulated: an order of magnitude and more behind


def test_bf16_training_follows_the_fp32_loss_curve_on_the_tiny_model(data_template, tmp_path):
    """The same tiny LoRA run in fp32 and bf16 (autocast, bf16 frozen base): every logged loss within
    10 % of what the fp32 run learnt (its first loss minus its lowest) of the fp32 loss at that step.

    Tolerance: bf16 keeps 8 bits of mantissa (rounding 2^-9 = 0.2 % a value); the loss, a mean over ~1,000
    tokens, averages that out, and LoRA's fp32 adapters and optimizer keep the updates exact. Measured
    here on 2026-12-07: the tiny model learns 0.14 nats in 8 steps and the curves differ by at most
    0.0023 nats (1.6 % of that). Measured against what was learnt, not against the loss itself (10.8
    nats, so 1 % of it would hide the whole curve), the bound catches a step that learnt differently.
    """
    from stages.config import TrainingConfig
    from stages.spec import TrainingSpec
    from stages.train import train

    tokens = output(data_template, "tokenized_dataset")

    def run(precision: str) -> dict:
        cfg = TrainingConfig(method="lora", precision=precision, max_steps=8, batch_size=2, logging_steps=1,
                             save_steps=100, eval_steps=None, learning_rate=1e-2, warmup_steps=1)  # fmt: skip
        return train(
            TrainingSpec(
                init_model_dir=output(data_template, "base_model") / "model",
                train_path=tokens / "train_blocks.parquet",
                output_dir=tmp_path / precision,
                checkpoint_dir=tmp_path / f"{precision}-checkpoints",
                training=cfg,
            ),
            log=lambda line: None,
        )

    fp32, bf16 = run("fp32"), run("bf16")
    assert (fp32["precision"], fp32["weights_dtype"]) == ("fp32", "float32")
    assert (bf16["precision"], bf16["weights_dtype"]) == ("bf16", "bfloat16")
    curves = [[h["loss"] for h in s["history"]] for s in (fp32, bf16)]
    assert len(curves[0]) == len(curves[1]) == 8
    assert curves[0][-1] < curves[0][0]  # it learned
    learnt = curves[0][0] - min(curves[0])
    assert learnt > 0.05
    assert curves[1] == pytest.approx(curves[0], abs=0.1 * learnt)
    assert curves[1] != curves[0]  # bf16 really ran: not bit-identical to fp32
