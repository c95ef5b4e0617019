"""Which engine a data asset's per-record work runs on (data.engine), with the Ray work logged in its step.

Not a Dagster resource around `ray.init`, and not dagster-ray's: the engine is a data setting of
the pipeline YAML (versioned, overridable per run like any key), Ray is connected only by the
steps that map records, and only when they first do (a resource would connect every step,
training included), and stage code stays Dagster-free. dagster-ray's `RayResource` connects in
client mode (`ray://`) and its value is cluster lifecycle on KubeRay, which `data.ray_address`
leaves to whoever runs the cluster.
"""

import importlib.util

import dagster as dg

from stages.config import PipelineConfig
from stages.workers import Engine


def data_engine(context: dg.AssetExecutionContext, cfg: PipelineConfig) -> Engine:
    """The engine of data.engine, logging to this step: Ray's connection, tasks and retries."""
    data = cfg.data
    if data.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise dg.Failure(
            "data.engine: ray needs Ray in this environment: pip install 'tunegraph[ray]' "
            "(or `make setup`), or set data.engine: local"
        )
    return Engine(data.engine, data.ray_address, log=context.log.info)
