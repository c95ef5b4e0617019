"""Which output is current is Dagster's record: each run writes its own folder, downstream reads
the one Dagster recorded last, and old folders go only when nothing recorded or running needs them."""

import uuid
from pathlib import Path

import dagster as dg

from resources.outputs import RecordedOutputs, new_output, output_folder, recorded
from resources.settings import TunegraphSettings


@dg.asset
def toy(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    out = new_output(context, settings.paths(), keep=2)
    (out / "written_by").write_text(context.run_id)
    return dg.MaterializeResult(metadata=recorded(out))


@dg.asset
def reader(context: dg.AssetExecutionContext, toy: Path) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"read": (toy / "written_by").read_text()})


def materialize(instance, settings, names: list[str]) -> dg.ExecuteInProcessResult:  # noqa: ANN001
    return dg.materialize([toy, reader], selection=names, instance=instance,
                          resources={"settings": settings, "io_manager": RecordedOutputs({})})  # fmt: skip


def test_downstream_reads_the_output_dagster_recorded_last_and_old_ones_are_pruned(home, instance, settings):
    runs = [materialize(instance, settings, ["toy"]).run_id for _ in range(2)]
    root = settings.paths().asset_root("toy")
    assert sorted(p.name for p in root.iterdir()) == sorted(runs)  # a folder per run, named after it

    # A folder a killed run left (never recorded), and one a run still in progress is writing.
    killed, running = root / str(uuid.uuid4()), root / str(uuid.uuid4())
    killed.mkdir(), running.mkdir()
    instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=running.name, status=dg.DagsterRunStatus.STARTED)
    )

    third = materialize(instance, settings, ["toy", "reader"])
    assert third.success
    # The reader read what the third run recorded, not a folder by its name or its age.
    read = instance.get_latest_materialization_event(dg.AssetKey("reader")).asset_materialization
    assert read.metadata["read"].value == third.run_id == output_folder(instance, "toy").name
    # keep=2: the two recorded last stay, the first recorded one and the killed run's go, the running one stays.
    assert sorted(p.name for p in root.iterdir()) == sorted([runs[1], third.run_id, running.name])

    # A materialisation recorded later (another run of toy at the same time) is what the next reader reads.
    other = root / str(uuid.uuid4())
    other.mkdir()
    (other / "written_by").write_text("the other run")
    instance.report_runless_asset_event(dg.AssetMaterialization("toy", metadata=recorded(other)))
    assert materialize(instance, settings, ["reader"]).success
    read = instance.get_latest_materialization_event(dg.AssetKey("reader")).asset_materialization
    assert read.metadata["read"].value == "the other run"


def test_an_output_recorded_without_a_folder_or_gone_from_disk_is_refused(home, instance, settings):
    instance.report_runless_asset_event(dg.AssetMaterialization("toy"))
    result = dg.materialize([toy, reader], selection=["reader"], instance=instance, raise_on_error=False,
                            resources={"settings": settings, "io_manager": RecordedOutputs({})})  # fmt: skip
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "reader may not run: toy was recorded without an output folder" in str(
        failure.step_failure_data.error
    )

    assert materialize(instance, settings, ["toy"]).success
    folder = output_folder(instance, "toy")
    (folder / "written_by").unlink()
    folder.rmdir()
    result = dg.materialize([toy, reader], selection=["reader"], instance=instance, raise_on_error=False,
                            resources={"settings": settings, "io_manager": RecordedOutputs({})})  # fmt: skip
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "is gone from disk" in str(failure.step_failure_data.error)
