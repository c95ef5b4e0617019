"""The reward model on the tiny model: real files, Dagster, MLflow, TRL. It learns clearly separable
pairs and passes its gate; fed labels at random it fails it, and nothing that reads it runs."""

import random

import dagster as dg
import pytest
from conftest import launch, output, write_config, write_jsonl

from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages.inference import Placement
from stages.precision import resolve_precision
from stages.reward_scoring import load_reward_model, reward_scores
from stages.tables import read_json

# 40 pairs: 12 of them held out at 0.2 by the stable hash (data.seed 0), enough for the gate (5 at 0.05).
REWARD = {"learning_rate": 1.0e-3, "max_steps": 10, "batch_size": 4, "logging_steps": 2, "save_steps": 5}
PREFERENCE = {"enabled": True, "min_pairs": 8, "method": "grpo", "reward_model": REWARD}
TRAINING = ["fine_tuned_model", "preference_pairs", "reward_model", "preference_model"]
GOOD, BAD = "It returns the integer {i}, always.", "I do not know; perhaps a banana, or nothing at all."


def landed_pairs(coin: random.Random | None = None) -> list[dict]:
    """Separable pairs; with `coin`, each pair's chosen and rejected swapped on heads (labels at random)."""
    pairs = []
    for i in range(40):
        chosen, rejected = GOOD.format(i=i), BAD
        if coin is not None and coin.random() < 0.5:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": f"What does helper_{i}() return?", "chosen": chosen, "rejected": rejected})
    return pairs


# About 40 s (fine-tune, reward model, registration); `make test` sees a reward model pass its gate in the
# DPO test (tests/assets/test_preference.py), which trains one first.
@pytest.mark.slow
def test_the_reward_model_learns_separable_pairs_and_passes_its_gate(prepared_home, instance, tmp_path):
    home = prepared_home
    write_jsonl(home / "landing" / "preferences" / "pairs.jsonl", landed_pairs())
    config = write_config(tmp_path / "reward.yaml", preference=PREFERENCE)
    settings = TunegraphSettings(home=str(home), config_path=str(config))

    record = Runner(settings, instance).run(select=TRAINING[:-1])
    assert record["status"] == "success", record["errors"]
    out = output(instance, "reward_model")
    summary = read_json(out / "summary.json")
    assert summary["enabled"] is True and summary["heldout_pairs"] == 12
    assert summary["heldout_accuracy"] > 0.9 and summary["heldout_margin"] > 0
    [check] = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("reward_model"), "reward_better_than_chance")]
    ).values()
    assert check.evaluation.passed

    materialisation = instance.get_latest_materialization_event(
        dg.AssetKey("reward_model")
    ).asset_materialization
    metadata = {k: v.value for k, v in materialisation.metadata.items()}
    assert (metadata["pairs_train"], metadata["pairs_heldout"]) == (28, 12)
    assert metadata["registered_model"] == "tunegraph-tiny-reward v1"
    assert "chosen_score" in metadata["heldout_pairs_scored"]

    # The saved folder is the contract: the scalar head merged, the pad token set, scored as in training.
    placement = Placement("cpu", resolve_precision("fp32", "cpu").dtype, resolve_precision("fp32", "cpu"))
    model, tokenizer = load_reward_model(out / "model", placement)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    prompt = [{"role": "user", "content": "What does helper_99() return?"}]
    good, bad = reward_scores(model, tokenizer, [prompt, prompt], [GOOD.format(i=99), BAD])
    assert good > bad

    # Its own registry name: never a version of the policy's model, so never a champion candidate.
    client = MlflowTracking(home=str(home)).client()
    policy = {v.run_id for v in client.search_model_versions("name = 'tunegraph-tiny'")}
    reward = client.get_model_version("tunegraph-tiny-reward", "1")
    assert reward.run_id not in policy and len(policy) == 1
    run = client.get_run(reward.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tunegraph.asset"] == "reward_model"
    assert run.data.metrics["final_heldout_accuracy"] == summary["heldout_accuracy"]
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 5  # every logging step


@pytest.mark.slow  # 42 s: trains a reward model; the gate's arithmetic is unit-tested (test_reward_gate)
def test_labels_at_random_fail_the_gate_and_nothing_reads_the_reward_model(prepared_home, instance, tmp_path):
    home = prepared_home
    # Coin seed 2 swaps 6 of the 12 held-out pairs (and 12 of 28 training ones): whichever way the model
    # learns to lean, it ranks half the held-out pairs right, as a coin's labels allow on average.
    write_jsonl(home / "landing" / "preferences" / "pairs.jsonl", landed_pairs(random.Random(2)))
    config = write_config(tmp_path / "reward.yaml", preference=PREFERENCE)
    settings = TunegraphSettings(home=str(home), config_path=str(config))

    # What the reward model gates, without the evaluation's prompt partitions (another test's story).
    record = Runner(settings, instance).run(select=TRAINING)
    assert record["status"] == "failed"
    assert record["failed_checks"] == ["reward_model:reward_better_than_chance"], record["errors"]
    summary = read_json(output(instance, "reward_model") / "summary.json")
    assert summary["heldout_pairs"] == 12 and summary["heldout_accuracy"] < 0.8
    # The gate says what is wrong and what to do, and the policy (GRPO here) never trained against it.
    error = next(e for e in record["errors"] if "reward_better_than_chance" in e)
    assert "a coin does as well with p =" in error and "check the pairs' labels" in error
    assert instance.get_latest_materialization_event(dg.AssetKey("preference_model")) is None

    # Asked again, the planner holds preference_model back behind the failed gate and says why.
    again = Runner(settings, instance).run(select=TRAINING)
    assert again["status"] in ("blocked", "failed")
    assert any("reward_model:reward_better_than_chance failed" in e for e in again["errors"]), again["errors"]
    # The UI's "Materialize" of preference_model alone: the IO manager refuses to hand it the reward model.
    launched = launch(instance, settings, ["preference_model"])
    [error] = [e.step_failure_data.error.message for e in launched.all_events if e.is_step_failure]
    assert "preference_model may not run: reward_model:reward_better_than_chance failed" in error
    assert instance.get_latest_materialization_event(dg.AssetKey("preference_model")) is None


@pytest.mark.slow  # about 70 s: the reward model and DPO
def test_a_failed_gate_warns_dpo_which_learns_from_the_pairs_themselves(prepared_home, instance, tmp_path):
    """The same labels at random with `method: dpo`: the gate fails as a warning (WARN severity), DPO
    trains, and model_evaluation would leave the reward model's judgement out."""
    home = prepared_home
    write_jsonl(home / "landing" / "preferences" / "pairs.jsonl", landed_pairs(random.Random(2)))
    config = write_config(tmp_path / "dpo.yaml", preference={**PREFERENCE, "method": "dpo"})
    settings = TunegraphSettings(home=str(home), config_path=str(config))
    record = Runner(settings, instance).run(select=TRAINING)
    assert record["status"] == "success", record["errors"]
    assert record["failed_checks"] == ["reward_model:reward_better_than_chance"]  # failed, as a warning
    assert read_json(output(instance, "preference_model") / "summary.json")["method"] == "dpo"
