"""`tunegraph report` reads the latest run from the Dagster instance, whichever path launched it."""

from conftest import launch, write_example_shards

from pipelines.report import build_report
from pipelines.runner import Runner

DATA = ["raw_corpus", "clean_corpus"]


def test_report_shows_the_latest_run_whether_the_ui_or_the_cli_launched_it(home, instance, settings):
    [first, _] = write_example_shards(home, shards=2)
    cli = Runner(settings, instance).run(select=DATA)
    assert cli["status"] == "success"
    report = build_report(instance)
    assert (report["status"], report["run_id"]) == ("success", cli["run_id"])
    assert report["stale"]["deduplicated_corpus"] == ["never materialised"]  # what Dagster says now

    # "Materialize" in the UI (no CLI involved): the report shows that run, not the CLI's.
    ui = launch(instance, settings, DATA, partition_key=first.name)
    assert ui.success
    report = build_report(instance)
    assert (report["status"], report["run_id"]) == ("success", ui.run_id)

    # A UI run that fails: its status and its own error, on one line.
    failed = launch(instance, settings, ["tokenized_dataset"])
    assert not failed.success
    report = build_report(instance)
    assert (report["status"], report["run_id"]) == ("failed", failed.run_id)
    assert report["errors"][0].startswith(
        "tokenized_dataset: tokenized_dataset may not run: augmented_corpus:duplicate_rate has not run: "
        "augmented_corpus has not been materialised"
    ), report["errors"]
