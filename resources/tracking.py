"""MLflow tracking and the model registry, through one resource (not dagster-mlflow, which ends runs early).

Default store: SQLite under `$TUNEGRAPH_HOME/mlflow` (MLflow 3 refuses a plain file store), with
artifacts next to it rather than in `./mlruns`. `MLFLOW_TRACKING_URI` (a server, Postgres) wins.
"""

import os
from pathlib import Path

import dagster as dg
import mlflow
from mlflow import MlflowClient
from pydantic import Field


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
        db = Path(self.home) / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())

    def activate(self) -> None:
        """Point the fluent `mlflow.*` API (used by mlflow.transformers) at this store."""
        mlflow.set_tracking_uri(self.uri())
        mlflow.set_registry_uri(self.uri())

    def experiment_id(self, name: str) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = Path(self.home) / "mlflow" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        return client.create_experiment(name, artifact_location=artifacts.as_uri())

    def ui_url(self, run_id: str | None = None, experiment_id: str | None = None) -> str:
        base = "http://127.0.0.1:5000"
        if run_id and experiment_id:
            return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        return base
