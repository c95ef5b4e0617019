"""Where Dagster keeps its instance: under the state folder, whoever starts it.

`dagster.yaml` at the repository root names these classes, so bare `dagster dev`, `dagster asset
materialize`, `dg` and `tunegraph` all open the same instance, `$TUNEGRAPH_HOME/dagster`
(default `./data/dagster`, like `./data` for tunegraph itself), with nothing exported. A
`{env: VAR}` in dagster.yaml could not do that: Dagster refuses the file when VAR is unset.
With `TUNEGRAPH_DAGSTER_PG_URL` set, the instance storage is Postgres instead (README "Postgres").

Each class is a factory Dagster calls with the (empty) config from dagster.yaml.
"""

import os
from pathlib import Path
from typing import Any

from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.root import LocalArtifactStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData

from resources.settings import default_home

POSTGRES_URL = "TUNEGRAPH_DAGSTER_PG_URL"


def dagster_dir() -> Path:
    return default_home() / "dagster"


class TunegraphStorage(DagsterSqliteStorage):
    """Runs, event log and schedules: SQLite under the state folder, or Postgres by URL.

    A subclass only because Dagster checks the class it is given is a storage; the objects made
    are Dagster's own SQLite or Postgres storage.
    """

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]) -> Any:  # noqa: ANN401
        url = os.environ.get(POSTGRES_URL)
        if not url:
            return DagsterSqliteStorage.from_local(str(dagster_dir()), inst_data=inst_data)
        try:
            from dagster_postgres import DagsterPostgresStorage
        except ImportError as err:
            raise RuntimeError(
                f"{POSTGRES_URL} is set but dagster-postgres is not installed: pip install -e '.[postgres]'"
            ) from err
        return DagsterPostgresStorage(postgres_url=url, inst_data=inst_data)


class TunegraphArtifactStorage(LocalArtifactStorage):
    """Dagster's local artifacts (schedules, files) under the state folder."""

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict
    ) -> LocalArtifactStorage:
        return cls(str(dagster_dir()), inst_data=inst_data)


class TunegraphComputeLogs(LocalComputeLogManager):
    """Each step's captured stdout and stderr, under the state folder."""

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict
    ) -> LocalComputeLogManager:
        return cls(str(dagster_dir() / "logs"), inst_data=inst_data)
