"""DPO as its own asset after the fine-tune, on the tiny model: real files, Dagster, MLflow, TRL."""

import json

import pytest
from conftest import output, write_config, write_jsonl

from pipelines.report import build_report
from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages.tables import read_json

# The reward model trains first (DPO reads it, behind its gate): 5 of the 16 pairs held out, all ranked right.
REWARD = {"learning_rate": 1.0e-3, "max_steps": 10, "batch_size": 4, "logging_steps": 2, "save_steps": 5}
PREFERENCE = {"enabled": True, "learning_rate": 1.0e-3, "max_steps": 8, "batch_size": 4, "logging_steps": 2,
              "save_steps": 4, "min_pairs": 8, "synthetic_examples": 16, "reward_model": REWARD}  # fmt: skip


# make test-slow (85 s): DPO end to end; make test keeps DPO's and KTO's gates (test_checks_can_fail).
@pytest.mark.slow
def test_dpo_on_landed_pairs_lowers_its_loss_raises_the_margin_and_is_evaluated(
    prepared_home, instance, tmp_path
):
    home = prepared_home
    pairs = [{"prompt": f"What does helper_{i}() return?", "chosen": f"It returns the integer {i}, always.",
              "rejected": "I do not know; perhaps a banana, or nothing at all."} for i in range(16)]  # fmt: skip
    pairs += [
        {"prompt": "Broken pair", "chosen": "Same words here.", "rejected": "Same words here."},
        {"prompt": "No rejected answer", "chosen": "Only one answer here."},
    ]
    write_jsonl(home / "landing" / "preferences" / "pairs.jsonl", pairs)
    config = write_config(tmp_path / "dpo.yaml", preference=PREFERENCE)
    settings = TunegraphSettings(home=str(home), config_path=str(config))

    record = Runner(settings, instance).run()
    assert record["status"] == "success", record["errors"]
    # Preference files are not corpus partitions: the data stages (done in the template) stay done.
    assert record["partitions_processed"] == [] and record["partitions_total"] == 2

    report = build_report(instance)
    preference = report["preference"]
    assert preference["pairs"] == 16 and preference["synthetic"] is False
    assert preference["dropped"] == {"chosen_equals_rejected": 1, "missing_field": 1}
    assert preference["steps"] == 8
    history = read_json(output(instance, "preference_model") / "train_summary.json")["history"]
    assert history[-1]["loss"] < history[0]["loss"]  # the DPO loss falls
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"]  # chosen pulls away from rejected
    assert report["evaluation"]["preference"]["perplexity"] > 1  # scored as one more variant
    assert report["registry"]["candidate"] in ("fine_tuned", "preference")

    client = MlflowTracking(home=str(home)).client()
    run = client.get_run(preference["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["tunegraph.starts_from"] == "models:/tunegraph-tiny/1"
    assert len(client.get_metric_history(run.info.run_id, "rewards/margins")) == 4
    assert preference["version"] == "2"  # SFT is v1; DPO registers the next version

    # Evaluated again, both models are candidates and one of them is the champion: it stays a rival,
    # scored once as its candidate (the champion row is not empty), and is not crowned anew as if
    # there were no champion.
    # Every row judged by the reward model; each policy's own pair accuracy on the 5 held-out pairs, which
    # DPO never trained on (it learnt from the other 11).
    evaluation = read_json(output(instance, "model_evaluation") / "summary.json")
    assert evaluation["reward_judge"]["heldout_pairs"] == 5 and evaluation["reward_judge"]["questions"] > 0
    assert len((output(instance, "preference_pairs") / "pairs.jsonl").read_text().splitlines()) == 11
    board = {row["row"]: row for row in evaluation["leaderboard"]}
    assert board["base_zero_shot"]["win_rate"] == 0.5  # against itself: every answer ties
    for row in ("fine_tuned", "preference", "base_few_shot"):
        assert 0.0 <= board[row]["win_rate"] <= 1.0 and isinstance(board[row]["reward"], float)
    for policy in ("base_zero_shot", "fine_tuned", "preference"):
        assert board[policy]["pair_accuracy"] in {k / 5 for k in range(6)}
    assert board["base_few_shot"]["pair_accuracy"] is None  # a prompt, not a policy of its own
    tuned_run = read_json(output(instance, "fine_tuned_model") / "mlflow.json")["mlflow_run_id"]
    assert {"eval/reward", "eval/win_rate", "eval/pair_accuracy"} <= set(
        client.get_run(tuned_run).data.metrics
    )
    first = report["registry"]
    assert first["promoted"] is True and "no champion yet" in first["reason"]
    again = Runner(settings, instance).run(select=["model_evaluation"], full=True)
    assert again["status"] == "success", again["errors"]
    report = build_report(instance)
    registry, champion = report["registry"], first["candidate"]
    assert (registry["candidate"], registry["champion_version"]) == (champion, first["version"])
    assert registry["reason"].startswith(
        f"{champion} v{first['version']} is the champion and the best candidate"
    )
    assert report["evaluation"]["champion"] == report["evaluation"][champion]


@pytest.mark.slow
def test_synthetic_pairs_from_the_corpus_are_labelled_and_trained_on(prepared_home, instance, tmp_path):
    home = prepared_home
    # 7 of the 16 synthetic pairs held out (by their hash), so the reward model's gate has enough to judge.
    reward = {**REWARD, "heldout_fraction": 0.6}
    config = write_config(
        tmp_path / "dpo.yaml", preference={**PREFERENCE, "synthetic": True, "reward_model": reward}
    )
    settings = TunegraphSettings(home=str(home), config_path=str(config))
    record = Runner(settings, instance).run()
    assert record["status"] == "success", record["errors"]
    preference = build_report(instance)["preference"]
    # The tiny model's answers (blank lines) share nothing with the references: every prompt is a pair.
    assert preference["synthetic"] is True and preference["pairs"] == PREFERENCE["synthetic_examples"]
    pairs = (output(instance, "preference_pairs") / "pairs.jsonl").read_text().splitlines()
    held_out = (output(instance, "preference_pairs") / "heldout_pairs.jsonl").read_text().splitlines()
    assert (
        len(pairs) + len(held_out) == preference["pairs"] and len(held_out) == 7
    )  # the split the gate judged
    assert json.loads(pairs[0])["chosen"][0]["role"] == "assistant"
    client = MlflowTracking(home=str(home)).client()
    assert client.get_run(preference["mlflow_run_id"]).data.tags["tunegraph.synthetic_pairs"] == "True"
