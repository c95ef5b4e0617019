"""Start training where it runs: the device and the process count are decided here, not by Dagster.

    python -m stages.launch stages.train SPEC.json

The Dagster step runs this as its subprocess, or a Kubernetes pod runs it (`training.launcher`).
It reads `training` from the spec, looks at the GPUs and CPU cores of the machine it is on, and
replaces itself (exec: the same pid, so Dagster Pipes, signals and the parent watch reach the
training) with one of:
- GPUs: `accelerate launch --num_processes N` (FSDP or DeepSpeed from training.accelerate_config);
- one CPU process: `accelerate launch --cpu`;
- several CPU processes: `torchrun --nproc_per_node N`, because `accelerate launch --cpu` starts one
  process here whatever `--num_processes` says (it wants MPI); an `Accelerator` inside sees
  MULTI_CPU over gloo. The training code is the same in every case.
On a CPU the training process also gets tcmalloc preloaded when the machine has it (`cpu_allocator`),
set to keep the memory it frees (`allocator_environment`).
"""

import ctypes.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stages import memory
from stages.config import TrainingConfig
from stages.spec import TrainingSpec

REPO_ROOT = Path(__file__).resolve().parents[1]

THREADS_ENV = "TUNEGRAPH_TORCH_THREADS"  # read by the training entry point (torch.set_num_threads)
ALLOCATOR_ENV = "TUNEGRAPH_ALLOCATOR"  # "system" keeps glibc's malloc


def cpu_allocator() -> str | None:
    """tcmalloc (else jemalloc) if this machine has it, for CPU torch processes; None otherwise.

    glibc returns every freed block over 32 MB to the kernel (its mmap threshold cannot be raised
    past that), so each step maps and faults its activations and logits in again. Measured on this
    2-core VM on 2026-12-03, the demo's LoRA step (bf16) took 10-12 s with glibc and 5.7 s with
    tcmalloc, system time 40 s -> 8 s over 7 steps. PyTorch's own CPU launcher
    (torch.backends.xeon.run_cpu) preloads the same libraries. `TUNEGRAPH_ALLOCATOR=system` opts out.
    """
    if os.environ.get(ALLOCATOR_ENV) == "system":
        return None
    return next(
        filter(None, map(ctypes.util.find_library, ("tcmalloc_minimal", "tcmalloc", "jemalloc"))), None
    )


def allocator_environment(allocator: str | None) -> dict[str, str]:
    """The environment a CPU torch process gets for `allocator` (`cpu_allocator`): preloaded, and with
    tcmalloc, freed memory kept for the next step instead of handed back to the kernel.

    gperftools' tcmalloc returns free spans to the kernel little by little (TCMALLOC_RELEASE_RATE,
    default 1), so every training step faulted some of its activations and its 201 MB logits chunk in
    again: measured on 2 cores on 2026-12-04, a SmolLM2 full fine-tune step took 6.85 s with the default
    and 6.42 s with 0 (page faults a step ~4,000 -> ~20). A training process's working set is the
    same every step, so keeping it costs no more memory than its peak.
    """
    if not allocator:
        return {}
    return {"LD_PRELOAD": allocator} | ({"TCMALLOC_RELEASE_RATE": "0"} if "tcmalloc" in allocator else {})


def exec_with_cpu_allocator() -> None:
    """Restart this script (same arguments) in the environment CPU training gets, unless it already
    runs in it or no allocator applies: for benchmarks, so they measure what training gets."""
    env = with_current_preload(allocator_environment(cpu_allocator()))
    if env and any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def malloc_in_use() -> str:
    """The malloc this process runs on: tcmalloc or jemalloc (preloaded by `training_command` on a
    CPU), else the system's. On this machine it halves a CPU step's time (`cpu_allocator`)."""
    maps = Path("/proc/self/maps")
    text = maps.read_text() if maps.exists() else ""
    return next((name for name in ("tcmalloc", "jemalloc") if name in text), "system")


def with_current_preload(env: dict[str, str]) -> dict[str, str]:
    """`env` with its LD_PRELOAD added to this process's own (what the user preloads stays)."""
    if "LD_PRELOAD" not in env:
        return env
    return env | {"LD_PRELOAD": preload(os.environ.get("LD_PRELOAD", ""), env["LD_PRELOAD"])}


def preload(current: str, library: str | None) -> str:
    """LD_PRELOAD's value with `library` added (once)."""
    libraries = current.split()
    return " ".join([*libraries, library] if library and library not in libraries else libraries)


# The accelerate configs `training.distributed` selects, shipped with the project.
SHIPPED_CONFIGS = {
    "fsdp": REPO_ROOT / "configs" / "accelerate" / "fsdp.yaml",
    "deepspeed": REPO_ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml",
}


def accelerate_config(training: TrainingConfig) -> str | None:
    """The accelerate config file this run uses: the user's own, the shipped one `distributed` names, or
    none (ddp: accelerate's defaults)."""
    if training.accelerate_config:
        return training.accelerate_config
    shipped = SHIPPED_CONFIGS.get(training.distributed)
    return str(shipped) if shipped else None


def refuse_cpu_sharding(config_file: str, processes: int) -> None:
    """Refuse an accelerate config that shards (FSDP, DeepSpeed, as accelerate's own launch parser reads
    it) for CPU processes: accelerate would train them unsharded without a word."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(
        ["--config_file", config_file, "--num_processes", str(processes), "-m", "stages.train", "spec.json"]
    )
    args = _validate_launch_command(parsed)[0]
    if args.use_deepspeed or args.use_fsdp:
        # accelerate 1.16 turns FSDP on only for GPU-type states: its MULTI_CPU state ignores these variables
        # and the processes would train as DDP. Forced on, FSDP1 refused the CPU device and FSDP2 trained (the
        # same losses as one process, to 1e-7) but its end-of-training checkpoint broke gloo (measured here).
        kind = "DeepSpeed" if args.use_deepspeed else "FSDP"
        raise ValueError(
            f"{config_file} shards with {kind}, which accelerate runs on GPUs only (on a CPU its processes "
            "would train unsharded): use training.distributed: ddp on a CPU"
        )


def training_command(
    module: str,
    spec_path: str,
    training: TrainingConfig,
    devices: Sequence[str],
    cores: int,
    threads: int | None = None,
    allocator: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(command, environment additions) to train on `devices` (GPU ids as CUDA_VISIBLE_DEVICES names them,
    `visible_devices`) or, with none, on `cores` CPU cores here.

    One process per device, always: every visible GPU by default, the first `training.num_processes`
    of them when it narrows, and only those made visible to the processes (a process that sees two
    GPUs is wrapped in nn.DataParallel by the Trainer: a larger batch than asked, other results).
    `threads`: torch threads per CPU process when set; otherwise the cores, split between processes.
    `allocator`: a malloc library to preload into CPU training (`cpu_allocator`).
    """
    n = process_count(training, devices)
    if devices and n > len(devices):
        raise ValueError(
            f"training.num_processes is {n} but {len(devices)} GPU(s) are visible here: "
            f"lower it or give the pod more GPUs (training.launcher.resources.gpus)"
        )
    config_file = accelerate_config(training)
    if devices:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n)]
        command += ["--num_machines", "1", "--dynamo_backend", "no"]
        if config_file:
            command += ["--config_file", config_file]
        elif n > 1:
            command += ["--multi_gpu"]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(devices[:n])}
        return [*command, "-m", module, spec_path], env | ({THREADS_ENV: str(threads)} if threads else {})
    cpu = allocator_environment(allocator)
    if n == 1:
        # One process shards nothing: the accelerate config (FSDP, DeepSpeed) is left out.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        command += ["--num_machines", "1", "--dynamo_backend", "no"]
        command += ["--cpu", "--num_cpu_threads_per_process", str(threads or cores)]
        env = {THREADS_ENV: str(threads)} if threads else {}
        return [*command, "-m", module, spec_path], env | cpu
    # Several CPU workers: split the cores between them rather than oversubscribing them.
    env = {THREADS_ENV: str(threads or max(1, cores // n))} | cpu
    if config_file:
        refuse_cpu_sharding(config_file, n)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", module, spec_path], env  # fmt: skip


def process_count(training: TrainingConfig, devices: Sequence[str]) -> int:
    """Processes to start: training.num_processes, or one per visible GPU (one on a CPU)."""
    return training.num_processes or max(1, len(devices))


def visible_devices() -> list[str]:
    """The CUDA (or ROCm) devices this process can use, as CUDA_VISIBLE_DEVICES names them (or their
    indices when it is unset). Without a GPU driver's device node there are none, and torch is not
    imported for nothing (about 2 s per training run on this machine)."""
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()):
        return []
    import torch

    count = torch.cuda.device_count()
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m stages.launch MODULE SPEC.json (e.g. stages.train)")
    module, spec_path = argv
    spec = TrainingSpec.read(Path(spec_path))
    threads = int(os.environ[THREADS_ENV]) if os.environ.get(THREADS_ENV) else None
    devices, allocator = visible_devices(), cpu_allocator()
    try:
        command, env = training_command(
            module, spec_path, spec.training, devices, len(os.sched_getaffinity(0)), threads, allocator
        )
        # Before anything loads: a run that cannot fit is refused here, not by an out-of-memory an hour in.
        fit = memory.gate(spec, devices, process_count(spec.training, devices))
    except ValueError as err:  # DoesNotFit is one
        raise SystemExit(f"error: {err}") from None
    if fit is None:
        print("memory: not estimated (the spec names no block_size)", file=sys.stderr, flush=True)
    else:
        estimate, device = fit
        print(f"memory: about {estimate.describe()} per process; {device.name} has {device.bytes / 1e9:.1f} GB",
              file=sys.stderr, flush=True)  # fmt: skip
        env |= {
            memory.ESTIMATE_ENV: str(int(estimate.total)),
            memory.DEVICE_MEMORY_ENV: str(int(device.bytes)),
        }
    env = with_current_preload(env)
    if "LD_PRELOAD" not in env and not devices and os.environ.get(ALLOCATOR_ENV) != "system":
        print("malloc: glibc's (no tcmalloc here: apt-get install libtcmalloc-minimal4 for about 2x faster CPU steps)",
              file=sys.stderr, flush=True)  # fmt: skip
    print("launching: " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    main(sys.argv[1:])
