"""May it run? The blocking asset checks answer, on every path: `tunegraph run`, a UI launch,
automation and the schedule.

Dagster enforces a blocking check only inside the run that evaluated it, so a later run (or a
UI "Materialize" of one downstream asset) would read data its gate rejected. Inputs are handed
over by the IO manager (`resources/outputs.py`), which therefore refuses an input unless each
blocking check on it and on its ancestors passed on that asset's latest materialisation. A check
that failed, or never ran on the latest materialisation, stops the asset, and the check's
metadata (its `fix` entry first) says what to do.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

FINISHED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
HISTORY = 10  # evaluations looked back through for the one that judged the latest materialisation
SHOWN_METADATA = 4  # numbers and short texts from a failed check's metadata, after its `fix`


@dataclass(frozen=True)
class Gate:
    """The state of one blocking check on its asset's latest materialisation."""

    check: dg.AssetCheckKey
    passed: bool
    detail: str  # why it does not pass, in words a user can act on

    @property
    def name(self) -> str:
        return f"{self.check.asset_key.to_user_string()}:{self.check.name}"

    @property
    def not_run(self) -> bool:
        """It did not fail: it has not been evaluated on the latest materialisation."""
        return not self.passed and self.detail.startswith("has not run")


def blocking_checks(asset_graph: BaseAssetGraph, assets: Iterable[dg.AssetKey]) -> list[dg.AssetCheckKey]:
    keys = set(assets)
    return sorted(
        (node.key for node in asset_graph.asset_check_nodes if node.blocking and node.key.asset_key in keys),
        key=lambda k: k.to_user_string(),
    )


def gate_states(instance: dg.DagsterInstance, checks: list[dg.AssetCheckKey]) -> dict[dg.AssetCheckKey, Gate]:
    """Each check's state on the latest materialisation of its asset (two queries, more only when
    another run planned a check after that materialisation was judged)."""
    if not checks:
        return {}
    executions = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_record
        for r in instance.get_asset_records(list({c.asset_key for c in checks}))
        if r.asset_entry.last_materialization_record
    }
    states = {check: _state(check, executions.get(check), latest.get(check.asset_key)) for check in checks}
    for check, gate in states.items():
        if not (gate.not_run and check.asset_key in latest):
            continue
        materialization = latest[check.asset_key]
        # Another run may have planned the check since (its latest execution): look further back
        # for the evaluation that judged this materialisation.
        history = instance.event_log_storage.get_asset_check_execution_history(
            check, limit=HISTORY, status=FINISHED
        )
        judged = next((e for e in history if _targets(e, materialization)), None)
        if judged is not None:
            states[check] = _state(check, judged, materialization)
            continue
        run = instance.get_run_by_id(materialization.event_log_entry.run_id)
        if run is not None and not run.is_finished:  # a run is checking it right now
            states[check] = Gate(check, False, f"has not run yet on the latest materialisation of "
                                 f"{check.asset_key.to_user_string()}: run {run.run_id} is materialising it "
                                 "now; materialise again once it has finished")  # fmt: skip
    return states


def _state(check: dg.AssetCheckKey, execution, materialization) -> Gate:  # noqa: ANN001
    asset = check.asset_key.to_user_string()
    if materialization is None:
        return Gate(check, False, f"has not run: {asset} has not been materialised")
    finished = execution is not None and execution.status in FINISHED
    if not finished or not _targets(execution, materialization):
        return Gate(
            check,
            False,
            f"has not run on the latest materialisation of {asset}: materialise it with its checks",
        )
    evaluation = execution.evaluation
    if evaluation.passed or evaluation.severity == dg.AssetCheckSeverity.WARN:  # WARN never blocks
        return Gate(check, True, "passed")
    return Gate(check, False, f"failed: {summary(evaluation.metadata)}")


def _targets(execution, materialization) -> bool:  # noqa: ANN001
    """Did this finished evaluation judge this materialisation? The rule of Dagster's own UI
    (AssetCheckExecutionRecord.targets_latest_materialization): the same run; else the
    materialisation it names; else (a check evaluated in a step that recorded none) one before it."""
    if materialization.event_log_entry.run_id == execution.run_id:
        return True
    target = execution.evaluation.target_materialization_data
    if target is None:
        return materialization.timestamp < execution.create_timestamp
    return target.storage_id == materialization.storage_id


def summary(metadata: dict[str, dg.MetadataValue]) -> str:
    """What a failed check says to do (its `fix` entry), then its first few numbers."""
    fix = metadata.get("fix")
    shown = [
        f"{key}={value.value}"
        for key, value in metadata.items()
        if key != "fix" and isinstance(value.value, int | float | bool | str) and len(str(value.value)) <= 80
    ][:SHOWN_METADATA]
    return "; ".join([*([str(fix.value)] if fix else []), ", ".join(shown)]) or "see its metadata"


def gates_through(asset_graph: BaseAssetGraph) -> dict[str, list[dg.AssetCheckKey]]:
    """For each asset: the blocking checks on it and on its ancestors, which must pass before
    anything reads its output (given to the IO manager: a run's own graph holds only the checks
    it selected)."""
    return {
        key.to_user_string(): checks
        for key in asset_graph.materializable_asset_keys
        if (checks := blocking_checks(asset_graph, {key, *asset_graph.get_ancestor_asset_keys(key)}))
    }


def blocked_message(asset: str, gates: list[Gate]) -> str:
    reasons = "; ".join(f"{g.name} {g.detail}" for g in gates)
    return f"{asset} may not run: {reasons}"
