"""The training launcher: runs `stages.train` as its own process through Dagster Pipes.

Logs and the final metadata stream back to the asset. The command comes from the pipeline
config (`training.num_processes`, `mixed_precision`, `accelerate_config`):

- GPUs, and a single CPU process: `accelerate launch` (FSDP or DeepSpeed from an accelerate
  config file), so one process and eight take the same path;
- several CPU processes: `torchrun`, because `accelerate launch --cpu` starts one process
  here whatever `--num_processes` says (it wants MPI); the training code is the same, and an
  `Accelerator` inside sees MULTI_CPU over gloo.

On Kubernetes the same spec goes to `PipesK8sClient` instead of `PipesSubprocessClient`: only
this resource changes (see the README).
"""

import os
import sys

import dagster as dg
from pydantic import Field

from stages.config import TrainingConfig


class TrainingLauncher(dg.ConfigurableResource):
    """How the training process is started."""

    torch_threads: int | None = Field(default=None, description="Threads per CPU process; default: torch's.")

    def command(self, spec_path: str, training: TrainingConfig, use_gpu: bool) -> list[str]:
        n = training.num_processes
        if use_gpu or n == 1:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n)]
            command += ["--num_machines", "1", "--dynamo_backend", "no"]
            if training.accelerate_config:
                command += ["--config_file", training.accelerate_config]
            if training.mixed_precision != "auto":
                command += ["--mixed_precision", training.mixed_precision]
            if not use_gpu:
                command += ["--cpu", "--num_cpu_threads_per_process", str(self.torch_threads or _cores())]
            return [*command, "-m", "stages.train", spec_path]
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            "-m",
            "stages.train",
            spec_path,
        ]

    def launch(
        self, context: dg.AssetExecutionContext, spec_path: str, training: TrainingConfig, use_gpu: bool
    ) -> dg.MaterializeResult:
        env = {"TUNEGRAPH_TORCH_THREADS": str(self.torch_threads)} if self.torch_threads else {}
        if not use_gpu and training.num_processes > 1:
            # Split the cores between the workers rather than oversubscribing them.
            env.setdefault("TUNEGRAPH_TORCH_THREADS", str(max(1, _cores() // training.num_processes)))
        command = self.command(spec_path, training, use_gpu)
        context.log.info("launching: " + " ".join(command))
        client = dg.PipesSubprocessClient(env=env)
        return client.run(context=context, command=command).get_materialize_result()


def _cores() -> int:
    return len(os.sched_getaffinity(0))
