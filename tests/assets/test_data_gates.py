"""Bad data cannot reach training: decontamination, and the blocking check when it is off."""

import json

from conftest import write_config, write_example_shards, write_jsonl

from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from stages.tables import read_rows

PASSAGE = (
    "the reference implementation walks the tree twice so that every node is visited in order before any "
    "callback sees a partially built result"
)


def _setup(home, tmp_path, enabled: bool) -> TunegraphSettings:  # noqa: ANN001
    write_example_shards(home, shards=2)
    write_jsonl(home / "landing" / "planted.jsonl", [
        {"id": "planted", "instruction": "How does the walker work?",
         "output": f"In short: {PASSAGE}. That is all."},
    ])  # fmt: skip
    write_jsonl(
        tmp_path / "eval.jsonl", [{"instruction": "Describe the walker.", "output": PASSAGE.capitalize()}]
    )
    config = write_config(
        tmp_path / "cfg.yaml",
        data={"eval_files": ["eval.jsonl"], "decontamination": {"enabled": enabled, "ngram": 13}},
    )
    return TunegraphSettings(home=str(home), config_path=str(config))


def test_a_planted_eval_passage_is_removed_from_training(home, instance, tmp_path):
    settings = _setup(home, tmp_path, enabled=True)
    record = Runner(settings, instance).run(
        select=["raw_corpus", "clean_corpus", "base_model", "deduplicated_corpus", "augmented_corpus"]
    )
    assert record["status"] == "success", record["errors"]
    dedup = settings.paths().latest("deduplicated_corpus")
    assert [r["id"] for r in read_rows(dedup / "contaminated.parquet")] == ["planted"]
    assert "planted" not in {r["id"] for r in read_rows(dedup / "train.parquet")}
    summary = json.loads((dedup / "summary.json").read_text())
    assert summary["eval_examples"]["eval"] == 1


def test_with_decontamination_off_the_gate_blocks_the_fine_tune(home, instance, tmp_path):
    settings = _setup(home, tmp_path, enabled=False)
    record = Runner(settings, instance).run()
    assert record["status"] == "failed"
    assert record["errors"][0].startswith("blocking checks failed: augmented_corpus:no_eval_contamination")
    assert not settings.paths().has_latest("tokenized_dataset")
    assert not settings.paths().has_latest("fine_tuned_model")


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
    summary = json.loads((settings.paths().latest("augmented_corpus") / "summary.json").read_text())
    [cache_file] = (home / "cache").glob("paraphrases-v-*.json")
    cache = json.loads(cache_file.read_text())
    # One generation per paraphrased instruction, cached. The tiny random model writes nothing
    # usable, so every record keeps its template paraphrase instead of an empty instruction.
    assert len(cache) == summary["methods"]["paraphrase_template"] > 0
    assert "model_paraphrase" not in summary["methods"]
