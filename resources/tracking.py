"""MLflow tracking and the model registry, through one resource (not dagster-mlflow, which ends runs early).

Default store: SQLite under `$TUNEGRAPH_HOME/mlflow` (MLflow 3 refuses a plain file store), with
artifacts next to it rather than in `./mlruns`. `MLFLOW_TRACKING_URI` (a server, Postgres) wins.
Several processes (two runs, the training subprocess, the MLflow UI) may use the SQLite store at
once: `_create_sqlite_store` creates its tables first, under a file lock.
"""

import functools
import os
from pathlib import Path

import dagster as dg
import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import Field

from stages.processes import owner_alive

EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


class MlflowTracking(dg.ConfigurableResource):
    """The MLflow tracking server / registry that records every fine-tune."""

    home: str = Field(description="State folder; the default SQLite store and artifacts live under it.")
    tracking_uri: str | None = Field(
        default=None, description="Explicit tracking URI; default $MLFLOW_TRACKING_URI or SQLite under home."
    )

    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return _create_sqlite_store(Path(self.home) / "mlflow" / "mlflow.db")

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())

    def activate(self) -> None:
        """Point the fluent `mlflow.*` API (used by mlflow.transformers) at this store."""
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri())
        # set_tracking_uri also exports MLFLOW_TRACKING_URI, which `uri()` reads first: left set, every
        # later MlflowTracking in this process (another state folder's) and every process it starts
        # would use this store. The environment stays the user's.
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        mlflow.set_registry_uri(self.uri())

    def experiment_id(self, name: str) -> str:
        """The experiment, created under the state folder and marked as model development."""
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = Path(self.home) / "mlflow" / "artifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            try:
                # Tagged as it is created: two processes tagging a new experiment afterwards both
                # inserted the tag and one failed (UNIQUE constraint, seen on a clean-clone make test).
                client.create_experiment(name, artifact_location=artifacts.as_uri(),
                                         tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})  # fmt: skip
            except MlflowException as err:
                # Another process created it between our lookup and create (two runs starting at once).
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = client.get_experiment_by_name(name)
        if experiment.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:
            # MLflow 3 opens an experiment without this tag on its GenAI (traces) overview.
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
        return experiment.experiment_id

    def ui_url(self, run_id: str | None = None, experiment_id: str | None = None) -> str:
        """A link into `tunegraph ui`'s MLflow, on its model-training pages (MLflow 3.17 picks the
        GenAI pages unless the link asks: the experiment's kind tag alone does not switch them)."""
        base = "http://127.0.0.1:5000"
        if experiment_id:
            run = f"/{run_id}" if run_id else ""
            return f"{base}/#/experiments/{experiment_id}/runs{run}?workflowType=machine_learning"
        return base

    def model_url(self, name: str, version: str) -> str:
        """The registered version's page in `tunegraph ui`'s MLflow."""
        return f"http://127.0.0.1:5000/#/models/{name}/versions/{version}"

    def end_orphaned_runs(self, experiment_id: str) -> list[str]:
        """Mark KILLED the RUNNING runs whose process is gone; return their ids.

        A process killed with SIGKILL (or a machine that lost power) cannot end its own run;
        the next materialisation does. Runs record host, pid and the process's start time in tags
        (a pid reused by a later process is not the owner); a run from another host is left
        alone, since its process cannot be checked from here.
        """
        client, ended = self.client(), []
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if owner_alive(
                tags.get("tunegraph.host"), tags.get("tunegraph.pid"), tags.get("tunegraph.pid_started")
            ):
                continue
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
        return ended

    def model_dir(self, version: ModelVersion, cache: Path) -> Path:
        """A registered version as a local model folder: where it was published, or else
        downloaded from MLflow once into `cache` (the published folder may have been pruned)."""
        local = Path(version.tags.get("tunegraph.model_dir", ""))
        if (local / "config.json").is_file():
            return local
        if not (cache / "config.json").is_file():
            self.activate()
            uri = f"models:/{version.name}/{version.version}"
            parts = mlflow.transformers.load_model(uri, return_type="components")
            parts["model"].save_pretrained(cache)
            parts["tokenizer"].save_pretrained(cache)
        return cache

    def resolve_version(
        self, ref: str, default_name: str, asked_by: str = "training.warm_start_from"
    ) -> ModelVersion:
        """A registered model version from '3', 'champion', 'name/3', 'name@alias' or 'models:/...';
        `asked_by` (the setting or option that named it) opens the error message."""
        body = ref.removeprefix("models:/").lstrip("@")
        name, sep, rest = body.rpartition("@") if "@" in body else body.rpartition("/")
        name = name or default_name
        client = self.client()
        try:
            if "@" in body or not rest.isdigit():
                return client.get_model_version_by_alias(name, rest)
            return client.get_model_version(name, rest)
        except MlflowException as err:
            raise ValueError(
                f"{asked_by} {ref!r}: no such registered model version in {self.uri()} "
                f"({err.message.splitlines()[0]}); use a version number, an alias such as 'champion', or 'name@alias'"
            ) from None


@functools.cache
def _create_sqlite_store(db: Path) -> str:
    """Create the SQLite store's tables once, under a file lock, and return its URI.

    MLflow 3.17 migrates a fresh SQLite store on first open without any lock, so processes opening
    it at once all migrate and all but one crash (sqlite3.OperationalError "duplicate column name:
    step", "table _alembic_tmp_runs already exists", alembic "Online migration expected to match one
    row"): measured here, 16 of 16 trials with 2 or 3 processes. Once the tables exist, MLflow's own
    `PRAGMA busy_timeout = 20000` absorbs the lock waits: 2-4 processes logging 300-1000 metrics each
    at once, with readers alongside, gave 0 errors in 5 trials, so WAL or a longer timeout is not needed.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db}"
    with FileLock(db.with_name(db.name + ".lock")):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # opening runs the migrations
    return uri
