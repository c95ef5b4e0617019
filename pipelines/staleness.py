"""What Dagster knows about the graph: stale or missing assets (with causes) and gate states.

Staleness is read with Dagster's own resolver, the one behind the UI's "Unsynced" labels, so
`tunegraph run`, the schedule and the UI agree by construction. It is an internal Dagster API
(pinned by `dagster<1.14` in pyproject.toml).
"""

import datetime
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

from assets.gates import blocking_checks, gate_states
from assets.partitions import landing_files
from stages.plan import Failed, Graph


@dataclass
class GraphState:
    graph: Graph
    stale: dict[str, set[str | None]]  # asset -> stale or missing partitions (None: unpartitioned)
    causes: dict[str, list[str]]  # "asset[partition]" -> why Dagster calls it stale
    failed_gates: dict[str, list[Failed]]
    variant_keys: dict[str, list[str]] = field(default_factory=dict)  # by-variant asset -> its partitions


def asset_graph_names(asset_graph: BaseAssetGraph) -> Graph:
    """The materialisable assets by name (sources are inputs, not steps)."""
    nodes = [asset_graph.get(k) for k in asset_graph.toposorted_asset_keys]
    names = {n.key for n in nodes if n.is_materializable}
    partitioned = {
        n.key.to_user_string(): n.partitions_def.name for n in nodes if n.key in names and n.is_partitioned
    }
    return Graph(
        order=[n.key.to_user_string() for n in nodes if n.key in names],
        parents={
            n.key.to_user_string(): {p.to_user_string() for p in n.parent_keys if p in names}
            for n in nodes
            if n.key in names
        },  # fmt: skip
        partitioned={a for a, p in partitioned.items() if p == landing_files.name},
        by_variant={a for a, p in partitioned.items() if p != landing_files.name},
    )


def read_state(
    instance: dg.DagsterInstance, asset_graph: BaseAssetGraph, partitions: list[str]
) -> GraphState:
    graph = asset_graph_names(asset_graph)
    now = datetime.datetime.now(datetime.UTC)
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=now, last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)
    # One query for every asset's latest records instead of one each (SQLite opens a connection per query).
    resolver.instance_queryer.prefetch_asset_records(asset_graph.get_all_asset_keys())
    stale: dict[str, set[str | None]] = {}
    causes: dict[str, list[str]] = {}
    variant_keys = {
        name: instance.get_dynamic_partitions(asset_graph.get(dg.AssetKey(name)).partitions_def.name)
        for name in graph.by_variant
    }
    for name in graph.order:
        key = dg.AssetKey.from_user_string(name)
        keys = partitions if name in graph.partitioned else variant_keys.get(name, [None])
        for partition in keys:
            status = resolver.get_status(key, partition)
            if status == StaleStatus.FRESH:
                continue
            stale.setdefault(name, set()).add(partition)
            label = f"{name}[{partition}]" if partition else name
            causes[label] = (
                ["never materialised"]
                if status == StaleStatus.MISSING
                else [f"{_label(c.key)} {c.reason}" for c in resolver.get_stale_root_causes(key, partition)]
            )
    failed: dict[str, list[Failed]] = {}
    for gate in gate_states(
        instance, blocking_checks(asset_graph, asset_graph.materializable_asset_keys)
    ).values():
        if not gate.passed:
            failed.setdefault(gate.check.asset_key.to_user_string(), []).append(
                Failed(gate.name, gate.detail, gate.not_run)
            )
    return GraphState(graph, stale, causes, failed, variant_keys)


def _label(key) -> str:  # noqa: ANN001 (AssetKeyPartitionKey)
    name = key.asset_key.to_user_string()
    return f"{name}[{key.partition_key}]" if key.partition_key else name
