"""No path trains past a failed gate: eval passages planted in a training file with decontamination
off fail `augmented_corpus:no_eval_contamination`, and then nothing downstream materialises on
that data, whichever way it is asked for, until the data changes."""

import os
import subprocess
import sys

import dagster as dg
from conftest import WHAT_TO_FIX, contaminated, launch, output

from pipelines.definitions import defs
from pipelines.runner import Runner
from pipelines.staleness import read_state
from resources.settings import REPO_ROOT
from resources.tracking import MlflowTracking
from stages.tables import read_rows

DOWNSTREAM = [
    "tokenized_dataset",
    "fine_tuned_model",
    "preference_pairs",
    "reward_model",
    "preference_model",
    "model_evaluation",
    "gguf_model",
]


def step_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    """Each failed step's error, without the exception class."""
    return [e.step_failure_data.error.message.split(": ", 1)[1].strip()
            for e in result.all_events if e.is_step_failure]  # fmt: skip


def test_a_planted_eval_passage_is_removed_from_training(home, instance, tmp_path):
    settings = contaminated(home, tmp_path, decontamination=True)
    record = Runner(settings, instance).run(select=["raw_corpus", "clean_corpus", "deduplicated_corpus"])
    assert record["status"] == "success", record["errors"]
    dedup = output(instance, "deduplicated_corpus")
    assert [r["id"] for r in read_rows(dedup / "contaminated.parquet")] == ["planted"]
    assert "planted" not in {r["id"] for r in read_rows(dedup / "train.parquet")}


def test_a_failed_gate_holds_on_every_path_until_the_data_changes(home, instance, tmp_path):
    settings = contaminated(home, tmp_path)
    # The automation daemon's view before anything ran: later ticks compare against it.
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    first = Runner(settings, instance).run()
    assert first["status"] == "failed"
    assert first["errors"][0].startswith(
        f"blocking check augmented_corpus:no_eval_contamination failed: {WHAT_TO_FIX}"
    )

    # 1. `tunegraph run` again, nothing changed: it says what to fix and exits non-zero.
    env = {**os.environ, "TUNEGRAPH_HOME": str(home)}
    cli = subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", settings.config_path, "run"],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert f"augmented_corpus:no_eval_contamination failed: {WHAT_TO_FIX}" in cli.stdout
    held = next(line for line in cli.stdout.splitlines() if "held back by failed gates: " in line)
    # Everything that reads the augmented corpus, the prompt evaluations' example pool included.
    assert {"tokenized_dataset", "fine_tuned_model", "base_prompt_evaluation", "prompt_search"} <= set(
        held.split("held back by failed gates: ")[1].split(", ")
    ), held
    assert "\nmaterialising" not in cli.stdout  # nothing was launched

    # 2. `tunegraph run --select fine_tuned_model`, with and without --full.
    for full in (False, True):
        record = Runner(settings, instance).run(select=["fine_tuned_model"], full=full)
        assert record["status"] == "blocked" and record["dagster_run_ids"] == []
        assert list(record["blocked"]) == ["fine_tuned_model"]

    # 3. "Materialize" on one downstream asset in the UI: the asset itself refuses.
    for asset in ["tokenized_dataset", "fine_tuned_model", "model_evaluation"]:
        result = launch(instance, settings, [asset])
        assert not result.success
        [error] = step_errors(result)
        assert error.startswith(
            f"{asset} may not run: augmented_corpus:no_eval_contamination failed: {WHAT_TO_FIX}"
        )

    # 4. "Materialize unsynced": everything the UI lists as unsynced or missing (a run per prompt
    #    variant for the assets partitioned by variant, as the UI launches them).
    unsynced = sorted(read_state(instance, defs.resolve_asset_graph(), []).stale)
    assert set(DOWNSTREAM) <= set(unsynced)
    by_variant = {
        "base_prompt_evaluation": "prompts_base",
        "fine_tuned_prompt_evaluation": "prompts_fine_tuned",
    }
    assert not launch(instance, settings, [a for a in unsynced if a not in by_variant]).success
    for asset, partitions in by_variant.items():
        for key in instance.get_dynamic_partitions(partitions):
            assert not launch(instance, settings, [asset], partition_key=key).success, (asset, key)

    # 5. Declarative automation: augmented_corpus was updated, but its gate failed, so the eager
    #    tokenized_dataset is not requested (the same condition requests it once the data is fixed).
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_num_requested(dg.AssetKey("tokenized_dataset")) == 0

    # 6. The retrain schedule skips, saying why.
    schedule = defs.get_schedule_def("retrain_when_data_changed")
    # (As a context manager: an open schedule context keeps the instance's state storage current.)
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        skip = schedule.evaluate_tick(context)
    assert skip.run_requests == [] and "augmented_corpus:no_eval_contamination failed" in skip.skip_message

    # On no path did anything downstream materialise, and no model version was registered.
    for asset in DOWNSTREAM:
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is None, asset
    client = MlflowTracking(home=str(home)).client()
    assert client.search_registered_models() == []

    # The data fixed (the planted record removed): the gate passes and the model trains.
    (home / "landing" / "planted.jsonl").unlink()
    data = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus"]
    assert Runner(settings, instance).run(select=data)["status"] == "success"
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_num_requested(dg.AssetKey("tokenized_dataset")) == 1  # the same condition, now true
    fixed = Runner(settings, instance).run()
    assert fixed["status"] == "success", fixed["errors"]
    assert [str(v.version) for v in client.search_model_versions("name = 'tunegraph-tiny'")] == ["1"]


def test_an_output_whose_gates_never_ran_is_not_read_downstream(home, instance, tmp_path):
    # The gates run in augmented_corpus's own step, so no run leaves them behind; the UI's "Report
    # materialization event" (or an outside tool) still records a materialisation they never saw.
    settings = contaminated(home, tmp_path, decontamination=True)
    data = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "base_model", "augmented_corpus"]
    assert Runner(settings, instance).run(select=data)["status"] == "success"
    passed = launch(instance, settings, ["tokenized_dataset"])
    assert passed.success, step_errors(passed)  # its gates passed
    instance.report_runless_asset_event(dg.AssetMaterialization("augmented_corpus"))
    [error] = step_errors(launch(instance, settings, ["tokenized_dataset"]))
    assert "augmented_corpus:no_eval_contamination has not run on the latest materialisation" in error
