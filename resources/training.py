"""The training launcher: starts `stages.launch` where `training.launcher` says, through Dagster Pipes.

Logs and the final metadata stream back to the asset. The step decides only *where* training
runs: a subprocess here (`kind: local`) or a Kubernetes pod (`kind: k8s`, `pip install dagster-k8s`,
sent with `PipesK8sClient`). *How* (GPUs or CPU, accelerate or torchrun, how many processes) is
decided by `stages.launch` on the machine that trains, so a CPU-only Dagster run pod never sends
`accelerate launch --cpu` to a GPU pod.

On Kubernetes the state folder must be a volume that the Dagster run and the pod mount at the same
path: the training spec and its outputs are absolute paths under `$TUNEGRAPH_HOME`.
"""

import sys
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from pydantic import Field

from stages.config import LauncherConfig

STATE_VOLUME = "tunegraph-state"
GPU = "nvidia.com/gpu"


class TrainingLauncher(dg.ConfigurableResource):
    """How the training process is started (where: `training.launcher` in the pipeline YAML)."""

    torch_threads: int | None = Field(
        default=None,
        description="Threads per CPU training process; default: the cores, split between processes.",
    )

    def launch(
        self,
        context: dg.AssetExecutionContext,
        module: str,
        spec_path: str,
        launcher: LauncherConfig,
        home: str,
    ) -> dg.MaterializeResult:
        """Run the training entry point `module` on `spec_path` and wait for its final report."""
        env = {"TUNEGRAPH_TORCH_THREADS": str(self.torch_threads)} if self.torch_threads else {}
        command = launch_command(module, spec_path)
        context.log.info(f"launching ({launcher.kind}): " + " ".join(command))
        match launcher.kind:
            case "local":
                client = dg.PipesSubprocessClient(env=env)
                return client.run(
                    context=context, command=[sys.executable, *command]
                ).get_materialize_result()
            case "k8s":
                try:
                    from dagster_k8s import PipesK8sClient
                except ImportError as err:
                    raise RuntimeError(
                        "training.launcher.kind is k8s but dagster-k8s is not installed: pip install -e '.[k8s]'"
                    ) from err
                spec = pod_spec(launcher, ["python", *command], home)
                return (
                    PipesK8sClient(env={**env, "TUNEGRAPH_HOME": home})
                    .run(context=context, namespace=launcher.namespace, base_pod_spec=spec)
                    .get_materialize_result()
                )


def launch_command(module: str, spec_path: str) -> list[str]:
    """The arguments after the interpreter: the same for a subprocess, a CPU pod and a GPU pod."""
    return ["-m", "stages.launch", module, spec_path]


def pod_spec(launcher: LauncherConfig, command: list[str], home: str) -> dict[str, Any]:
    """The pod spec `PipesK8sClient` submits (it adds the pod's name, labels and the Pipes variables
    to the first container's env). Pure: built and tested without a cluster or dagster-k8s."""
    volume = launcher.volume
    if launcher.kind != "k8s" or volume is None or launcher.image is None:
        raise ValueError("pod_spec needs training.launcher.kind k8s with image and volume")
    mount = PurePosixPath(volume.mount_path)
    if not PurePosixPath(home).is_relative_to(mount):
        raise ValueError(
            f"$TUNEGRAPH_HOME {home} is not under training.launcher.volume.mount_path {mount}: mount the "
            "state volume in the pod where the Dagster run has it"
        )
    wanted = launcher.resources
    requests = {k: v for k, v in {"cpu": wanted.cpu, "memory": wanted.memory}.items() if v}
    limits = {
        k: v
        for k, v in {"memory": wanted.memory, GPU: str(wanted.gpus) if wanted.gpus else None}.items()
        if v
    }
    container: dict[str, Any] = {
        "name": "training",
        "image": launcher.image,
        "command": command,
        "resources": {k: v for k, v in {"requests": requests, "limits": limits}.items() if v},
        "volumeMounts": [{"name": STATE_VOLUME, "mountPath": str(mount)}],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed training is retried by the asset's RetryPolicy, and resumes
        "containers": [container],
        "volumes": [{"name": STATE_VOLUME, "persistentVolumeClaim": {"claimName": volume.claim}}],
    }
    if wanted.gpus:
        # GPU nodes are usually tainted so that only pods asking for a GPU land there.
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return spec
