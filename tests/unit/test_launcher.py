"""The cluster launcher as configuration: the pod spec and command that would be submitted for a GPU
pod and for a CPU pod, and the device decision made where training runs (no cluster needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster_k8s.pipes import build_pod_body
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR

from resources.training import launch_command, pod_spec
from stages.config import ConfigError, LauncherConfig, TrainingConfig, parse_config
from stages.launch import SHIPPED_CONFIGS, cpu_allocator, preload, training_command

HOME = "/data/tunegraph"
SPEC = f"{HOME}/assets/fine_tuned_model/.tmp-v-1/spec.json"
LAUNCHER = """
kind: k8s
image: registry.example.com/tunegraph:1.0
namespace: ml
volume: {claim: tunegraph-state, mount_path: /data}
"""


def k8s(**resources: object) -> LauncherConfig:
    return LauncherConfig.model_validate({**yaml.safe_load(LAUNCHER), "resources": resources})


# The same command goes to every pod: the device is not decided by the (CPU-only) Dagster run pod.
COMMAND = ["python", "-m", "stages.launch", "stages.train", SPEC]
STATE = {"name": "tunegraph-state", "persistentVolumeClaim": {"claimName": "tunegraph-state"}}
MOUNT = [{"name": "tunegraph-state", "mountPath": "/data"}]


def test_a_gpu_pod_asks_for_its_gpus_and_tolerates_the_gpu_taint():
    spec = pod_spec(
        k8s(gpus=2, cpu="16", memory="64Gi"), ["python", *launch_command("stages.train", SPEC)], HOME
    )
    assert spec == {
        "restartPolicy": "Never",
        "containers": [{
            "name": "training",
            "image": "registry.example.com/tunegraph:1.0",
            "command": COMMAND,
            "resources": {"requests": {"cpu": "16", "memory": "64Gi"},
                          "limits": {"memory": "64Gi", "nvidia.com/gpu": "2"}},
            "volumeMounts": MOUNT,
        }],
        "volumes": [STATE],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }  # fmt: skip


def test_a_cpu_pod_asks_for_cores_and_no_gpu():
    spec = pod_spec(k8s(cpu="8", memory="16Gi"), ["python", *launch_command("stages.train", SPEC)], HOME)
    assert spec == {
        "restartPolicy": "Never",
        "containers": [{
            "name": "training",
            "image": "registry.example.com/tunegraph:1.0",
            "command": COMMAND,
            "resources": {"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {"memory": "16Gi"}},
            "volumeMounts": MOUNT,
        }],
        "volumes": [STATE],
    }  # fmt: skip


def test_dagster_k8s_submits_that_spec_with_the_pipes_variables():
    """What `PipesK8sClient.run(base_pod_spec=...)` hands the Kubernetes API, built by dagster-k8s itself."""
    spec = pod_spec(k8s(gpus=1), COMMAND, HOME)
    env = {DAGSTER_PIPES_CONTEXT_ENV_VAR: "ctx", "TUNEGRAPH_HOME": HOME}
    pod = build_pod_body("dagster-run-train", None, None, env, None, spec)
    container = pod.spec.containers[0]
    assert (container.image, container.command) == ("registry.example.com/tunegraph:1.0", COMMAND)
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("tunegraph-state", "/data")]
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "tunegraph-state"
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu" and pod.spec.restart_policy == "Never"
    assert {e.name: e.value for e in container.env} == env


def test_the_pod_decides_the_device_and_process_count():
    """`python -m stages.launch` in each pod: the same spec, different machines, different commands."""
    tail = ["-m", "stages.train", SPEC]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    one, two = TrainingConfig(num_processes=1), TrainingConfig(num_processes=2)

    # A GPU pod with two cards: both used, no --cpu, whatever the Dagster run pod has.
    assert training_command("stages.train", SPEC, two, devices=["0", "1"], cores=16) == (
        [*accelerate, "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no", "--multi_gpu",
         *tail], {"CUDA_VISIBLE_DEVICES": "0,1"},
    )  # fmt: skip
    # A CPU pod: one process on all its cores, or two torchrun workers splitting them.
    assert training_command("stages.train", SPEC, one, devices=[], cores=8) == (
        [*accelerate, "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
         "--cpu", "--num_cpu_threads_per_process", "8", *tail], {},
    )  # fmt: skip
    assert training_command("stages.train", SPEC, two, devices=[], cores=8) == (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *tail],
        {"TUNEGRAPH_TORCH_THREADS": "4"},
    )
    with pytest.raises(ValueError, match="num_processes is 2 but 1 GPU"):
        training_command("stages.train", SPEC, two, devices=["0"], cores=8)


def test_one_process_per_visible_gpu_by_default_and_only_the_chosen_gpus_visible():
    """Issue 31's first break: with 2 GPUs and the default config, 1 process saw both cards and the Trainer
    wrapped the model in nn.DataParallel. Now the default starts a process per GPU, and narrowing hides the rest."""
    default = parse_config({}).training
    assert default.num_processes is None  # "every visible device"
    command, env = training_command("stages.train", SPEC, default, devices=["0", "1"], cores=16)
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    # Narrowed to one of the devices CUDA_VISIBLE_DEVICES named (3 and 5 here): only that one is shown.
    command, env = training_command(
        "stages.train", SPEC, TrainingConfig(num_processes=1), devices=["3", "5"], cores=16
    )
    assert command[command.index("--num_processes") + 1] == "1" and "--multi_gpu" not in command
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    # On a CPU the default is one process (torchrun only when asked for several).
    command, _ = training_command("stages.train", SPEC, default, devices=[], cores=2)
    assert "--cpu" in command and command[command.index("--num_processes") + 1] == "1"


def test_distributed_selects_a_shipped_accelerate_config_on_gpus_and_is_refused_on_a_cpu():
    """training.distributed names a file under configs/accelerate/ that goes to accelerate launch on GPUs.
    On a CPU accelerate would run the processes unsharded without a word: refused in one line."""
    fsdp = parse_config({"training": {"distributed": "fsdp", "num_processes": 2}}).training
    command, _ = training_command("stages.train", SPEC, fsdp, devices=["0", "1"], cores=16)
    config = Path(command[command.index("--config_file") + 1])
    assert config == SHIPPED_CONFIGS["fsdp"] and config.is_file() and "--multi_gpu" not in command
    with pytest.raises(ValueError, match="shards with FSDP, which accelerate runs on GPUs only") as err:
        training_command("stages.train", SPEC, fsdp, devices=[], cores=2)
    assert "\n" not in str(err.value)

    deepspeed = parse_config({"training": {"distributed": "deepspeed", "num_processes": 2}}).training
    command, _ = training_command("stages.train", SPEC, deepspeed, devices=["0", "1"], cores=16)
    assert Path(command[command.index("--config_file") + 1]) == SHIPPED_CONFIGS["deepspeed"]
    with pytest.raises(ValueError, match="shards with DeepSpeed"):
        training_command("stages.train", SPEC, deepspeed, devices=[], cores=2)
    with pytest.raises(ConfigError, match="keep one of them"):
        parse_config({"training": {"distributed": "fsdp", "accelerate_config": "mine.yaml"}})


def test_the_shipped_fsdp_config_reaches_the_processes_as_accelerate_passes_it():
    """Not run here (no GPU): accelerate's own launch code reads the file as FULL_SHARD FSDP, one unit per
    decoder layer, the model gathered whole for saving (what stages.train's whole_model needs)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = ["--config_file", str(SHIPPED_CONFIGS["fsdp"]), "--num_processes", "2", "-m", "stages.train", SPEC]
    env = prepare_multi_gpu_env(_validate_launch_command(launch_command_parser().parse_args(argv))[0])
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert (env["FSDP_SHARDING_STRATEGY"], env["FSDP_AUTO_WRAP_POLICY"]) == (
        "FULL_SHARD",
        "TRANSFORMER_BASED_WRAP",
    )
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT" and env["FSDP_USE_ORIG_PARAMS"] == "true"


def test_the_shipped_deepspeed_config_is_a_zero3_accelerate_config():
    """Not run here (no GPU, deepspeed not installed): accelerate's own launch parser reads it as ZeRO-3
    with a whole 16-bit model gathered for saving (what stages.train's whole_model needs)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = [
        "--config_file",
        str(SHIPPED_CONFIGS["deepspeed"]),
        "--num_processes",
        "2",
        "-m",
        "stages.train",
        SPEC,
    ]
    args = _validate_launch_command(launch_command_parser().parse_args(argv))[0]
    assert args.use_deepspeed and not args.use_fsdp
    assert (args.zero_stage, args.zero3_save_16bit_model, args.offload_param_device) == (3, True, "none")


def test_cpu_training_gets_the_allocator_preloaded():
    """tcmalloc goes into CPU training processes (glibc's malloc doubled a step here), never to a GPU pod."""
    lib = "libtcmalloc_minimal.so.4"
    one, two = TrainingConfig(num_processes=1), TrainingConfig(num_processes=2)
    keep = {"LD_PRELOAD": lib, "TCMALLOC_RELEASE_RATE": "0"}  # tcmalloc keeps what a step frees
    assert training_command("stages.train", SPEC, one, devices=[], cores=2, allocator=lib)[1] == keep
    assert training_command("stages.train", SPEC, two, devices=[], cores=8, allocator=lib)[1] == {
        "TUNEGRAPH_TORCH_THREADS": "4", **keep,
    }  # fmt: skip
    jemalloc = "libjemalloc.so.2"  # no tcmalloc setting for another allocator
    assert training_command("stages.train", SPEC, one, devices=[], cores=2, allocator=jemalloc)[1] == {
        "LD_PRELOAD": jemalloc
    }
    assert (
        "LD_PRELOAD"
        not in training_command("stages.train", SPEC, two, devices=["0", "1"], cores=8, allocator=lib)[1]
    )
    # Added to what the user preloads, once.
    assert preload("", lib) == lib
    assert preload("libfoo.so", lib) == f"libfoo.so {lib}"
    assert preload(f"{lib} libfoo.so", lib) == f"{lib} libfoo.so"


@pytest.mark.skipif(cpu_allocator() is None, reason="no tcmalloc or jemalloc on this machine")
def test_benchmarks_restart_themselves_in_cpu_trainings_allocator(tmp_path: Path) -> None:
    """exec_with_cpu_allocator: a script restarts once, with its arguments, on the allocator training
    gets (the benchmarks call it so that they measure what training gets); opting out keeps glibc's."""
    script = tmp_path / "bench.py"
    script.write_text(
        "import os, sys\nsys.path.insert(0, sys.argv[1])\n"
        "from stages.launch import exec_with_cpu_allocator, malloc_in_use\nexec_with_cpu_allocator()\n"
        "print(malloc_in_use(), os.environ.get('TCMALLOC_RELEASE_RATE'), sys.argv[2])\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TUNEGRAPH_ALLOCATOR")}

    def run(**extra: str) -> str:
        command = [sys.executable, str(script), root, "argument"]
        return subprocess.run(command, env=env | extra, capture_output=True, text=True, check=True).stdout

    expected = "tcmalloc 0" if "tcmalloc" in (cpu_allocator() or "") else "jemalloc None"
    assert run() == f"{expected} argument\n"
    assert run(TUNEGRAPH_ALLOCATOR="system") == "system None argument\n"


def test_the_launcher_is_configured_in_the_yaml_with_one_line_errors():
    assert parse_config({}).training.launcher.kind == "local"
    cfg = parse_config({"training": {"launcher": yaml.safe_load(LAUNCHER)}})
    assert (cfg.training.launcher.kind, cfg.training.launcher.volume.claim) == ("k8s", "tunegraph-state")

    cases = {
        "kind k8s needs image": {"kind": "k8s", "volume": {"claim": "c"}},
        "image apply to kind k8s only": {"image": "x"},
        "Input should be 'local' or 'k8s'": {"kind": "slurm"},
    }
    for message, launcher in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            parse_config({"training": {"launcher": launcher}})
        assert "\n" not in str(err.value) and "training.launcher" in str(err.value)
    with pytest.raises(ConfigError, match="num_processes 4 needs as many GPUs"):
        parse_config(
            {
                "training": {
                    "num_processes": 4,
                    "launcher": {**yaml.safe_load(LAUNCHER), "resources": {"gpus": 2}},
                }
            }
        )
    with pytest.raises(ValueError, match="is not under training.launcher.volume.mount_path /data"):
        pod_spec(k8s(), COMMAND, "/srv/tunegraph")


def test_moving_training_to_the_cluster_changes_no_version():
    """Where training runs is not what is trained: no asset becomes stale, a checkpoint still resumes."""
    local, cluster = parse_config({}), parse_config({"training": {"launcher": yaml.safe_load(LAUNCHER)}})
    assert local.section_hash("training") == cluster.section_hash("training")
    moved = parse_config({"training": {"learning_rate": 1e-3, "launcher": yaml.safe_load(LAUNCHER)}})
    assert moved.section_hash("training") != local.section_hash("training")
