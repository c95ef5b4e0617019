"""The whole graph on configs/tiny.yaml: real Dagster instance, real MLflow on SQLite, real files."""

import json
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml
from conftest import (
    TINY_CONFIG,
    materialisations,
    output,
    sensor_tick,
    unsynced,
    write_config,
    write_example_shards,
    write_jsonl,
)
from transformers import AutoTokenizer

from assets import sources
from assets.versions import latest_data_version
from pipelines.definitions import defs
from pipelines.lineage import compare, lineage_of_file
from pipelines.report import build_report
from pipelines.runner import PipelineError, Runner
from pipelines.sensors import retrain_decision
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages.content import record_key
from stages.launch import cpu_allocator
from stages.tables import read_json, read_rows, write_rows

BASELINES = ("base_zero_shot", "base_system_prompt", "base_few_shot")
# configs/tiny.yaml's rows: four variants on the base model, two on the fine-tuned one, the search's winner.
ROWS = ["base_few_shot", "base_retrieved_context", "base_searched", "base_system_prompt", "base_zero_shot",
        "fine_tuned", "fine_tuned_retrieved_context"]  # fmt: skip


def test_tiny_pipeline_end_to_end_then_what_dagster_reports_stale_then_compare(
    home, instance, settings, tmp_path
):
    shards = write_example_shards(home, shards=4)
    # A record with PII and one that is broken, in a shard of their own.
    write_jsonl(
        home / "landing" / "extra.jsonl",
        [
            {
                "instruction": "Who maintains it?",
                "output": "Write to Ada.Lovelace@Example.ORG or call 020 7946 0958. Key AKIAIOSFODNN7EXAMPLE.",
            },
        ],
    )
    with (home / "landing" / "extra.jsonl").open("a") as f:
        f.write('{"instruction": "broken\n')

    record = Runner(settings, instance).run()
    assert record["status"] == "success", record["errors"]
    assert sorted(record["partitions_processed"]) == sorted([p.name for p in shards] + ["extra.jsonl"])

    report = build_report(instance)
    first_scores = read_json(output(instance, "model_evaluation") / "summary.json")["evaluation"]
    data = report["data"]
    assert data["documents_in"] == data["documents_kept"] + sum(data["dropped"].values())
    assert data["dropped"]["invalid_json"] == 1 and data["dropped"]["empty"] > 0
    assert data["pii"] == {"email": 1, "phone": 1, "secret": 1}
    assert data["train_examples"] > 0 and data["eval_examples"] > 0 and data["train_tokens"] > 0
    # The caches trust each record's record_key: it is the hash of its own messages everywhere,
    # augmented records (whose messages were rewritten) included.
    for file in (output(instance, "augmented_corpus") / "train.parquet",
                 output(instance, "deduplicated_corpus") / "eval" / "held_out.parquet"):  # fmt: skip
        rows = read_rows(file)
        assert rows and all(r["record_key"] == record_key(r) for r in rows)
    assert any(
        r["augmentation"] != "none" for r in read_rows(output(instance, "augmented_corpus") / "train.parquet")
    )
    assert report["training"]["steps"] == 6
    assert 0 < report["training"]["non_pad_fraction"] <= 1
    # The training process ran on the allocator the launcher found (tcmalloc: ~2x a CPU step here).
    found = cpu_allocator() or ""
    assert report["training"]["malloc"] == next((m for m in ("tcmalloc", "jemalloc") if m in found), "system")
    for variant in ("base_zero_shot", "base_system_prompt", "base_few_shot", "fine_tuned"):
        assert report["evaluation"][variant]["perplexity"] > 1
    assert report["evaluation"]["champion"] is None  # no champion before the first promotion
    # Evaluation picks the training device: the device and precision training recorded, in the
    # evaluation's summary, its Dagster metadata and the candidate's MLflow run.
    trained = read_json(output(instance, "fine_tuned_model") / "train_summary.json")
    evaluated = read_json(output(instance, "model_evaluation") / "summary.json")["inference"]
    expected = {"inference_device": trained["device"], "inference_precision": trained["precision"],
                "inference_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[trained["precision"]]}  # fmt: skip
    assert {k: evaluated[k] for k in expected} == expected
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("model_evaluation")
    ).asset_materialization.metadata
    assert {k: metadata[k].value for k in expected} == expected
    tags = MlflowTracking(home=str(home)).client().get_run(report["training"]["mlflow_run_id"]).data.tags
    assert {k: tags[f"tunegraph.eval_{k}"] for k in expected} == expected
    assert {k: tags[f"tunegraph.{k}"] for k in expected} == expected  # the model logged at registration
    assert report["registry"]["version"] == "1"

    # No PII reached the token ids, the Dagster metadata or MLflow.
    planted = ["Lovelace", "7946 0958", "AKIAIOSFODNN7EXAMPLE"]
    tok = AutoTokenizer.from_pretrained(output(instance, "base_model") / "model")
    blocks = read_rows(output(instance, "tokenized_dataset") / "train_blocks.parquet")
    decoded = tok.decode([t for b in blocks for t in b["input_ids"]])
    assert "<EMAIL>" in decoded and not any(p in decoded for p in planted)
    metadata = [
        str(r.asset_materialization.metadata)
        for key in instance.get_asset_keys()
        for r in instance.fetch_materializations(key, limit=1000).records
    ]
    assert metadata and not any(p in m for m in metadata for p in planted)

    # MLflow: one finished run with the resolved config, the loss curve, eval metrics and a model version.
    client = MlflowTracking(home=str(home)).client()
    run = client.get_run(report["training"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    texts = [
        f.read_text(errors="ignore") for f in artifacts.rglob("*") if f.suffix in (".md", ".json", ".txt")
    ]
    assert texts and not any(p in t for t in texts for p in planted)
    assert run.data.params["training.max_steps"] == "6"
    assert run.data.tags["dagster.run_id"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [3, 6]  # held-out
    assert "eval_fine_tuned_perplexity" in run.data.metrics
    # ...as MLflow's training-runs view shows it: a model-development experiment, the run named by
    # its version and data, its train and held-out records as inputs digested by content, and the
    # same `eval/*` metrics as each leaderboard row's run, for the runs table and charts.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tokens_version = latest_data_version(instance, "tokenized_dataset")
    assert run.info.run_name == f"sft v1 · data {tokens_version[:8]}"
    inputs = {d.dataset.name: (d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs["train"] == (tokens_version, "training") and inputs["held_out"][1] == "evaluation"
    rows = {
        r.data.tags["tunegraph.leaderboard_row"]: r for r in leaderboard_runs(client, run.info.experiment_id)
    }
    assert sorted(rows) == ROWS
    assert {r: rows[r].data.tags["tunegraph.row_kind"] for r in ("base_few_shot", "fine_tuned")} == {
        "base_few_shot": "prompt", "fine_tuned": "model"}  # fmt: skip
    for scored in [run, *rows.values()]:
        assert {"eval/perplexity", "eval/rouge_l", "eval/loss"} <= set(scored.data.metrics)
    # One leaderboard: every row in the report with the same metrics, ranked; the searched prompt's
    # dev and held-out scores side by side; the best prompt per model kind aliased in the registry.
    assert sorted(r["row"] for r in report["leaderboard"]) == ROWS
    assert [r["rank"] for r in report["leaderboard"]] == list(range(1, len(ROWS) + 1))
    assert (
        report["prompt_search"]["dev"]["rouge_l"] is not None
        and report["prompt_search"]["held_out"]["perplexity"] > 1
    )
    assert set(report["best_prompts"]) == {"base", "fine_tuned"}
    best = report["best_prompts"]["base"].removeprefix("base_")
    assert client.get_prompt_version_by_alias(f"tunegraph-tiny.{best}", "best-base").version
    assert run.data.metrics["eval/perplexity"] == run.data.metrics["eval_fine_tuned_perplexity"]
    version = client.get_model_version("tunegraph-tiny", "1")
    # Tagged with the content versions Dagster recorded for its inputs.
    for asset in ("tokenized_dataset", "augmented_corpus", "base_model"):
        assert version.tags[f"tunegraph.data_version.{asset}"] == latest_data_version(instance, asset)

    # Every packed example has labels; the fine-tuned model carries the template training used.
    for block in read_rows(output(instance, "tokenized_dataset") / "train_blocks.parquet"):
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [len(block["position_ids"])]
        for a, b in zip(starts, starts[1:], strict=False):
            assert any(label != -100 for label in block["labels"][a:b])
    template = (output(instance, "base_model") / "model" / "chat_template.jinja").read_text()
    assert (output(instance, "fine_tuned_model") / "model" / "chat_template.jinja").read_text() == template
    # ...and so does the registered model, loaded back through MLflow by its alias.
    MlflowTracking(home=str(home)).activate()
    components = mlflow.transformers.load_model("models:/tunegraph-tiny@champion", return_type="components")
    assert components["tokenizer"].chat_template == template

    # Nothing changed: nothing runs. The landing sensor's first tick after a CLI run (as when
    # `make ui` starts) finds every file already observed and ingests nothing, Dagster reports no
    # asset unsynced (what the UI shows), and the retrain schedule has nothing to do.
    again = Runner(settings, instance).run()
    assert again["status"] == "up_to_date" and again["partitions_processed"] == []
    tick = sensor_tick(instance, settings)
    assert tick.run_requests == [] and tick.asset_events == []
    assert unsynced(instance) == {}
    graph = defs.resolve_asset_graph()
    assert retrain_decision(instance, graph) == (
        [],
        "fine_tuned_model is up to date with its data, config and code",
    )

    # A config key only the training stages read: Dagster marks just them stale (DPO, off here,
    # reads it too), and `tunegraph run` redoes exactly them and what follows them, once each.
    before = materialisations(instance)
    lr = TunegraphSettings(home=str(home),
                           config_path=str(write_config(tmp_path / "lr.yaml", training={"learning_rate": 5e-4})))  # fmt: skip
    sources.record(instance, sources.source_changes(instance, lr))  # as the sensor's next tick would
    cause = ["pipeline_config[training] has a new data version"]
    assert unsynced(instance) == {"fine_tuned_model": cause, "reward_model": cause, "preference_model": cause}
    second = Runner(lr, instance).run()
    assert second["status"] == "success", second["errors"]
    after = materialisations(instance)
    assert {a: after[a] - before[a] for a in after if after[a] != before[a]} == {
        "fine_tuned_model": 1, "fine_tuned_prompt_evaluation": 2, "preference_pairs": 1, "reward_model": 1, "preference_model": 1,
        "model_evaluation": 1, "gguf_model": 1,
    }  # fmt: skip
    assert unsynced(instance) == {} and build_report(instance)["registry"]["version"] == "2"
    v2_run = client.get_run(client.get_model_version("tunegraph-tiny", "2").run_id)
    assert v2_run.info.run_name == f"sft v2 · data {tokens_version[:8]} · training.learning_rate=0.0005"
    # Same base model, eval set and decoding: the base model's prompt partitions stay synced, not re-scored.
    retrained = read_json(output(instance, "model_evaluation") / "summary.json")
    for variant in BASELINES:
        assert retrained["evaluation"][variant] == first_scores[variant], variant

    # The data assets rebuilt from unchanged files: same content versions, still nothing to retrain.
    data_assets = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]
    assert Runner(lr, instance).run(select=data_assets, full=True)["status"] == "success"
    assert retrain_decision(instance, graph)[0] == []

    # One shard edited and ingested (as the sensor does): only that shard is re-read and
    # re-cleaned; automation asks for the data assets together (each gate runs in its asset's
    # step) and nothing that follows the model; the model is stale, and the retrain schedule asks.
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the daemon's view now
    lines = shards[1].read_text().splitlines()
    lines[0] = json.dumps({"id": "edited", "instruction": "Explain x.", "output": "A fixed answer for x."})
    shards[1].write_text("\n".join(lines) + "\n")
    ingested = Runner(lr, instance).run(select=["raw_corpus", "clean_corpus"])
    assert ingested["status"] == "success", ingested["errors"]
    assert ingested["partitions_processed"] == [shards[1].name]
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert [tick.get_num_requested(dg.AssetKey(a)) for a in data_assets] == [1, 1, 1]
    assert tick.total_requested == 3  # not preference_pairs: it follows the model, not the corpus
    followed = Runner(lr, instance).run(select=data_assets)  # what the automated run materialises
    assert followed["status"] == "success", followed["errors"]
    # The schedule retrains; the prompt partitions (a run each) and what reads them wait for `tunegraph run`.
    retrain = ["prompt_search", "fine_tuned_model", "preference_pairs", "reward_model", "preference_model"]
    assert retrain_decision(instance, graph) == (retrain, "fine_tuned_model is stale: materialising "
        f"{', '.join(retrain)}; model_evaluation, gguf_model wait for the prompt partitions (`tunegraph run`)")  # fmt: skip
    schedule = defs.get_schedule_def("retrain_when_data_changed")
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    assert [k.to_user_string() for k in request.asset_selection] == retrain
    third = Runner(lr, instance).run()
    assert third["status"] == "success", third["errors"]
    assert third["partitions_processed"] == [] and build_report(instance)["registry"]["version"] == "3"

    # `tunegraph compare` names exactly that shard and that config key; `lineage` follows the file.
    result, markdown = compare(client, "tunegraph-tiny", "3", "1")
    assert (result["older"], result["newer"]) == ("1", "3")
    assert [f["file"] for f in result["files_changed"]] == [shards[1].name]
    assert result["files_added"] == [] and result["files_removed"] == []
    assert [c["key"] for c in result["config_changed"]] == ["training.learning_rate"]
    assert result["code_changed"] == []
    assert "eval_fine_tuned_perplexity" in result["metric_deltas"]
    assert f"| {shards[1].name} |" in markdown
    newer_run = client.get_model_version("tunegraph-tiny", "3").run_id
    assert "lineage/compare_v1_v3.md" in [a.path for a in client.list_artifacts(newer_run, "lineage")]
    edited = lineage_of_file(client, "tunegraph-tiny", shards[1].name)
    assert [r["version"] for r in edited] == ["1", "2", "3"]
    assert edited[0]["content_hash"] == edited[1]["content_hash"] != edited[2]["content_hash"]
    same = lineage_of_file(client, "tunegraph-tiny", shards[0].name)
    assert len({r["content_hash"] for r in same}) == 1

    # A new system prompt changes one variant: only its partition is scored again, then the leaderboard.
    prompts = [{**p, "system": "Answer briefly."} if p["name"] == "system_prompt" else p
               for p in yaml.safe_load(TINY_CONFIG.read_text())["prompts"]]  # fmt: skip
    prompt = TunegraphSettings(home=str(home), config_path=str(write_config(
        tmp_path / "prompt.yaml", training={"learning_rate": 5e-4}, prompts=prompts)))  # fmt: skip
    before = materialisations(instance)
    reprompted = Runner(prompt, instance).run()
    assert reprompted["status"] == "success" and reprompted["prompt_partitions"] == {
        "base_prompt_evaluation": ["system_prompt"]}  # fmt: skip
    after = materialisations(instance)
    assert {a: after[a] - before[a] for a in after if after[a] != before[a]} == {
        "base_prompt_evaluation": 1, "model_evaluation": 1, "gguf_model": 1}  # fmt: skip


def leaderboard_runs(client, experiment_id: str) -> list:  # noqa: ANN001
    return client.search_runs([experiment_id], "tags.`tunegraph.leaderboard_row` != ''")


def test_empty_landing_folder_is_a_clear_error(home, instance, settings):
    with pytest.raises(PipelineError, match=r"no landing files in .*landing: run `tunegraph example-data`"):
        Runner(settings, instance).run()


@pytest.mark.slow  # 41 s: a second landing file through the runner; the format errors are unit-tested (test_readers)
def test_unknown_format_fails_its_partition_only(home, instance, settings):
    write_example_shards(home, shards=2)
    (home / "landing" / "notes.docx").write_bytes(b"PK\x03\x04")
    record = Runner(settings, instance).run()
    assert record["status"] == "failed"
    assert record["errors"] == [
        "raw_corpus: notes.docx: unknown format '.docx'; rename it to one of "
        ".csv, .json, .jsonl, .md, .ndjson, .parquet, .txt or set corpus.format"
    ]
    # The good files were still read and cleaned, and are not redone after the fix; the removed
    # file is read as empty once, so nothing of it can reach the training set.
    (home / "landing" / "notes.docx").unlink()
    fixed = Runner(settings, instance).run()
    assert fixed["status"] == "success", fixed["errors"]
    assert fixed["partitions_processed"] == ["notes.docx"] and fixed["partitions_removed"] == ["notes.docx"]


def test_a_clean_partition_from_an_older_version_is_a_clear_error(home, instance, settings):
    write_example_shards(home, shards=2)
    assert Runner(settings, instance).run(select=["raw_corpus", "clean_corpus"])["status"] == "success"
    # As clean_corpus wrote it before response hashes were stored per landing file.
    old = output(instance, "clean_corpus", "stdlib-00.jsonl") / "records.parquet"
    write_rows(old, [{k: v for k, v in r.items() if k != "response_hash"} for r in read_rows(old)])
    record = Runner(settings, instance).run(select=["deduplicated_corpus"])
    assert record["status"] == "failed"
    assert record["errors"][0].startswith(
        "deduplicated_corpus: clean_corpus[stdlib-00.jsonl] was written by an older tunegraph"
    )


def test_unknown_model_base_is_a_clear_error(home, instance, tmp_path):
    config = write_config(tmp_path / "bad.yaml", model={"base": "./no/such/model"})
    settings = TunegraphSettings(home=str(home), config_path=str(config))
    write_example_shards(home, shards=2)
    record = Runner(settings, instance).run()
    assert record["status"] == "failed"
    assert any("model.base './no/such/model' is not a model directory" in e for e in record["errors"])


@pytest.mark.slow  # about 37 s: keeps `make test` near 10 minutes on a slow afternoon (make test-slow runs it)
def test_a_worse_model_is_not_promoted(prepared_home, instance, settings, tmp_path):
    home = prepared_home
    first = Runner(settings, instance).run()
    assert first["status"] == "success", first["errors"]
    assert build_report(instance)["registry"]["promoted"] is True

    # learning_rate 0: the LoRA adapters stay zero, so the "fine-tuned" model is the base model.
    worse = write_config(tmp_path / "worse.yaml", training={"learning_rate": 0.0})
    worse_settings = TunegraphSettings(home=str(home), config_path=str(worse))
    second = Runner(worse_settings, instance).run()
    assert second["status"] == "success", second["errors"]
    assert second["failed_checks"] == [
        "model_evaluation:candidate_promoted",
        "model_evaluation:generations_stop_at_eos",
    ]
    report = build_report(instance)
    registry = report["registry"]
    assert registry["version"] == "2" and registry["promoted"] is False
    assert registry["champion_version"] == "1"
    assert "does not beat" in registry["reason"]
    assert all(
        report["evaluation"][v]["perplexity"] > 1 for v in report["evaluation"]
    )  # all five, champion too
    client = MlflowTracking(home=str(home)).client()
    aliases = client.get_registered_model("tunegraph-tiny").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("model_evaluation"), "candidate_promoted")]
    )
    evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
    assert "does not beat" in evaluation.metadata["reason"].value
