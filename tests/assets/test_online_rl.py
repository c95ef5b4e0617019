"""Online RL through Dagster on the tiny model: `train_rl`, the body `preference_model` runs for
`preference.method: grpo | rloo`, from the fine-tuned model against a tiny reward model (real files,
Dagster, MLflow, TRL). A test asset hands `train_rl` a reward model made here (the contract's folder), so
the RL path is tested apart from training a reward model that passes its gate (tests/assets/test_reward.py);
`preference_model` calls `train_rl` with the `reward_model` asset's folder."""

from pathlib import Path

import dagster as dg
import pytest
from conftest import launch, output, write_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from assets.preference import train_rl
from pipelines import definitions
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from resources.training import TrainingLauncher
from stages.tables import read_json, read_jsonl

RL = {"num_generations": 2, "prompts_per_step": 2, "max_completion_tokens": 8, "max_steps": 3, "save_steps": 2,
      "prompts": 8, "learning_rate": 1.0e-3, "rewards": {"length": {"min_tokens": 2, "max_tokens": 6}}}  # fmt: skip


def tiny_reward_model(base: Path, folder: Path) -> Path:
    """The contract's reward model: a sequence classifier (num_labels 1, pad token set) with its tokenizer."""
    scorer = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    scorer.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_grpo_from_the_fine_tuned_model_is_tracked_registered_and_shown(prepared_home, instance, tmp_path):
    config = write_config(tmp_path / "rl.yaml", preference={"enabled": True, "method": "grpo", "rl": RL})
    settings = TunegraphSettings(home=str(prepared_home), config_path=str(config))
    assert launch(instance, settings, ["fine_tuned_model"]).success
    reward_dir = tiny_reward_model(output(instance, "base_model") / "model", tmp_path / "reward" / "model")

    @dg.asset(name="rl_model", group_name="preference")
    def rl_model(
        context: dg.AssetExecutionContext,
        settings: TunegraphSettings,
        mlflow_tracking: MlflowTracking,
        launcher: TrainingLauncher,
        fine_tuned_model: Path,
        augmented_corpus: Path,
    ) -> dg.MaterializeResult:
        return train_rl(
            context, settings, mlflow_tracking, launcher, fine_tuned_model, augmented_corpus, reward_dir
        )

    result = dg.materialize(
        [*definitions.SOURCES, *definitions.ASSETS, *definitions.ASSET_CHECKS, rl_model],
        selection=["rl_model"],
        instance=instance,
        resources={**definitions.resources(settings.home, settings.config_path), "settings": settings},
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    [materialization] = result.asset_materializations_for_node("rl_model")
    metadata = materialization.metadata
    assert (
        metadata["method"].value == "grpo" and metadata["prompts"].value == 8 and metadata["steps"].value == 3
    )
    assert metadata["reward_curve"].value.startswith("![reward and KL](data:image/png;base64,")
    assert "| step | prompt | completion | reward |" in metadata["generations"].value
    assert metadata["registered_model"].value == "tunegraph-tiny v2"  # SFT is v1

    out = output(instance, "rl_model")
    summary = read_json(out / "train_summary.json")
    assert summary["kl"] == metadata["kl"].value and summary["kl"] > 0
    assert {g["step"] for g in read_jsonl(out / "generations.jsonl")} == {1, 2, 3}
    assert len(read_jsonl(out / "prompts.jsonl")) == 8
    lineage = read_json(out / "lineage.json")
    assert lineage["method"] == "grpo" and lineage["reward_model"]["dir"] == str(reward_dir)
    assert lineage["trained_from"] == "models:/tunegraph-tiny/1"

    client = MlflowTracking(home=str(prepared_home)).client()
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.info.status == "FINISHED" and run.data.tags["tunegraph.rl_prompts"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward")] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "kl")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"reward.png", "generations.json", "rl"} <= artifacts
