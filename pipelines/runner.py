"""`tunegraph run`: bring the graph up to date headless, in the same Dagster instance the UI reads.

A thin loop over what Dagster already knows; it keeps no state of its own:
1. record what changed in the sources (landing files, preference files, the pipeline YAML) as
   observations, with the landing sensor's own function (`assets.sources.source_changes`);
2. ask Dagster what is stale or missing and which blocking checks did not pass, and plan the
   run from that (`stages.plan.plan_run`, a pure function);
3. materialise the plan: one run per landing file to re-read, the last of them together with
   the cross-file assets. Assets behind a failed gate are not launched; the run says why.
"""

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from assets import sources
from assets.gates import summary
from pipelines import definitions
from pipelines.report import user_error
from pipelines.staleness import read_state
from resources.settings import TunegraphSettings
from stages.plan import Plan, plan_run, run_order
from stages.processes import host, owner_alive, started
from stages.readers import FORMATS_BY_SUFFIX

# Step progress and our own log lines, without Dagster's per-event DEBUG chatter.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
UNFINISHED = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")


class PipelineError(RuntimeError):
    """The run cannot proceed; the message says what to do."""


class Runner:
    def __init__(
        self,
        settings: TunegraphSettings,
        instance: dg.DagsterInstance,
        log: Callable[[str], None] = print,
    ):
        self.settings, self.instance, self.log = settings, instance, log
        self.paths = settings.paths()
        self.resources = {**definitions.resources(settings.home, settings.config_path), "settings": settings}
        self.asset_graph = definitions.defs.resolve_asset_graph()
        # Who runs it: lets the next run tell a killed run from one still going (the start time
        # tells this process from a later one that got the same pid).
        self.tags = {"tunegraph/source": "cli", "tunegraph/host": host(), "tunegraph/pid": str(os.getpid()),
                     "tunegraph/pid_started": str(started())}  # fmt: skip

    def run(self, select: list[str] | None = None, full: bool = False) -> dict[str, Any]:
        """Materialise what is stale (`select`: only those assets; `full`: whether stale or not)."""
        started = time.time()
        _freeze_import_heap()
        self.release_dead_runs()
        changes = sources.source_changes(self.instance, self.settings)
        if not changes.files:
            raise PipelineError(
                f"no landing files in {self.paths.landing}: run `tunegraph example-data` "
                f"or copy {', '.join(sorted(FORMATS_BY_SUFFIX))} files there"
            )
        sources.record(self.instance, changes)
        for key in changes.removed_files:
            self.log(f"landing file removed: {key} (its records leave the training set)")
        partitions = self.instance.get_dynamic_partitions(definitions.landing_files.name)
        state = read_state(self.instance, self.asset_graph, partitions)
        plan = plan_run(state.graph, state.stale, partitions, state.failed_gates,
                        set(select) if select is not None else None, full, state.variant_keys)  # fmt: skip
        self.graph = state.graph
        record: dict[str, Any] = {
            "status": "running",
            "started": started,
            "partitions_total": len(changes.files),
            "partitions_removed": changes.removed_files,
            "partitions_processed": list(plan.partitions),
            "prompt_partitions": plan.variants,  # by-variant asset -> the variants scored again
            "stale": {name: why for name, why in state.causes.items()},
            "blocked": {
                asset: [f"{g.name} {g.detail}" for g in gates] for asset, gates in plan.blocked.items()
            },
        }
        if plan.blocked:
            self.log(f"held back by failed gates: {', '.join(plan.blocked)}")
        return self._execute(plan, record)

    def _execute(self, plan: Plan, record: dict[str, Any]) -> dict[str, Any]:
        blocked = [f"blocking check {g.name} {g.detail}" for g in _unique(plan)]
        if plan.empty:
            if not blocked:
                self.log("everything is up to date")
            return self._finish(record, "blocked" if blocked else "up_to_date", [], errors=blocked)
        run_ids, failures = [], []
        keys, carried = list(plan.partitions), None
        for i, key in enumerate(keys):
            if plan.assets and not failures and i == len(keys) - 1:
                # The last landing file shares its run with the cross-file assets: one run's
                # start-up and bookkeeping fewer (a sixth of a one-record fix's wall time).
                carried = key
                break
            self.log(f"reading and cleaning {key}")
            result = self._materialize(plan.partitions[key], partition_key=key)
            run_ids.append(result.run_id)
            if not result.success:
                failures.append(_first_error(result))
        if failures:  # the cross-file assets would read a file's previous version: stop here
            return self._finish(record, "failed", run_ids, errors=failures + blocked)
        runs = run_order(self.graph, plan)
        if carried:  # it joins the first run of unpartitioned assets, or runs alone
            first = next((i for i, (_, key) in enumerate(runs) if key is None), None)
            if first is None:
                runs.insert(0, ([], None))
                first = 0
            runs[first] = ([*plan.partitions[carried], *runs[first][0]], carried)
        record["failed_checks"] = []
        for names, key in runs:
            if key == carried and carried:
                self.log(f"reading and cleaning {carried}")
            assets = (
                [a for a in names if a not in plan.partitions.get(carried, [])] if key == carried else names
            )
            if assets:
                self.log(
                    f"materialising {', '.join(assets)}" + (f" [{key}]" if key and key != carried else "")
                )
            result = self._materialize(names, partition_key=key)
            run_ids.append(result.run_id)
            record["failed_checks"] += sorted(
                f"{c.asset_key.to_user_string()}:{c.check_name}"
                for c in result.get_asset_check_evaluations()
                if not c.passed
            )
            if not result.success:
                return self._finish(record, "failed", run_ids, errors=[_first_error(result), *blocked])
        return self._finish(record, "blocked" if blocked else "success", run_ids, errors=blocked)

    def release_dead_runs(self) -> list[str]:
        """Fail the runs of `tunegraph run` processes that were killed, and free their pool slots.

        Without a daemon nothing else notices a SIGKILLed run: it would stay STARTED and keep its
        `gpu` slot, so the next fine-tune would wait for it forever.
        """
        released = []
        unfinished = dg.RunsFilter(statuses=[s for s in dg.DagsterRunStatus if s.value in UNFINISHED],
                                   tags={"tunegraph/source": "cli"})  # fmt: skip
        for run in self.instance.get_runs(filters=unfinished):
            if owner_alive(run.tags.get("tunegraph/host"), run.tags.get("tunegraph/pid"),
                           run.tags.get("tunegraph/pid_started")):  # fmt: skip
                continue
            self.instance.report_run_failed(run, f"its process ({run.tags['tunegraph/pid']}) was killed")
            self.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            self.log(
                f"dagster run {run.run_id} was left unfinished by a killed process: marked failed, slots freed"
            )
            released.append(run.run_id)
        return released

    def _materialize(self, names: list[str], partition_key: str | None) -> dg.ExecuteInProcessResult:
        """One Dagster run of the named assets and their checks, in this process."""
        return dg.materialize(
            [*definitions.SOURCES, *definitions.ASSETS, *definitions.ASSET_CHECKS],
            selection=dg.AssetSelection.assets(*names),
            instance=self.instance,
            resources=self.resources,
            partition_key=partition_key,
            raise_on_error=False,
            run_config=RUN_CONFIG,
            tags=self.tags,
        )

    def _finish(
        self, record: dict[str, Any], status: str, run_ids: list[str], errors: list[str] | None = None
    ) -> dict:
        record.update(
            status=status,
            run_id=run_ids[-1] if run_ids else None,
            dagster_run_ids=run_ids,
            errors=errors or [],
            wall_s=round(time.time() - record["started"], 1),
        )
        return record  # for the caller; `tunegraph report` reads the runs from the instance


def _unique(plan: Plan) -> list:  # noqa: ANN401
    """The failed gates behind the blocked assets, each once."""
    return list({g.name: g for gates in plan.blocked.values() for g in gates}.values())


_frozen = False


def _freeze_import_heap() -> None:
    """Move what is alive now (Dagster, torch, transformers: ~1M objects) out of the collector's view.

    Those objects live as long as the process; without this every full collection re-scans them,
    which took a sixth of a one-record fix's rerun. Once per process, so a long-lived caller (the
    tests) never freezes the garbage of its own earlier runs.
    """
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    """The user-facing cause of a failed run, on one line."""
    failed = [
        f"{c.asset_key.to_user_string()}:{c.check_name} failed: {summary(c.metadata)}"
        for c in result.get_asset_check_evaluations()
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]
    if failed:
        return f"blocking check {'; '.join(failed)} (its metadata in the Dagster UI shows the records)"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {user_error(event.step_failure_data.error)}"
    return "the run did not succeed"
