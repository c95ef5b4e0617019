"""Augmentation by the base model, through the asset, cached."""

import json

from conftest import output, write_config, write_example_shards

from pipelines.runner import Runner
from resources.settings import TunegraphSettings


def test_model_paraphrase_runs_through_the_asset_and_is_cached(home, instance, tmp_path):
    write_example_shards(home, shards=2)
    config = write_config(
        tmp_path / "para.yaml", data={"augmentation": {"max_share": 0.1, "model_paraphrase": True}}
    )
    settings = TunegraphSettings(home=str(home), config_path=str(config))
    record = Runner(settings, instance).run(
        select=["raw_corpus", "clean_corpus", "base_model", "deduplicated_corpus", "augmented_corpus"]
    )
    assert record["status"] == "success", record["errors"]
    summary = json.loads((output(instance, "augmented_corpus") / "summary.json").read_text())
    [cache_file] = (home / "cache").glob("paraphrases-*.json")
    cache = json.loads(cache_file.read_text())
    # One generation per paraphrased instruction, cached. The tiny random model writes nothing
    # usable, so every record keeps its template paraphrase instead of an empty instruction.
    assert len(cache) == summary["methods"]["paraphrase_template"] > 0
    assert "model_paraphrase" not in summary["methods"]
