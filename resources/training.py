"""The training launcher: runs `stages.train` as its own process through Dagster Pipes.

Logs and the final metadata stream back to the asset. The command comes from the pipeline
config (`training.num_processes`, `mixed_precision`, `accelerate_config`):

- GPUs, and a single CPU process: `accelerate launch` (FSDP or DeepSpeed from an accelerate
  config file), so one process and eight take the same path;
- several CPU processes: `torchrun`, because `accelerate launch --cpu` starts one process
  here whatever `--num_processes` says (it wants MPI); the training code is the same, and an
  `Accelerator` inside sees MULTI_CPU over gloo.

On Kubernetes (`backend: k8s`, needs `pip install dagster-k8s`) the same command runs in a pod
through `PipesK8sClient`; the state folder must then be a volume both the Dagster run and the
pod mount at the same path. Only this resource's config differs (see the README).
"""

import os
import sys
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from stages.config import TrainingConfig


class TrainingLauncher(dg.ConfigurableResource):
    """How the training process is started."""

    torch_threads: int | None = Field(default=None, description="Threads per CPU process; default: torch's.")
    backend: Literal["subprocess", "k8s"] = Field(
        default="subprocess", description="Where the training process runs: here, or in a Kubernetes pod."
    )
    k8s_image: str | None = Field(default=None, description="k8s: the image with this project installed.")
    k8s_namespace: str | None = Field(default=None, description="k8s: namespace; default the current one.")
    k8s_pod_spec: dict[str, Any] | None = Field(
        default=None,
        description="k8s: base pod spec: GPU resources, node selector, the volume holding $TUNEGRAPH_HOME.",
    )

    @property
    def local(self) -> bool:
        """Whether the training process runs on this machine (it can watch this process's pid)."""
        return self.backend == "subprocess"

    def command(self, module: str, spec_path: str, training: TrainingConfig, use_gpu: bool) -> list[str]:
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
            return [*command, "-m", module, spec_path]
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            "-m",
            module,
            spec_path,
        ]

    def launch(
        self,
        context: dg.AssetExecutionContext,
        module: str,
        spec_path: str,
        training: TrainingConfig,
        use_gpu: bool,
    ) -> dg.MaterializeResult:
        """Run `python -m MODULE SPEC` (the training entry point) and wait for its final report."""
        env = {"TUNEGRAPH_TORCH_THREADS": str(self.torch_threads)} if self.torch_threads else {}
        if not use_gpu and training.num_processes > 1:
            # Split the cores between the workers rather than oversubscribing them.
            env.setdefault("TUNEGRAPH_TORCH_THREADS", str(max(1, _cores() // training.num_processes)))
        command = self.command(module, spec_path, training, use_gpu)
        context.log.info(f"launching ({self.backend}): " + " ".join(command))
        if self.backend == "k8s":
            if not self.k8s_image:
                raise ValueError(
                    "TrainingLauncher(backend='k8s') needs k8s_image: the image with tunegraph installed"
                )
            from dagster_k8s import PipesK8sClient  # optional: pip install dagster-k8s

            # The pod runs the image's python, not this machine's interpreter.
            command = ["python", *command[1:]]
            return (
                PipesK8sClient(env=env)
                .run(
                    context=context,
                    image=self.k8s_image,
                    command=command,
                    namespace=self.k8s_namespace,
                    base_pod_spec=self.k8s_pod_spec,
                )
                .get_materialize_result()
            )
        client = dg.PipesSubprocessClient(env=env)
        return client.run(context=context, command=command).get_materialize_result()


def _cores() -> int:
    return len(os.sched_getaffinity(0))
