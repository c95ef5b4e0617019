"""Shared fixtures: a fresh state folder, a real Dagster instance and real MLflow per test."""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipelines.cli import configure_environment
from resources.settings import REPO_ROOT, TunegraphSettings

TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
# A slice of the example corpus: enough records for a split, small enough to run in seconds.
TEST_MODULES = [
    "json",
    "textwrap",
    "string",
    "shlex",
    "fnmatch",
    "glob",
    "heapq",
    "bisect",
    "colorsys",
    "base64",
    "calendar",
    "csv",
    "difflib",
    "fractions",
    "statistics",
    "gzip",
    "zlib",
    "os.path",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TUNEGRAPH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """A PostgreSQL server for this session: TUNEGRAPH_TEST_POSTGRES_URL if set, else a throwaway
    one started from Debian's binaries (tests/postgres.py); no server installed is an error."""
    from postgres import postgres_server

    if os.environ.get("TUNEGRAPH_TEST_POSTGRES_URL"):
        yield os.environ["TUNEGRAPH_TEST_POSTGRES_URL"]
        return
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_urls(postgres_server_url: str) -> dict[str, str]:
    """Fresh "mlflow" and "dagster" databases on the server for one test, dropped afterwards."""
    from postgres import scratch_databases

    with scratch_databases(postgres_server_url, "mlflow", "dagster") as urls:
        yield urls


@pytest.fixture
def on_postgres(home: Path, postgres_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's Dagster instance and MLflow store on Postgres, by the two variables a user sets
    (README "Postgres"); processes the test starts inherit them."""
    monkeypatch.setenv("TUNEGRAPH_DAGSTER_PG_URL", postgres_urls["dagster"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_urls["mlflow"])
    return postgres_urls


@pytest.fixture
def instance(home: Path, monkeypatch: pytest.MonkeyPatch):
    """The repository's own dagster.yaml, with its storage under this test's state folder."""
    configure_environment(home, TINY_CONFIG)
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as inst:
        yield inst


def write_config(path: Path, **overrides: dict) -> Path:
    """configs/tiny.yaml with some sections overridden (deep-merged)."""
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    for section, values in overrides.items():
        raw.setdefault(section, {})
        if isinstance(values, dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    path.write_text(yaml.safe_dump(raw))
    return path


# The data assets and the base model: what every training test needs before it trains.
DATA_ASSETS = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset",
               "base_model"]  # fmt: skip


@pytest.fixture(scope="session")
def data_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder with DATA_ASSETS materialised from two example shards, built once per session."""
    from pipelines.runner import Runner

    home = tmp_path_factory.mktemp("template") / "home"
    home.mkdir()
    configure_environment(home, TINY_CONFIG)
    write_example_shards(home, shards=2)
    settings = TunegraphSettings(home=str(home), config_path=str(TINY_CONFIG))
    with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
        record = Runner(settings, instance).run(select=DATA_ASSETS)
    assert record["status"] == "success", record["errors"]
    return home


@pytest.fixture
def prepared_home(data_template: Path, home: Path) -> Path:
    """This test's state folder, starting as a copy of the data template (its own instance and MLflow)."""
    shutil.rmtree(home)
    shutil.copytree(data_template, home)
    return home


@pytest.fixture
def settings(home: Path) -> TunegraphSettings:
    return TunegraphSettings(home=str(home), config_path=str(TINY_CONFIG))


def write_example_shards(home: Path, shards: int = 4) -> list[Path]:
    from stages.example_corpus import stdlib_records, write_shards

    records, _ = stdlib_records(TEST_MODULES)
    return write_shards(records, home / "landing", shards)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def training_runs(home: Path, experiment: str = "tunegraph-tiny") -> list:
    """The experiment's training runs (not the baselines' score runs), oldest first."""
    from resources.tracking import MlflowTracking

    client = MlflowTracking(home=str(home)).client()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])  # fmt: skip
    return [r for r in runs if "tunegraph.asset" in r.data.tags]


def mlflow_statuses(home: Path, experiment: str = "tunegraph-tiny") -> list[str]:
    """Statuses of the experiment's training runs, oldest first."""
    return [r.info.status for r in training_runs(home, experiment)]


def launch(
    instance, settings, names: list[str], partition_key: str | None = None
) -> dg.ExecuteInProcessResult:  # noqa: ANN001
    """A run of exactly these assets and their checks: what the UI's "Materialize" launches."""
    from pipelines import definitions

    return dg.materialize(
        [*definitions.SOURCES, *definitions.ASSETS, *definitions.ASSET_CHECKS],
        selection=names,
        partition_key=partition_key,
        instance=instance,
        resources={**definitions.resources(settings.home, settings.config_path), "settings": settings},
        raise_on_error=False,
    )


# Eval passages planted in a training file: what the contamination gate exists to catch.
PASSAGE = (
    "the reference implementation walks the tree twice so that every node is visited in order before any "
    "callback sees a partially built result"
)
WHAT_TO_FIX = "remove or rewrite planted (planted.jsonl:1)"


def contaminated(home, tmp_path, decontamination: bool = False) -> TunegraphSettings:  # noqa: ANN001
    write_example_shards(home, shards=2)
    write_jsonl(home / "landing" / "planted.jsonl", [
        {"id": "planted", "instruction": "How does the walker work?", "output": f"In short: {PASSAGE}. That is all."},
    ])  # fmt: skip
    write_jsonl(
        tmp_path / "eval.jsonl", [{"instruction": "Describe the walker.", "output": PASSAGE.capitalize()}]
    )
    config = write_config(
        tmp_path / "cfg.yaml",
        data={"eval_files": ["eval.jsonl"], "decontamination": {"enabled": decontamination, "ngram": 13}},
    )
    return TunegraphSettings(home=str(home), config_path=str(config))


def sensor_tick(instance, settings):  # noqa: ANN001, ANN201
    """One evaluation of the landing sensor, its results applied to the instance as the daemon does."""
    from pipelines.definitions import defs

    sensor = defs.get_sensor_def("landing_sensor")
    with dg.build_sensor_context(
        instance=instance, resources={"settings": settings}, repository_def=defs.get_repository_def()
    ) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def unsynced(instance) -> dict[str, list[str]]:  # noqa: ANN001
    """What the UI marks stale or missing, with Dagster's own causes."""
    from pipelines.definitions import defs
    from pipelines.staleness import read_state

    partitions = instance.get_dynamic_partitions("landing_files")
    return read_state(instance, defs.resolve_asset_graph(), partitions).causes


ALL_ASSETS = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus", "tokenized_dataset",
              "base_model", "base_prompt_evaluation", "prompt_search", "fine_tuned_model",
              "fine_tuned_prompt_evaluation", "preference_pairs", "reward_model", "preference_model", "model_evaluation",
              "gguf_model"]  # fmt: skip


def materialisations(instance) -> dict[str, int]:  # noqa: ANN001
    return {a: len(instance.fetch_materializations(dg.AssetKey(a), limit=1000).records) for a in ALL_ASSETS}


def output(where: "dg.DagsterInstance | Path", asset: str, partition: str | None = None) -> Path:
    """The folder of an asset's current output: its latest materialisation Dagster recorded (in
    this instance, or in the instance of the state folder `where`)."""
    from resources.outputs import output_folder

    if isinstance(where, dg.DagsterInstance):
        folder = output_folder(where, asset, partition)
    else:
        with instance_at(where) as instance:
            folder = output_folder(instance, asset, partition)
    assert folder is not None, f"{asset} has not been materialised"
    return folder


@contextmanager
def instance_at(home: Path) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance of another state folder (dagster.yaml reads $TUNEGRAPH_HOME when opened)."""
    before = os.environ.get("TUNEGRAPH_HOME")
    os.environ["TUNEGRAPH_HOME"] = str(home)
    try:
        with dg.DagsterInstance.from_config(str(REPO_ROOT)) as instance:
            yield instance
    finally:
        if before is None:
            os.environ.pop("TUNEGRAPH_HOME")
        else:
            os.environ["TUNEGRAPH_HOME"] = before
