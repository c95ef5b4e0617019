"""Which number format a device trains and runs models in: chosen by capability and measurement.

`training.precision: auto` picks, for the device the process runs on:
- a CUDA card of compute capability 8.0 or later (A100, L4, H100...): bf16, which its tensor cores run
  natively (`torch.cuda.is_bf16_supported()` also says yes on a T4 or V100, where bf16 is emulated
  and slow: capability decides, not that flag);
- an older CUDA card: fp16 autocast with loss scaling (the Trainer's GradScaler);
- a CPU: bf16 when a bf16 matmul *measures* faster than an fp32 one on this machine, fp32 otherwise.
  Measured on 2026-12-07 (torch 2.13, 2 threads): an AMD EPYC with AVX-512 BF16 and no AMX ran a
  2048² `torch.mm` at 140 GFLOP/s in fp32 and 407 in bf16; "bf16 only with AMX", the rule before this
  probe, trained that machine's demo in fp32 (15 of 40 steps in its budget). An AVX2-only CPU
  emulates bf16 and measures slower: fp32 stays (and the probe says so at 512², see `_cpu_probe`).
The probe's figures travel with the choice (MLflow params, Dagster metadata, the throughput benchmark's
MFU peak), so a reader sees why a run trained as it did.
"""

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

Name = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# bf16 must beat fp32 by this factor to be chosen on a CPU: a tie is not worth bf16's rounding, and
# two timings of the same matmul differ by up to ~10 % on a shared VM.
CPU_BF16_MIN_SPEEDUP = 1.2
# Tensor cores that run bf16 natively: Ampere (8.0) and later.
CUDA_NATIVE_BF16 = (8, 0)


@dataclass(frozen=True)
class Precision:
    """The chosen format on a device, and why."""

    name: Name
    device: str  # "cpu" or "cuda"
    reason: str
    matmul_gflops: dict[str, float] = field(default_factory=dict)  # measured: fp32 and bf16 (or fp16)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def trainer_flag(self) -> str:
        """`--mixed_precision` for accelerate / the Trainer's bf16|fp16 switches: "no" for fp32."""
        return "no" if self.name == "fp32" else self.name

    @property
    def peak_flops(self) -> float | None:
        """The measured matmul rate of this format (FLOP/s): the peak an MFU is measured against."""
        gflops = self.matmul_gflops.get(self.name)
        return gflops * 1e9 if gflops else None

    def as_params(self) -> dict[str, str | float]:
        """Flat key -> value for MLflow params and Dagster metadata."""
        return {
            "precision": self.name,
            "precision_reason": self.reason,
            **{f"matmul_gflops_{k}": round(v, 1) for k, v in self.matmul_gflops.items()},
        }


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """The best rate of an n x n `torch.mm` in `dtype` on `device` at this process's thread count.

    2048² takes ~50 ms in fp32 on 2 cores (AMX bf16: 9 ms): the probe costs about half a second. Best of `repeats` after
    a warm-up, since a shared machine only ever makes a matmul slower."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def resolve_precision(choice: str, device: str) -> Precision:
    """The format `choice` ("auto", "fp32", "bf16", "fp16") means on `device` ("cpu" or "cuda"), measured."""
    if device == "cuda":
        capability, name = torch.cuda.get_device_capability(), torch.cuda.get_device_name()
        chosen = cuda_choice(choice, capability, name)
        probe = {k: matmul_gflops(DTYPES[k], "cuda", 8192) for k in dict.fromkeys(("fp32", chosen.name))}
        return dataclasses.replace(chosen, matmul_gflops=probe)
    if device != "cpu":
        raise ValueError(f"unknown device '{device}': tunegraph trains on cpu or cuda")
    if choice == "fp16":  # refused before the probe: no reason to measure
        return cpu_choice(choice, {})
    return cpu_choice(choice, _cpu_probe(torch.get_num_threads()))


def cpu_choice(choice: str, probe: dict[str, float]) -> Precision:
    """The decision on a CPU, given its measured matmul GFLOP/s per format (`_cpu_probe`)."""
    if choice == "fp16":
        raise ValueError(
            "training.precision fp16 needs a CUDA GPU (loss scaling is a GPU feature): "
            "use auto, bf16 or fp32 on a CPU"
        )
    if choice != "auto":
        return Precision(choice, "cpu", "set in training.precision", probe)  # type: ignore[arg-type]
    speedup = probe["bf16"] / probe["fp32"]
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return Precision("bf16", "cpu", f"bf16 matmul measured {speedup:.1f}x fp32 on this CPU", probe)
    return Precision(
        "fp32",
        "cpu",
        f"bf16 matmul measured {speedup:.2f}x fp32 (< {CPU_BF16_MIN_SPEEDUP}): emulated here",
        probe,
    )


def cuda_choice(choice: str, capability: tuple[int, int], name: str) -> Precision:
    """The decision on a CUDA card of `capability` (major, minor); its probe is added by the caller."""
    native_bf16 = capability >= CUDA_NATIVE_BF16
    where = f"{name}, compute capability {capability[0]}.{capability[1]}"
    if choice == "auto":
        return Precision(
            "bf16" if native_bf16 else "fp16",
            "cuda",
            f"{where}: " + ("native bf16" if native_bf16 else "no native bf16, fp16 with loss scaling"),
        )
    if choice == "bf16" and not native_bf16:
        raise ValueError(f"training.precision bf16 on {where} (< 8.0) is emulated and slow: use fp16 or auto")
    return Precision(choice, "cuda", "set in training.precision")  # type: ignore[arg-type]


# Where bf16 loses to fp32 at this size already, it is emulated: the 2048² bf16 probe is skipped.
SMALL_PROBE = 512


@functools.cache
def _cpu_probe(threads: int) -> dict[str, float]:
    """fp32 and bf16 matmul GFLOP/s here. Once per process and thread count: evaluation loads several models.

    bf16 is tried at SMALL_PROBE² first: with its matmul emulated (this CPU with oneDNN and ATen held to AVX2,
    as an AVX2-only CPU runs them), a 2048² bf16 `torch.mm` ran at 0.3 GFLOP/s and the probe alone took
    340 s; at 512² it takes under a second and already loses to fp32 ~100x (2 vs 223 GFLOP/s)."""
    fp32 = matmul_gflops(torch.float32)
    small = matmul_gflops(torch.bfloat16, n=SMALL_PROBE)
    if small < matmul_gflops(torch.float32, n=SMALL_PROBE):
        return {"fp32": fp32, "bf16": small}
    return {"fp32": fp32, "bf16": matmul_gflops(torch.bfloat16)}


def weights_dtype(model_dtype: str, precision: Precision, trains_all_weights: bool) -> torch.dtype:
    """The format a model's weights are loaded in: fp32 masters when the optimizer updates them all (a full
    fine-tune under bf16 autocast), otherwise `model.dtype` ("auto": the precision's own format, so a
    frozen LoRA base or an evaluated model takes half the memory and no cast per matmul)."""
    if trains_all_weights:
        return torch.float32
    return precision.dtype if model_dtype == "auto" else DTYPES[model_dtype]


def training_device() -> str:
    """Where this process trains and runs models: "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
