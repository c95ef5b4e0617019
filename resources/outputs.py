"""Asset outputs: each written to a folder of its own run, read downstream only through Dagster's record.

"Which output is current?" has one owner, Dagster. An asset writes into a fresh folder named
after its run (`new_output`) and records that folder as the `path` metadata of the
materialisation it returns (`recorded`). Downstream assets take their inputs as parameters and
`RecordedOutputs`, the IO manager, hands each the folder of the upstream asset's (partition's)
latest recorded materialisation, and only if every blocking check on it and on its ancestors
passed on their latest materialisations. There is no pointer file to move: a run killed before
Dagster recorded its output leaves a folder nobody reads, and of two runs of one asset at once,
downstream reads the one Dagster recorded last.

Old folders are pruned when a new one is started: the new one and what the `keep - 1` latest
recorded materialisations point at stay, and so does the folder of any run still in progress.
"""

import json
import re
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.gates import blocked_message, gate_states
from resources.settings import Paths

READS = "reads the recorded materialisations of"  # the log line; storage ids by partition follow
KEEP = 3  # recorded versions kept per asset (partition): the current one and two to compare or roll back to


@dataclass(frozen=True)
class Recorded:
    """The latest materialisation Dagster recorded for an asset (partition), and its folder."""

    storage_id: int
    run_id: str
    folder: Path | None  # None: recorded without one (by an older tunegraph, or reported by hand)


def recorded(folder: Path) -> dict[str, dg.MetadataValue]:
    """The materialisation metadata that makes `folder` the asset's output (what downstream reads)."""
    return {"path": dg.MetadataValue.path(str(folder))}


def new_output(context: dg.AssetExecutionContext, paths: Paths, keep: int = KEEP) -> Path:
    """A fresh folder for this run's output of the asset (partition), after pruning old ones."""
    partition = context.partition_key if context.has_partition_key and _partitioned(context) else None
    root = paths.asset_root(context.asset_key.to_user_string(), partition)
    root.mkdir(parents=True, exist_ok=True)
    # The new output will be one of the `keep`: keep - 1 recorded ones stay beside it.
    prune(context.instance, context.asset_key, partition, root, keep - 1)
    folder = root / context.run_id
    # Only a retried step of this same run wrote here before; Dagster never recorded it.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _partitioned(context: dg.AssetExecutionContext) -> bool:
    return context.assets_def.partitions_def is not None


def prune(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, root: Path, keep: int
) -> list[Path]:
    """Remove the folders under `root` that neither the latest `keep` materialisations nor a run
    still in progress may need. Returns what was removed."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=keep
    ).records
    needed = {_folder(r.asset_materialization) for r in records if r.asset_materialization}
    removed = []
    for child in root.iterdir():
        if child in needed or not _is_output(child.name):
            continue
        run = instance.get_run_by_id(child.name)
        if run is not None and not run.is_finished:
            continue  # another run is writing it now
        shutil.rmtree(child) if child.is_dir() else child.unlink()
        removed.append(child)
    return removed


RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# What tunegraph wrote before outputs were Dagster's to name: version folders and their pointer.
OLD_LAYOUT = re.compile(r"^(\.tmp-)?v-[0-9a-f]{12}$|^\.?LATEST(\.tmp)?$")


def _is_output(name: str) -> bool:
    """A run's output folder (or the old layout's): not `partitions/` or a nested partition's folder."""
    return bool(RUN_ID.match(name) or OLD_LAYOUT.match(name))


def _folder(materialization: dg.AssetMaterialization) -> Path | None:
    path = materialization.metadata.get("path")
    return Path(str(path.value)) if path is not None else None


def latest_recorded(
    instance: dg.DagsterInstance, asset: str | dg.AssetKey, partitions: list[str] | None = None
) -> dict[str | None, Recorded]:
    """The latest recorded output of an asset, by partition (None: unpartitioned); an asset or
    partition never materialised is absent. Two queries, however many partitions."""
    key = dg.AssetKey.from_coercible(asset)
    if partitions is None:
        found = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    else:
        latest = instance.get_latest_storage_id_by_partition(
            key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partitions)
        )
        found = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())), limit=len(latest)
            ).records
            if latest
            else []
        )
    by_partition: dict[str | None, Recorded] = {}
    for record in found:
        materialization = record.asset_materialization
        folder = _folder(materialization) if materialization else None
        by_partition[record.partition_key if partitions is not None else None] = Recorded(
            record.storage_id, record.run_id, folder
        )
    return by_partition


def output_folder(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> Path | None:
    """The folder of an asset's latest recorded output, or None if it was never materialised.

    For readers outside a run (`tunegraph report`, `push`, tests): what the UI shows as current.
    """
    found = latest_recorded(instance, asset, [partition] if partition else None)
    entry = found.get(partition)
    return entry.folder if entry else None


class RecordedOutputs(dg.IOManager):
    """Hands an asset the folders of its inputs as Dagster recorded them, behind the blocking checks.

    `gates` names, for each asset, the blocking checks on it and on its ancestors (built from the
    asset graph in `pipelines/definitions.py`): a run holds only the checks it selected, so the
    graph is given here. An input annotated `dict[str, Path]` gets one folder per upstream
    partition; a `Path` input, the one folder.
    """

    def __init__(self, gates: dict[str, list[dg.AssetCheckKey]]):
        self.gates = gates

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        # Assets return MaterializeResult (Dagster then calls no IO manager): they write their own
        # folder and record it. Anything else is a mistake in an asset.
        raise TypeError(
            f"{context.asset_key.to_user_string()} returned {type(obj).__name__}: return a "
            "MaterializeResult whose metadata records its folder (resources/outputs.py `recorded`)"
        )

    def load_input(self, context: dg.InputContext) -> Path | dict[str, Path]:
        key = context.asset_key
        name = key.to_user_string()
        many = typing.get_origin(context.dagster_type.typing_type) is dict
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        found = latest_recorded(context.instance, key, partitions)
        self._require_gates(context, found)  # first: a failed gate upstream says more than a missing input
        missing = [p for p in (partitions or [None]) if p not in found]
        if missing:
            what = ", ".join(f"{name}[{p}]" if p else name for p in missing)
            raise dg.Failure(
                f"{context.op_def.name} may not run: {what} has not been materialised; "
                "run `tunegraph run` (or Materialize it in the UI)",
                allow_retries=False,
            )
        for p, entry in found.items():
            if entry.folder is None:
                raise dg.Failure(
                    f"{context.op_def.name} may not run: {name}{f'[{p}]' if p else ''} was recorded without an "
                    "output folder (by an older tunegraph, or reported by hand): materialise it again",
                    allow_retries=False,
                )
            if not entry.folder.is_dir():
                raise dg.Failure(
                    f"{context.op_def.name} may not run: the recorded output of {name} ({entry.folder}) is gone "
                    "from disk: materialise it again",
                    allow_retries=False,
                )
        # Which recorded materialisations this step reads, in its log (the fault test checks each
        # one against Dagster's records). Not input metadata: that records an observation upstream.
        context.log.info(f"{READS} {name} {json.dumps({str(p): e.storage_id for p, e in found.items()})}")
        if many:
            return {str(p): entry.folder for p, entry in found.items()}
        [entry] = found.values()
        return entry.folder

    def _require_gates(self, context: dg.InputContext, found: dict[str | None, Recorded]) -> None:
        asset = context.op_def.name  # the asset (or check) that asked for this input
        failed = [g for g in gate_states(context.instance, self.gates.get(context.asset_key.to_user_string(), [])).values()
                  if not g.passed]  # fmt: skip
        if failed:
            raise dg.Failure(
                description=blocked_message(asset, failed),
                metadata={g.name: g.detail for g in failed},
                allow_retries=False,  # the data must change first; a retry would fail the same way
            )
        # The gates judged the latest materialisation: the one handed over must still be it.
        if (
            None in found
            and _latest_storage_id(context.instance, context.asset_key) != found[None].storage_id
        ):
            raise dg.Failure(
                f"{asset} may not run: {context.asset_key.to_user_string()} was materialised again while this "
                "run read it; materialise again",
            )


def _latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int | None:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    return records[0].storage_id if records else None
