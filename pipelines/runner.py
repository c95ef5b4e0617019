"""Bring the graph up to date headless, in the same Dagster instance the UI reads.

1. Landing files become dynamic partitions (new ones added, deleted ones removed).
2. Partitions whose file content (or code/config) changed are read and cleaned, one run each.
3. Global assets run when their fingerprint changed: a hash of their code version, the config
   sections they read, and the fingerprints of their upstream assets (a Merkle chain rooted at
   the landing files' content hashes). `--full` runs everything.
"""

import gc
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.metadata import file_hash
from assets.partitions import landing_files
from pipelines import definitions
from resources.settings import TunegraphSettings
from stages.processes import host, owner_alive
from stages.readers import FORMATS_BY_SUFFIX
from stages.tables import read_json, write_json

PARTITIONED = [a.key.to_user_string() for a in definitions.PARTITIONED_ASSETS]

# The config sections each asset reads; a change to one of them makes the asset stale.
CONFIG_SECTIONS = {
    "raw_corpus": ("corpus",),
    "clean_corpus": ("corpus", "data.cleaning"),
    "deduplicated_corpus": ("data",),
    "augmented_corpus": ("data",),
    "base_model": ("model",),
    "tokenized_dataset": ("data", "model"),
    "fine_tuned_model": ("training", "tracking"),
    "preference_pairs": ("preference", "data", "evaluation"),
    "preference_model": ("preference", "training", "tracking"),
    "model_evaluation": ("evaluation", "tracking"),
}


# Step progress and our own log lines, without Dagster's per-event DEBUG chatter.
UNFINISHED = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")

RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


class PipelineError(RuntimeError):
    """The run cannot proceed; the message says what to do."""


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Runner:
    def __init__(
        self,
        settings: TunegraphSettings,
        instance: dg.DagsterInstance,
        log: Callable[[str], None] = print,
    ):
        self.settings, self.instance, self.log = settings, instance, log
        self.paths = settings.paths()
        self.config = settings.config()
        self.resources = definitions.resources(settings.home, settings.config_path)
        self.resources["settings"] = settings
        self.state_file = self.paths.runs / "fingerprints.json"
        # Who runs it: lets the next run tell a killed run from one still going.
        self.tags = {"tunegraph/source": "cli", "tunegraph/host": host(), "tunegraph/pid": str(os.getpid())}

    def _config_hash(self, asset: str) -> str:
        return self.config.section_hash(*CONFIG_SECTIONS[asset])

    def _code_version(self, asset: str) -> str:
        node = next(a for a in definitions.ASSETS if a.key.to_user_string() == asset)
        return node.code_versions_by_key[node.key] or ""

    def sync_partitions(self) -> tuple[list[str], list[str]]:
        """(current landing keys, keys whose file was deleted since the last sync)."""
        keys = self.paths.landing_keys(self.config.corpus.format)
        if not keys:
            raise PipelineError(
                f"no landing files in {self.paths.landing}: run `tunegraph example-data` "
                f"or copy {', '.join(sorted(FORMATS_BY_SUFFIX))} files there"
            )
        known = set(self.instance.get_dynamic_partitions(landing_files.name))
        new = [k for k in keys if k not in known]
        gone = sorted(known - set(keys))
        if new:
            self.instance.add_dynamic_partitions(landing_files.name, new)
        for key in gone:
            self.instance.delete_dynamic_partition(landing_files.name, key)
            self.log(f"landing file removed: {key} (its records leave the training set)")
        return keys, gone

    def release_dead_runs(self) -> list[str]:
        """Fail the runs of `tunegraph run` processes that were killed, and free their pool slots.

        Without a daemon nothing else notices a SIGKILLed run: it would stay STARTED and keep its
        `gpu` slot, so the next fine-tune would wait for it forever.
        """
        released = []
        unfinished = dg.RunsFilter(statuses=[s for s in dg.DagsterRunStatus if s.value in UNFINISHED],
                                   tags={"tunegraph/source": "cli"})  # fmt: skip
        for run in self.instance.get_runs(filters=unfinished):
            if owner_alive(run.tags.get("tunegraph/host"), run.tags.get("tunegraph/pid")):
                continue
            self.instance.report_run_failed(run, f"its process ({run.tags['tunegraph/pid']}) was killed")
            self.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            self.log(
                f"dagster run {run.run_id} was left unfinished by a killed process: marked failed, slots freed"
            )
            released.append(run.run_id)
        return released

    def partition_fingerprint(self, key: str) -> str:
        return _sha(
            file_hash(self.paths.landing / key),
            [self._code_version(a) + self._config_hash(a) for a in PARTITIONED],
        )

    def run(
        self, select: list[str] | None = None, full: bool = False, only: list[str] | None = None
    ) -> dict[str, Any]:
        """Bring the graph up to date. `select` forces those assets; `only` limits the run to those
        assets (staleness unchanged; partitions only if raw_corpus or clean_corpus is named)."""
        started = time.time()
        _freeze_import_heap()
        self.release_dead_runs()
        keys, removed = self.sync_partitions()
        state = read_json(self.state_file) if self.state_file.is_file() else {}
        done_parts: dict[str, str] = state.get("partitions", {})
        done_assets: dict[str, str] = state.get("assets", {})
        everything = full or select is not None
        record: dict[str, Any] = {
            "status": "running",
            "started": started,
            "partitions_total": len(keys),
            "partitions_removed": removed,
        }

        part_fp = {k: self.partition_fingerprint(k) for k in keys}
        todo = [
            k
            for k in keys
            if everything or done_parts.get(k) != part_fp[k] or not self.paths.has_latest("clean_corpus", k)
        ]
        if select is not None and not set(PARTITIONED) & set(select):
            todo = []
        if only is not None and not set(PARTITIONED) & set(only):
            todo = []
        # Global assets in dependency order; each fingerprint chains its upstream fingerprints.
        graph = definitions.defs.resolve_asset_graph()
        fingerprints: dict[str, str] = {"clean_corpus": _sha(sorted(part_fp.items()))}
        stale = []
        for node in definitions.GLOBAL_ASSETS:
            name = node.key.to_user_string()
            parents = sorted(p.to_user_string() for p in graph.get(node.key).parent_keys)
            fingerprints[name] = _sha(
                self._code_version(name), self._config_hash(name), [fingerprints[p] for p in parents]
            )
            if name == "preference_pairs":  # its own landing files, outside the partitions
                fingerprints[name] = _sha(
                    fingerprints[name], [file_hash(f) for f in self.paths.preference_files()]
                )
            upstream_stale = any(p in stale for p in parents)
            if (
                (everything and (select is None or name in select))
                or upstream_stale
                or done_assets.get(name) != fingerprints[name]
                or not self.paths.has_latest(name)
            ):
                stale.append(name)
        if select is not None:
            stale = [s for s in stale if s in select]
        if only is not None:
            stale = [s for s in stale if s in only]

        # One run per changed landing file; the last one also carries the global assets, which
        # saves a run's start-up and bookkeeping (a sixth of a one-record fix's wall time).
        record["partitions_processed"] = todo
        failures, run_ids = [], []
        carried = None
        for i, key in enumerate(todo):
            if stale and not failures and i == len(todo) - 1:
                carried = key
                break
            self.log(f"reading and cleaning {key}")
            result = self._materialize(PARTITIONED, partition_key=key)
            run_ids.append(result.run_id)
            if result.success:
                done_parts[key] = part_fp[key]
            else:
                failures.append(_first_error(result))
        self._save_state(keys, done_parts, done_assets)
        if failures:
            return self._finish(record, "failed", run_ids, errors=failures)
        if not stale:
            if not todo:
                self.log("everything is up to date")
            return self._finish(record, "success" if todo else "up_to_date", run_ids)

        if carried:
            self.log(f"reading and cleaning {carried}")
        self.log(f"materialising {', '.join(stale)}")
        result = self._materialize([*(PARTITIONED if carried else []), *stale], partition_key=carried)
        run_ids.append(result.run_id)
        record["failed_checks"] = sorted(
            f"{c.asset_key.to_user_string()}:{c.check_name}"
            for c in result.get_asset_check_evaluations()
            if not c.passed
        )
        materialised = [e for e in result.get_asset_materialization_events() if e.asset_key is not None]
        done = {e.asset_key.to_user_string() for e in materialised if e.partition is None}
        if carried and any(e.asset_key.to_user_string() == "clean_corpus" for e in materialised):
            done_parts[carried] = part_fp[carried]
        for name in done:
            done_assets[name] = fingerprints[name]
        self._save_state(keys, done_parts, done_assets)
        if not result.success or set(stale) - done:
            missing = ", ".join(sorted(set(stale) - done)) or "none"
            return self._finish(
                record, "failed", run_ids, errors=[f"{_first_error(result)} (not materialised: {missing})"]
            )
        return self._finish(record, "success", run_ids)

    def _materialize(self, names: list[str], partition_key: str | None) -> dg.ExecuteInProcessResult:
        """One Dagster run of the named assets and their checks, in this process."""
        return dg.materialize(
            [*definitions.ASSETS, *definitions.ASSET_CHECKS],
            selection=dg.AssetSelection.assets(*names),
            instance=self.instance,
            resources=self.resources,
            partition_key=partition_key,
            raise_on_error=False,
            run_config=RUN_CONFIG,
            tags=self.tags,
        )

    def _save_state(self, keys: list[str], done_parts: dict[str, str], done_assets: dict[str, str]) -> None:
        partitions = {k: done_parts[k] for k in keys if k in done_parts}
        write_json(self._ensure(self.state_file), {"partitions": partitions, "assets": done_assets})

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
        write_json(self._ensure(self.paths.runs / "last.json"), record)
        return record

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


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
    blocked = [
        f"{c.asset_key.to_user_string()}:{c.check_name}"
        for c in result.get_asset_check_evaluations()
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]
    if blocked:
        return f"blocking checks failed: {', '.join(blocked)} (their metadata in the Dagster UI shows why)"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # The user's error, not Dagster's wrapper around it.
            while error.cause is not None and "dagster" in error.cls_name.lower():
                error = error.cause
            first_line = error.message.strip().splitlines()[0]
            message = re.sub(
                rf"^[\w.]*{re.escape(error.cls_name or '')}: ", "", first_line
            )  # drop "pkg.SomeError: "
            return f"{event.step_key}: {message}"
    return "the run did not succeed"
