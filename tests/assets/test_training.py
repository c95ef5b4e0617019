"""Crash-safe training through the real `fine_tuned_model` asset and the real training process.

The data assets are materialised once per session into a template state folder (conftest);
each test starts from a copy of it, with its own Dagster instance and MLflow store.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import DATA_ASSETS, mlflow_statuses, output, write_config

from assets.model import fine_tuned_model
from pipelines import definitions
from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from stages.tables import read_json

# Long enough that a process killed at the first checkpoint has steps left to resume.
TRAINING = {"max_steps": 12, "save_steps": 3, "logging_steps": 3, "save_total_limit": 2}


def settings_with(home: Path, tmp_path: Path, **training) -> TunegraphSettings:
    config = write_config(tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml",
                          training={**TRAINING, **training})  # fmt: skip
    return TunegraphSettings(home=str(home), config_path=str(config))


def materialize_fine_tune(
    settings: TunegraphSettings, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    resources = definitions.resources(settings.home, settings.config_path)
    resources["settings"] = settings
    # Its inputs come from what Dagster recorded for the other assets: the whole graph, one selected.
    return dg.materialize([*definitions.SOURCES, *definitions.ASSETS, *definitions.ASSET_CHECKS],
                          selection=[fine_tuned_model], instance=instance, resources=resources,
                          raise_on_error=False)  # fmt: skip


def training_pids(home: Path) -> list[int]:
    """The `python -m stages.train` processes training under this state folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"stages.train" in argv and any(str(home).encode() in a for a in argv):
            found.append(int(proc.name))
    return found


def kill_at_checkpoints(home: Path, steps: list[int], sig: int = signal.SIGKILL) -> threading.Thread:
    """In the background: each time checkpoint-<step> appears, send `sig` to the training process."""

    def watch() -> None:
        for step in steps:
            target = home / "checkpoints" / "fine_tuned_model" / f"checkpoint-{step}"
            deadline = time.time() + 300
            while not target.is_dir() and time.time() < deadline:
                time.sleep(0.01)
            for pid in training_pids(home):
                os.kill(pid, sig)
            killed.append(step)

    killed: list[int] = []
    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = killed  # type: ignore[attr-defined]
    thread.start()
    return thread


def latest_summary(settings: TunegraphSettings) -> dict:
    return read_json(output(Path(settings.home), "fine_tuned_model") / "train_summary.json")


@pytest.mark.slow  # about 45 s: keeps `make test` under 10 minutes on a slow day (make test-slow runs it)
def test_killed_training_is_retried_into_resume_and_matches_an_uninterrupted_run(
    prepared_home, instance, tmp_path
):
    settings = settings_with(prepared_home, tmp_path)
    killer = kill_at_checkpoints(prepared_home, [3])
    resumed = materialize_fine_tune(settings, instance)
    killer.join(timeout=5)
    assert killer.killed == [3]
    assert resumed.success  # the RetryPolicy's second attempt resumed
    interrupted = latest_summary(settings)
    assert interrupted["resumed_from_step"] >= 3
    metadata = resumed.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["resume"].value.startswith(f"resuming from step {interrupted['resumed_from_step']}")

    # Checkpoints are cleared once the model is published, so this run starts over at step 0.
    fresh = materialize_fine_tune(settings, instance)
    assert fresh.success
    uninterrupted = latest_summary(settings)
    assert uninterrupted["resumed_from_step"] is None
    assert interrupted["steps"] == uninterrupted["steps"] == 12
    assert abs(interrupted["train_loss"] - uninterrupted["train_loss"]) < 1e-4
    assert mlflow_statuses(prepared_home) == ["FAILED", "FINISHED", "FINISHED"]
    assert not (prepared_home / "checkpoints" / "fine_tuned_model").exists()


@pytest.mark.slow
def test_changed_data_refuses_resume_and_warm_start_begins_from_the_registered_weights(
    prepared_home, instance, tmp_path
):
    settings = settings_with(prepared_home, tmp_path)
    # Killed twice (the first attempt and its retry): the materialisation fails, checkpoints stay.
    killer = kill_at_checkpoints(prepared_home, [3, 6])
    assert not materialize_fine_tune(settings, instance).success
    killer.join(timeout=5)
    checkpoints = prepared_home / "checkpoints" / "fine_tuned_model"
    assert (checkpoints / "checkpoint-6").is_dir()

    # New data: a landing file gains records, so the tokenized data version changes.
    extra = [{"instruction": f"What does helper_{i}() return?", "output": f"It returns the number {i} as an int."}
             for i in range(40)]  # fmt: skip
    (prepared_home / "landing" / "added.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    assert Runner(settings, instance).run(select=DATA_ASSETS)["status"] == "success"
    refused = materialize_fine_tune(settings, instance)
    assert refused.success
    metadata = refused.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["resume"].value.startswith("not resuming checkpoint-6: data_version ")
    assert metadata["resumed_from_step"].value == 0
    from_base = latest_summary(settings)
    assert from_base["resumed_from_step"] is None and from_base["steps"] == 12
    registered = read_json(output(instance, "fine_tuned_model") / "mlflow.json")["version"]

    # Warm start: the same data, but training begins from the registered version's weights.
    warm_settings = settings_with(prepared_home, tmp_path, warm_start_from=registered)
    warm = materialize_fine_tune(warm_settings, instance)
    assert warm.success
    warmed = latest_summary(warm_settings)
    assert warmed["resumed_from_step"] is None and warmed["steps"] == 12
    # Its first logged loss is where the registered run ended, well below a start from the base model.
    assert warmed["history"][0]["loss"] < from_base["history"][0]["loss"] - 0.02
    lineage = read_json(output(instance, "fine_tuned_model") / "lineage.json")
    assert lineage["warm_start_from"]["model_uri"] == f"models:/tunegraph-tiny/{registered}"
    assert "RUNNING" not in mlflow_statuses(prepared_home)


@pytest.mark.slow
def test_ddp_over_two_cpu_processes_trains_like_one_process_with_the_same_global_batch(
    prepared_home, instance, tmp_path
):
    single = settings_with(prepared_home, tmp_path, batch_size=2, num_processes=1)
    assert materialize_fine_tune(single, instance).success
    one = latest_summary(single)
    ddp = settings_with(prepared_home, tmp_path, batch_size=1, num_processes=2)
    assert materialize_fine_tune(ddp, instance).success
    two = latest_summary(ddp)
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert two["steps"] == one["steps"] == 12
    # Same global batch, different sampling order: losses agree closely, not bit for bit.
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.01)
    assert two["history"][-1]["loss"] < two["history"][0]["loss"]  # it learned


def test_held_out_loss_is_measured_while_training_and_early_stopping_ends_a_run_that_stops_improving(
    data_template, tmp_path
):
    """The training entry point on the template's tokenized data, run by hand (no Dagster, no MLflow)."""
    from stages.config import TrainingConfig
    from stages.spec import TrainingSpec
    from stages.train import train

    tokens = output(data_template, "tokenized_dataset")

    def spec(name: str, **training) -> TrainingSpec:
        settings = {"method": "full", "max_steps": 12, "batch_size": 2, "logging_steps": 2, "save_steps": 100,
                    "eval_steps": 2, "eval_examples": 8}  # fmt: skip
        return TrainingSpec(
            init_model_dir=output(data_template, "base_model") / "model",
            train_path=tokens / "train_blocks.parquet",
            eval_path=tokens / "eval.parquet",
            output_dir=tmp_path / name,
            checkpoint_dir=tmp_path / f"{name}-checkpoints",
            training=TrainingConfig(**{**settings, **training}),
        )

    learning = train(spec("learning", learning_rate=1e-3))
    assert [e["step"] for e in learning["eval_history"]] == [2, 4, 6, 8, 10, 12]
    assert learning["eval_history"][-1]["eval_loss"] < learning["eval_history"][0]["eval_loss"]
    assert learning["steps"] == 12 and learning["eval_loss"] == learning["eval_history"][-1]["eval_loss"]
    # Learning nothing (rate 0), the held-out loss never improves on its first value: with a
    # patience of 2 evaluations the run ends at step 6, not 12.
    stuck = train(spec("stuck", learning_rate=0.0, early_stopping_patience=2))
    assert stuck["steps"] == 6 and [e["step"] for e in stuck["eval_history"]] == [2, 4, 6]
    # Measuring it changes nothing in training: the same losses without it, and the throughput
    # counts training tokens only (the held-out batches are collated apart).
    unmeasured = train(spec("unmeasured", learning_rate=1e-3, eval_steps=None))
    assert unmeasured["eval_history"] == [] and unmeasured["eval_loss"] is None
    assert [h["loss"] for h in unmeasured["history"]] == [h["loss"] for h in learning["history"]]
    assert unmeasured["label_tokens"] == learning["label_tokens"]


def test_a_time_budget_ends_the_learning_rate_schedule_where_training_stops(data_template, tmp_path):
    """training.max_minutes on a real (tiny) run: it stops before max_steps, at the step its measured
    pace planned, with the learning rate decayed to ~0 there and the held-out loss measured there."""
    from stages.config import TrainingConfig
    from stages.spec import TrainingSpec
    from stages.train import train

    tokens = output(data_template, "tokenized_dataset")
    cfg = TrainingConfig(method="full", max_steps=100_000, batch_size=2, logging_steps=1, save_steps=100_000,
                         eval_steps=100_000, eval_examples=4, learning_rate=1e-3, warmup_steps=2,
                         max_minutes=3 / 60)  # fmt: skip
    lines: list[str] = []
    summary = train(
        TrainingSpec(
            init_model_dir=output(data_template, "base_model") / "model",
            train_path=tokens / "train_blocks.parquet",
            eval_path=tokens / "eval.parquet",
            output_dir=tmp_path / "budget",
            checkpoint_dir=tmp_path / "budget-checkpoints",
            training=cfg,
        ),
        log=lines.append,
    )
    stopped = summary["stopped_by_time_budget_at"]
    assert stopped is not None and 3 < stopped < 100_000 and summary["steps"] == stopped
    assert summary["wall_s"] < 3 * 2  # the budget, and a slow step of margin on a loaded machine
    # The rate of the last step (HF logs the one the step used): the schedule had decayed by then.
    assert summary["history"][-1]["step"] == stopped and summary["history"][-1]["learning_rate"] < 1e-3 / 20
    assert max(h["learning_rate"] for h in summary["history"]) > 1e-3 / 2  # it did warm up to the peak
    assert [e["step"] for e in summary["eval_history"]] == [stopped]
    assert any(line.startswith("time budget: training ends at step") for line in lines)
