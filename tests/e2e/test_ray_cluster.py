"""The data stages on a real Ray cluster of two nodes give the local engine's outputs, survive a
worker killed mid-dedup, and fail cleanly (rerun reusing what finished) when a task is lost every time.

A head node and a worker node, 1 CPU each, are started on this machine with `ray start` (nothing is
downloaded; dashboard and usage stats off) in a short temp dir, and stopped by process group in the
fixture's teardown, even on failure. The tiny pipeline's data stages are materialised by
`tunegraph run`'s runner with `data.engine: ray` and with `local`: every output file, from each
landing file's kept and dropped records to the packed blocks, must hash the same.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
from conftest import DATA_ASSETS, TINY_CONFIG, write_example_shards

from pipelines.cli import configure_environment
from pipelines.runner import Runner
from resources.outputs import output_folder
from resources.settings import REPO_ROOT, TunegraphSettings
from stages.content import content_hash
from stages.tables import read_json, read_rows

pytestmark = pytest.mark.slow
# Ray reads its auth settings once, on import: the cluster's token in the environment, not in ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
RAY = Path(sys.executable).parent / "ray"

# What each data asset's recorded data version is the content hash of (see its asset).
CONTENT = {
    "raw_corpus": ["records.parquet", "quarantine.parquet"],
    "clean_corpus": ["records.parquet", "quarantine.parquet"],
    "deduplicated_corpus": ["train.parquet", "duplicates.parquet", "near_duplicates.parquet",
                            "contaminated.parquet", "eval"],
    "augmented_corpus": ["train.parquet"],
    "tokenized_dataset": ["train_blocks.parquet", "eval.parquet"],
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """(address, the two `ray start --block` processes) of a head and a worker node, 1 CPU each."""
    temp = Path(tempfile.mkdtemp(prefix="tg-rc-"))  # short: Ray's socket paths must stay under 108 bytes
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]
    nodes = []

    def start(*args: str) -> None:
        log = (temp / f"node-{len(nodes)}.log").open("w")
        nodes.append(subprocess.Popen([RAY, "start", *args, *common], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip

    try:
        start("--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", f"--temp-dir={temp}")
        _wait_for_port(address, nodes[0], temp)
        start(f"--address={address}")
        ray.init(address=address)  # this process drives the runs' steps (the runner runs in-process)
        deadline = time.time() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.time() < deadline, (
                f"the worker node did not join: {(temp / 'node-1.log').read_text()[-2000:]}"
            )
            time.sleep(0.5)
        yield address, nodes
    finally:
        ray.shutdown()
        for node in reversed(nodes):  # each node's processes are in its own group
            _stop_group(node)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_port(address: str, head: subprocess.Popen, temp: Path) -> None:
    host, port = address.split(":")
    deadline = time.time() + 60
    while True:
        assert head.poll() is None, f"ray start --head exited: {(temp / 'node-0.log').read_text()[-2000:]}"
        assert time.time() < deadline, "the head node's GCS did not open its port in 60 s"
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.3)


def _stop_group(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _materialise(
    home: Path, overrides: dict[str, str], select: list[str] = DATA_ASSETS, full: bool = False
) -> tuple[dict, list[str]]:
    """Run the data stages in `home`'s instance with these overrides: (the runner's record, log lines)."""
    configure_environment(home, TINY_CONFIG)
    settings = TunegraphSettings(home=str(home), config_path=str(TINY_CONFIG), overrides=overrides)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        record = Runner(settings, instance, log=lambda _: None).run(select=select, full=full)
        lines = [e.user_message for run_id in record["dagster_run_ids"] for e in instance.all_logs(run_id)]
    return record, lines


def _outputs(home: Path, assets: tuple[str, ...] = tuple(CONTENT)) -> dict[str, str]:
    """asset[partition] -> content hash of the files its data version covers, from the instance's record."""
    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        hashes = {}
        for asset in assets:
            files = CONTENT[asset]
            partitions = (
                instance.get_dynamic_partitions("landing_files")
                if asset in ("raw_corpus", "clean_corpus")
                else [None]
            )
            for key in partitions:
                folder = output_folder(instance, asset, key)
                hashes[f"{asset}[{key}]" if key else asset] = content_hash(*(folder / f for f in files))
        return hashes


def _folder(home: Path, asset: str, partition: str | None = None) -> Path:
    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        return output_folder(instance, asset, partition)


def test_ray_and_local_materialise_the_same_data_stages(cluster, tmp_path: Path):
    address, _ = cluster
    homes = {engine: tmp_path / engine for engine in ("local", "ray")}
    lines = {}
    for engine, home in homes.items():
        home.mkdir()
        write_example_shards(home, shards=2)
        overrides = {"data.engine": "ray", "data.ray_address": address} if engine == "ray" else {}
        record, lines[engine] = _materialise(home, overrides)
        assert record["status"] == "success", record["errors"]
    local, on_ray = _outputs(homes["local"]), _outputs(homes["ray"])
    assert len(local) == 7 and on_ray == local  # 2 files x (raw, clean) + dedup, augmented, tokenized

    # What that covers, spelled out: kept ids, drop reasons per record, PII counts, the eval split.
    dedup = {e: _folder(h, "deduplicated_corpus") for e, h in homes.items()}
    kept = {e: [r["id"] for r in read_rows(d / "train.parquet")] for e, d in dedup.items()}
    held_out = {e: [r["id"] for r in read_rows(d / "eval" / "held_out.parquet")] for e, d in dedup.items()}
    assert kept["ray"] == kept["local"] and held_out["ray"] == held_out["local"] and len(held_out["ray"]) > 0
    for key in sorted(p.name for p in (homes["ray"] / "landing").iterdir()):
        clean = {e: _folder(h, "clean_corpus", key) for e, h in homes.items()}
        drops = {
            e: [(r["detail"], r["reason"]) for r in read_rows(c / "quarantine.parquet")]
            for e, c in clean.items()
        }
        pii = {e: read_json(c / "summary.json")["pii"] for e, c in clean.items()}
        assert drops["ray"] == drops["local"] and pii["ray"] == pii["local"]

    # The Ray work is in the Dagster runs' logs; the local runs never mention Ray.
    assert any(
        line.startswith(f"ray: clean_records: 8 tasks at {address}, 0 retries") for line in lines["ray"]
    )
    assert any("ray: near-dedup join of" in line and "by band-key hash" in line for line in lines["ray"])
    assert any(line.startswith("ray: _tokenize_chunk: ") for line in lines["ray"])
    assert not any(line.startswith("ray:") for line in lines["local"])
    configure_environment(homes["ray"], TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("deduplicated_corpus"))
        assert event.asset_materialization.metadata["engine"].value == "ray"


def test_a_worker_killed_mid_dedup_is_retried_and_the_output_is_the_local_one(cluster, tmp_path: Path):
    """20k records (benchmarks/scale.py's corpus), so that dedup's tasks run long enough to be killed."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from scale import build_corpus, write_files

    address, nodes = cluster
    home = tmp_path / "home"
    home.mkdir()
    records, _ = build_corpus(20_000)
    write_files(records, home / "landing", 4)
    on_ray = {"data.engine": "ray", "data.ray_address": address}
    record, _ = _materialise(home, on_ray, select=["raw_corpus", "clean_corpus"])
    assert record["status"] == "success", record["errors"]

    killed: list[int] = []
    done = threading.Event()

    def kill_a_task() -> None:  # the first of our Ray workers seen running a map_chunks task
        while not done.is_set() and not killed:
            for proc in _chunk_tasks(nodes):
                with contextlib.suppress(psutil.NoSuchProcess):  # it may have finished meanwhile
                    proc.kill()
                    killed.append(proc.pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_task)
    killer.start()
    try:
        record, lines = _materialise(home, on_ray, select=["deduplicated_corpus"])
    finally:
        done.set()
        killer.join()
    assert killed, "no dedup task was seen running: nothing was killed"
    assert record["status"] == "success", record["errors"]
    assert any("lost (" in line and "retry 1/2" in line for line in lines), [
        x for x in lines if x.startswith("ray:")
    ]
    after_kill = _outputs(home, ("deduplicated_corpus",))["deduplicated_corpus"]

    # The local engine, run again on the same inputs, writes the same output (reusing the signature cache).
    record, lines = _materialise(home, {}, select=["deduplicated_corpus"], full=True)
    assert not any(line.startswith("ray:") for line in lines)
    assert record["status"] == "success", record["errors"]
    assert _outputs(home, ("deduplicated_corpus",))["deduplicated_corpus"] == after_kill


def test_a_stage_whose_tasks_are_all_lost_fails_cleanly_and_the_rerun_reuses_what_finished(
    cluster, tmp_path: Path
):
    """Issue 30's fault at the asset level: every Ray worker that runs a task of augmented_corpus's
    gates is killed, so a task is lost three times. The run fails with one line; Dagster records no
    materialisation of augmented_corpus, whose half-written folder downstream never reads; the raw,
    clean and dedup work of that same run stays recorded, and the rerun redoes only what failed."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from scale import build_corpus

    from pipelines.report import user_error

    address, nodes = cluster
    home = tmp_path / "home"
    home.mkdir()
    write_example_shards(home, shards=2)
    on_ray = {"data.engine": "ray", "data.ray_address": address}
    first, _ = _materialise(home, on_ray)
    assert first["status"] == "success", first["errors"]
    recorded_before = _folder(home, "augmented_corpus")
    root = recorded_before.parent

    # A new landing file of 20k records: the gates' tasks then run ~0.1 s each, long enough to be seen.
    records, _ = build_corpus(20_000)
    with (home / "landing" / "big.jsonl").open("w") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)
    killed: list[int] = []
    done = threading.Event()

    def kill_every_task_once_augmenting() -> None:
        """From the moment augmented_corpus's new folder exists: every worker seen running a task dies."""
        while not done.is_set():
            if any(p != recorded_before for p in root.iterdir()):
                for proc in _chunk_tasks(nodes):
                    with contextlib.suppress(psutil.NoSuchProcess):  # it may have finished meanwhile
                        proc.kill()
                        killed.append(proc.pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_every_task_once_augmenting)
    killer.start()
    try:
        failed, _ = _materialise(home, on_ray)
    finally:
        done.set()
        killer.join()
    assert len(killed) >= 3, f"only {len(killed)} tasks were seen running and killed"
    assert failed["status"] == "failed" and failed["partitions_processed"] == ["big.jsonl"], failed
    (error,) = failed["errors"]
    assert error.startswith("augmented_corpus: ray: ") and "lost 3 times at " + address in error, error
    assert "the stage records nothing: check the cluster (`ray status`) and rerun" in error, error

    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        failed_run = failed["dagster_run_ids"][-1]
        assert instance.get_run_by_id(failed_run).status == dg.DagsterRunStatus.FAILURE
        step_errors = [e.dagster_event.step_failure_data.error for e in instance.all_logs(failed_run)
                       if e.dagster_event and e.dagster_event.is_step_failure]  # fmt: skip
        assert [e.cause is not None and "\n" not in e.cause.message.strip() for e in step_errors] == [True]
        assert user_error(step_errors[0]) == error.removeprefix("augmented_corpus: ")
        # The same run materialised the new file's partitions and dedup before augmented_corpus failed.
        materialised = {e.dagster_event.asset_key.to_user_string() for e in instance.all_logs(failed_run)
                        if e.dagster_event and e.dagster_event.is_step_materialization}  # fmt: skip
        assert {"raw_corpus", "clean_corpus", "deduplicated_corpus"} <= materialised
        assert "augmented_corpus" not in materialised
    # What downstream reads is still the first run's output; the failed run's folder is left unread.
    assert _folder(home, "augmented_corpus") == recorded_before
    assert (root / failed_run / "train.parquet").exists()

    rerun, _ = _materialise(home, on_ray)
    assert rerun["status"] == "success", rerun["errors"]
    assert rerun["partitions_processed"] == []  # big.jsonl's raw and clean partitions are reused
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        redone = {e.dagster_event.asset_key.to_user_string() for run_id in rerun["dagster_run_ids"]
                  for e in instance.all_logs(run_id)
                  if e.dagster_event and e.dagster_event.is_step_materialization}  # fmt: skip
        assert redone == {"augmented_corpus", "tokenized_dataset"}
        tokens = instance.get_latest_materialization_event(dg.AssetKey("tokenized_dataset"))
        assert tokens.asset_materialization.metadata["reused_from_cache"].value > 0  # the first run's tokens
    assert _folder(home, "augmented_corpus") == root / rerun["dagster_run_ids"][-1]


def _chunk_tasks(nodes: list) -> list[psutil.Process]:
    """The Ray worker processes of the nodes' that run a map_chunks task now."""
    running = []
    for node in nodes:
        for proc in psutil.Process(node.pid).children(recursive=True):
            try:
                if " ".join(proc.cmdline()).startswith("ray::_chunk"):
                    running.append(proc)
            except psutil.NoSuchProcess:
                continue
    return running
