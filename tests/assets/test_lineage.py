"""`tunegraph compare` and `tunegraph lineage` on two real trained versions."""

import json

from conftest import write_config, write_example_shards

from pipelines.lineage import compare, lineage_of_file
from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking


def test_compare_names_the_changed_shard_and_config_key(home, instance, settings, tmp_path):
    shards = write_example_shards(home, shards=3)
    assert Runner(settings, instance).run()["status"] == "success"

    lines = shards[1].read_text().splitlines()
    lines[5] = json.dumps({"id": "new", "instruction": "Explain z.", "output": "A brand new answer about z."})
    shards[1].write_text("\n".join(lines) + "\n")
    changed = write_config(tmp_path / "changed.yaml", training={"learning_rate": 5e-4})
    record = Runner(TunegraphSettings(home=str(home), config_path=str(changed)), instance).run()
    assert record["status"] == "success", record["errors"]

    client = MlflowTracking(home=str(home)).client()
    result, markdown = compare(client, "tunegraph-tiny", "2", "1")
    assert (result["older"], result["newer"]) == ("1", "2")
    assert [f["file"] for f in result["files_changed"]] == [shards[1].name]
    assert result["files_added"] == [] and result["files_removed"] == []
    assert [c["key"] for c in result["config_changed"]] == ["training.learning_rate"]
    assert result["code_changed"] == []
    assert "eval_fine_tuned_perplexity" in result["metric_deltas"]
    assert f"| {shards[1].name} |" in markdown

    newer_run = client.get_model_version("tunegraph-tiny", "2").run_id
    logged = [a.path for a in client.list_artifacts(newer_run, "lineage")]
    assert "lineage/compare_v1_v2.md" in logged

    edited = lineage_of_file(client, "tunegraph-tiny", shards[1].name)
    assert [r["version"] for r in edited] == ["1", "2"]
    assert edited[0]["content_hash"] != edited[1]["content_hash"]
    same = lineage_of_file(client, "tunegraph-tiny", shards[0].name)
    assert same[0]["content_hash"] == same[1]["content_hash"]
