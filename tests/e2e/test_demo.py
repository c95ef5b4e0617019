"""The demo configuration end to end on the real base model (5-9 minutes on 2 cores with AMX: training is held to
training.max_minutes)."""

import pytest

from pipelines.report import build_report
from pipelines.runner import Runner
from resources.settings import DEFAULT_CONFIG, TunegraphSettings
from resources.tracking import MlflowTracking
from stages.example_corpus import stdlib_records, write_shards


@pytest.mark.slow
def test_demo_fine_tune_beats_the_base_model(home, instance):
    records, _ = stdlib_records()
    write_shards(records, home / "landing", 8)
    settings = TunegraphSettings(home=str(home), config_path=str(DEFAULT_CONFIG))
    record = Runner(settings, instance).run()
    assert record["status"] == "success", record["errors"]
    report = build_report(instance)
    evaluation = report["evaluation"]
    assert evaluation["fine_tuned"]["perplexity"] < evaluation["base_zero_shot"]["perplexity"]
    baselines = ("base_zero_shot", "base_system_prompt", "base_few_shot")
    assert evaluation["fine_tuned"]["rouge_l"] > max(evaluation[b]["rouge_l"] for b in baselines)
    assert evaluation["fine_tuned"]["stop_rate"] >= 0.95  # serving consistency: answers end at EOS
    assert "model_evaluation:generations_stop_at_eos" not in record["failed_checks"]
    assert report["registry"]["promoted"] is True and report["registry"]["version"] == "1"
    # Evaluated while it trained: held-out loss points every 20 steps and where training ended (step
    # 40, or earlier where training.max_minutes held fewer steps at the pace it measured).
    client = MlflowTracking(home=str(home)).client()
    eval_loss = client.get_metric_history(report["training"]["mlflow_run_id"], "eval_loss")
    steps = report["training"]["steps"]
    assert (steps == 40) == (report["training"]["stopped_by_time_budget_at"] is None)
    assert [m.step for m in eval_loss] == sorted({*range(20, steps + 1, 20), steps})
    assert eval_loss[-1].value < evaluation["base_zero_shot"]["loss"]
