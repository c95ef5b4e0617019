"""Lineage records written before every model kind had one: `lineage` and `compare` still answer."""

from pipelines.lineage import compare, lineage_of_file
from resources.tracking import MlflowTracking

NAME = "tunegraph-old"


def _register(client, experiment_id: str, lineage: dict) -> str:
    run = client.create_run(experiment_id)
    client.log_dict(run.info.run_id, lineage, "lineage/lineage.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(version.version)


def test_a_dpo_version_from_before_dpo_lineage_held_files_inherits_its_sft_files(home):
    tracking = MlflowTracking(home=str(home))
    client = tracking.client()
    experiment_id = tracking.experiment_id("old")
    client.create_registered_model(NAME)
    sft = {"landing_files": {"a.jsonl": {"content_hash": "h1", "train_records": 7}},
           "config": {"model.base": "bundled:tiny-random", "training.method": "lora"},
           "code_versions": {"fine_tuned_model": "finetune-2"}, "warm_start_from": None}  # fmt: skip
    assert _register(client, experiment_id, sft) == "1"
    # As preference_model wrote it before: no landing files, no code versions.
    dpo = {"starts_from": {"model_name": NAME, "version": "1", "mlflow_run_id": "r"},
           "preference_pairs": {"pairs": 16}, "config": sft["config"]}  # fmt: skip
    assert _register(client, experiment_id, dpo) == "2"

    assert [r["version"] for r in lineage_of_file(client, NAME, "a.jsonl")] == ["1", "2"]
    result, markdown = compare(client, NAME, "2", "1")
    assert result["files_added"] == result["files_removed"] == result["files_changed"] == []
    assert {c["key"]: (c["before"], c["after"]) for c in result["starting_point"]} == {
        "method": ("sft", "dpo"), "trained_from": ("bundled:tiny-random", f"models:/{NAME}/1")}  # fmt: skip
    assert "| method | sft | dpo |" in markdown
