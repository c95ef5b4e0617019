"""The training launcher: runs `stages.train` as its own process through Dagster Pipes.

Logs and the final metadata stream back to the asset. One process runs `python -m stages.train`;
several processes use `torchrun` on CPU (accelerate needs MPI for multi-CPU) and `accelerate
launch` on GPUs. On Kubernetes the same spec goes to PipesK8sClient instead: only this resource
changes.
"""

import shutil
import sys

import dagster as dg
from pydantic import Field


class TrainingLauncher(dg.ConfigurableResource):
    """How the training process is started."""

    num_processes: int = Field(default=1, description="Training processes (GPUs, or CPU DDP workers).")
    torch_threads: int | None = Field(default=None, description="Threads per CPU process; default: torch's.")

    def command(self, spec_path: str, use_gpu: bool) -> list[str]:
        if self.num_processes == 1:
            return [sys.executable, "-m", "stages.train", spec_path]
        if use_gpu:
            accelerate = shutil.which("accelerate") or "accelerate"
            return [
                accelerate,
                "launch",
                "--num_processes",
                str(self.num_processes),
                "-m",
                "stages.train",
                spec_path,
            ]
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(self.num_processes),
            "-m",
            "stages.train",
            spec_path,
        ]

    def launch(
        self, context: dg.AssetExecutionContext, spec_path: str, use_gpu: bool
    ) -> dg.MaterializeResult:
        env = {"TUNEGRAPH_TORCH_THREADS": str(self.torch_threads)} if self.torch_threads else {}
        client = dg.PipesSubprocessClient(env=env)
        return client.run(context=context, command=self.command(spec_path, use_gpu)).get_materialize_result()
