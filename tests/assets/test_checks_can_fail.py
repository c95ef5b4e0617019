"""Every blocking check can fail: an input that makes each one fail, and what it then says to fix.

(`no_eval_contamination` fails in test_gates.py; the two warnings on model_evaluation fail in
test_pipeline.py's worse-model test.)
"""

import dagster as dg
from conftest import DATA_ASSETS, output, write_config, write_example_shards, write_jsonl

from assets.augment import _no_residual_pii, _schema_valid
from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from stages.augmentation import TrainColumns
from stages.tables import read_json, read_rows, write_json, write_rows

DATA = ["raw_corpus", "clean_corpus", "deduplicated_corpus", "augmented_corpus"]


def settings_for(home, tmp_path, **overrides) -> TunegraphSettings:  # noqa: ANN001
    config = write_config(tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml", **overrides)
    return TunegraphSettings(home=str(home), config_path=str(config))


def test_duplicate_rate_fails_on_near_copies_dedup_leaves_and_passes_when_the_limit_is_raised(
    home, instance, tmp_path
):
    write_example_shards(home, shards=2)
    # Twenty 10-word answers that differ in their last word: too short for near dedup (16 words), not
    # exact copies, and too short for 13-word decontamination to drop the ones sharing text with eval.
    write_jsonl(home / "landing" / "copies.jsonl", [
        {"instruction": f"Helper {i}?", "output": f"It returns unique names found in the folder sorted by {i}"}
        for i in range(20)
    ])  # fmt: skip
    record = Runner(settings_for(home, tmp_path), instance).run(select=DATA)
    assert record["status"] == "failed"
    assert record["errors"][0].startswith(
        "blocking check augmented_corpus:duplicate_rate failed: drop the duplicates listed in `examples`"
    )
    # The limit is a config key the gate reads: raising it reruns augmented_corpus and its gates.
    relaxed = Runner(settings_for(home, tmp_path, data={"max_duplicate_rate": 0.5}), instance).run(
        select=DATA
    )
    assert relaxed["status"] == "success", relaxed["errors"]
    assert relaxed["stale"]["augmented_corpus"] == [
        "pipeline_config[data.max_duplicate_rate] has a new data version"
    ]
    assert "deduplicated_corpus" not in relaxed["stale"]  # nothing upstream of the key is redone


def test_enough_examples_fails_on_a_corpus_too_small_to_learn_from(home, instance, tmp_path):
    write_jsonl(home / "landing" / "tiny.jsonl", [
        {"instruction": f"Question {i}?", "output": f"A sufficiently long answer number {i}."} for i in range(3)
    ])  # fmt: skip
    record = Runner(settings_for(home, tmp_path), instance).run(select=DATA)
    assert record["status"] == "failed"
    assert "augmented_corpus:enough_examples failed: add landing files" in record["errors"][0]


def test_blocks_have_labels_fails_when_no_answer_fits_in_a_block(home, instance, tmp_path):
    write_example_shards(home, shards=2)
    record = Runner(settings_for(home, tmp_path, data={"block_size": 16}), instance).run()
    assert record["status"] == "failed"
    assert record["errors"][0].startswith(
        "blocking check tokenized_dataset:blocks_have_labels failed: prompts longer than data.block_size"
    )
    assert instance.get_latest_materialization_event(dg.AssetKey("fine_tuned_model")) is None


def test_blocks_have_labels_fails_when_packing_drops_too_many_examples_and_passes_when_the_share_is_raised(
    home, instance, tmp_path
):
    write_example_shards(home, shards=2)
    # Twenty questions of ~600 tokens (unique words: no cleaning rule, dedup or decontamination takes
    # them) with short answers: each prompt fills a 256-token block, so packing drops the example.
    write_jsonl(home / "landing" / "long_prompts.jsonl", [
        {"instruction": " ".join(f"term{i}x{j}" for j in range(150)) + "?", "output": f"Short answer {i}."}
        for i in range(20)
    ])  # fmt: skip
    record = Runner(settings_for(home, tmp_path), instance).run(select=DATA_ASSETS)
    assert record["status"] == "failed"
    error = record["errors"][0]
    assert error.startswith(
        "blocking check tokenized_dataset:blocks_have_labels failed: prompts longer than data.block_size "
        "(256) left no answer tokens in "
    )
    assert "raise data.block_size, shorten those prompts, or raise data.max_dropped_share" in error
    # Counted where users look: the asset's metadata, its dataset card and the check agree.
    event = instance.get_latest_materialization_event(dg.AssetKey("tokenized_dataset"))
    metadata = event.asset_materialization.metadata
    dropped = metadata["dropped_no_labels"].value
    assert dropped >= 10 and f"in {dropped} of {metadata['examples'].value + dropped} examples" in error
    assert f"- dropped by packing: {dropped} examples whose prompt fills the block of 256" in (
        metadata["dataset_card"].value
    )
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("tokenized_dataset"), "blocks_have_labels")]
    )
    check_metadata = next(iter(check.values())).event.dagster_event.event_specific_data.metadata
    assert (
        check_metadata["dropped_no_labels"].value == dropped and check_metadata["without_labels"].value == 0
    )

    # The share is a config key the gate reads: raising it reruns tokenized_dataset, which passes.
    relaxed = Runner(settings_for(home, tmp_path, data={"max_dropped_share": 0.5}), instance).run(
        select=DATA_ASSETS
    )
    assert relaxed["status"] == "success", relaxed["errors"]
    assert relaxed["stale"]["tokenized_dataset"] == [
        "pipeline_config[data.max_dropped_share] has a new data version"
    ]


def test_accounting_holds_fails_when_a_stage_loses_records(home, instance, settings):
    write_example_shards(home, shards=2)
    assert Runner(settings, instance).run(select=DATA[:3])["status"] == "success"
    # A clean partition that says it read one more record than it kept or dropped: a lost record.
    summary_path = output(instance, "clean_corpus", "stdlib-00.jsonl") / "summary.json"
    summary = read_json(summary_path)
    write_json(summary_path, {**summary, "documents_in": summary["documents_in"] + 1})
    record = Runner(settings, instance).run(select=["deduplicated_corpus"], full=True)
    assert record["status"] == "failed"
    assert record["errors"][0].startswith(
        "blocking check deduplicated_corpus:accounting_holds failed: 1 documents are neither kept nor dropped"
    )


def test_preference_gates_fail_on_contaminated_and_too_few_pairs(prepared_home, instance, tmp_path):
    home = prepared_home
    held_out = read_rows(output(instance, "deduplicated_corpus") / "eval" / "held_out.parquet")
    passage = held_out[0]["messages"][-1]["content"]
    write_jsonl(home / "landing" / "preferences" / "pairs.jsonl", [
        {"prompt": "Explain it.", "chosen": passage, "rejected": "No idea at all, sorry."},
        {"prompt": "What is x?", "chosen": "x is the first coordinate.", "rejected": "x is a banana."},
    ])  # fmt: skip
    settings = settings_for(home, tmp_path, preference={"enabled": True, "min_pairs": 8},
                            data={"decontamination": {"enabled": False, "ngram": 13}})  # fmt: skip
    record = Runner(settings, instance).run()
    assert record["status"] == "failed"
    failed = record["failed_checks"]
    assert failed == ["preference_pairs:pairs_not_in_eval", "preference_pairs:pairs_well_formed"], record[
        "errors"
    ]
    assert instance.get_latest_materialization_event(dg.AssetKey("preference_model")) is None


def test_pii_and_schema_gates_fail_on_records_that_slipped_through(tmp_path):
    leaked = {"id": "r1", "source_file": "a.jsonl", "source_line": 3, "messages": [
        {"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Mail ada@example.org."}]}  # fmt: skip
    write_rows(tmp_path / "leaked.parquet", [leaked])
    pii = _no_residual_pii(tmp_path, TrainColumns.read(tmp_path / "leaked.parquet"), [])
    assert (
        not pii.passed
        and pii.metadata["fix"].text == "remove the personal data from r1 (a.jsonl:3); redaction missed it"
    )
    no_answer = {**leaked, "messages": [{"role": "user", "content": "Who?"}]}
    write_rows(tmp_path / "no_answer.parquet", [no_answer])
    schema = _schema_valid(TrainColumns.read(tmp_path / "no_answer.parquet"), [])
    assert not schema.passed
    assert schema.metadata["fix"].text == (
        "fix or remove r1 (a.jsonl:3) (the last message must be a non-empty assistant answer)"
    )
