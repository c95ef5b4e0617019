"""The code location loads and holds the graph DESIGN.md promises."""

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs
from resources.settings import REPO_ROOT


def test_definitions_hold_the_graph_in_groups():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {
        "landing_file": "sources",
        "preference_files": "sources",
        "pipeline_config": "sources",
        "prompt_variant": "sources",
        "raw_corpus": "data",
        "clean_corpus": "data",
        "deduplicated_corpus": "data",
        "augmented_corpus": "data",
        "tokenized_dataset": "data",
        "base_model": "model",
        "fine_tuned_model": "model",
        "preference_pairs": "preference",
        "reward_model": "preference",
        "preference_model": "preference",
        "base_prompt_evaluation": "evaluation",
        "fine_tuned_prompt_evaluation": "evaluation",
        "prompt_search": "evaluation",
        "model_evaluation": "evaluation",
        "gguf_model": "model",
    }
    parents = {
        k: {p.to_user_string() for p in graph.get(graph.get(k).key).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    by_name = {k.to_user_string(): v for k, v in parents.items()}
    # What each asset reads is what its signature takes (the IO manager hands it Dagster's record).
    assert by_name["fine_tuned_model"] == {"tokenized_dataset", "base_model", "augmented_corpus",
                                           "deduplicated_corpus", "pipeline_config"}  # fmt: skip
    assert by_name["clean_corpus"] == {"raw_corpus", "pipeline_config"}
    assert by_name["raw_corpus"] == {"landing_file", "pipeline_config"}
    # The reward model learns from the gated pairs on top of the fine-tuned model; DPO/RL read it (its gate).
    assert by_name["reward_model"] == {"preference_pairs", "fine_tuned_model", "pipeline_config"}
    assert "reward_model" in by_name["preference_model"]
    assert by_name["gguf_model"] == {"model_evaluation", "deduplicated_corpus", "pipeline_config"}
    # A prompt partition reads its own variant's text, its model and the data; nothing of training.
    assert by_name["base_prompt_evaluation"] == {"base_model", "deduplicated_corpus", "augmented_corpus",
                                                 "prompt_variant", "pipeline_config"}  # fmt: skip
    for key in graph.materializable_asset_keys:
        assert graph.get(key).code_version, f"{key} has no code_version"


def test_each_asset_depends_on_exactly_the_config_keys_it_declares():
    graph = defs.resolve_asset_graph()
    config = dg.AssetKey("pipeline_config")

    def reads(asset: str) -> list[str]:
        mapping = graph.get_partition_mapping(dg.AssetKey(asset), config)
        return sorted(mapping.partition_keys)

    assert reads("clean_corpus") == ["data.cleaning"]
    assert reads("tokenized_dataset") == ["data.block_size", "data.max_dropped_share"]
    # The evaluated decoding is saved with the model (generation_config.json): a change retrains.
    decoding = ["evaluation.max_new_tokens", "evaluation.repetition_penalty"]
    assert reads("fine_tuned_model") == [*decoding, "tracking", "training"]
    assert reads("preference_model") == [*decoding, "preference", "tracking", "training"]
    # The pairs and the reward model read the preference keys they use: an RL or DPO setting retrains neither.
    assert reads("reward_model") == ["data.seed", "preference.enabled", "preference.method", "preference.reward_model",
                                     "preference.weights", "tracking", "training"]  # fmt: skip
    assert reads("preference_pairs") == sorted(["corpus", "data.cleaning", "data.decontamination", "data.seed",
        *decoding, "preference.enabled", "preference.min_pairs", "preference.reward_model.heldout_fraction",
        "preference.synthetic", "preference.synthetic_examples", "preference.synthetic_max_rouge_l"])  # fmt: skip
    assert reads("model_evaluation") == ["data.seed", "evaluation", "preference.reward_model", "tracking"]
    assert reads("gguf_model") == ["export", "tracking"]
    # Not `evaluation` whole: a new promotion margin re-scores no prompt (each variant's own text is
    # its partition's dependency on prompt_variant).
    # ... and the number format the model runs in (bf16 scores are another measurement).
    scoring = sorted(
        ["data.seed", "evaluation.max_examples", *decoding, "tracking", "training.precision", "model.dtype"]
    )
    assert reads("base_prompt_evaluation") == reads("fine_tuned_prompt_evaluation") == scoring
    assert reads("prompt_search") == sorted(["prompt_search", *scoring])


def test_data_checks_block_and_model_checks_hold_nothing_back():
    graph = defs.resolve_asset_graph()
    blocking = {k.to_user_string() for k in graph.asset_check_keys if graph.get_check_spec(k).blocking}
    assert blocking == {
        "deduplicated_corpus:accounting_holds",
        "augmented_corpus:no_eval_contamination",
        "augmented_corpus:enough_examples",
        "augmented_corpus:no_residual_pii",
        "augmented_corpus:duplicate_rate",
        "augmented_corpus:schema_valid",
        "tokenized_dataset:blocks_have_labels",
        "preference_pairs:pairs_well_formed",
        "preference_pairs:pairs_not_in_eval",
        "reward_model:reward_better_than_chance",  # a reward model no better than a coin steers nothing
    }
    # Each gate runs in its asset's own step: a run of the asset (an automated one too) cannot
    # leave the gates behind, which would hold everything below it back (#15's automation story).
    for check in graph.asset_check_keys:
        if graph.get_check_spec(check).blocking:
            assert check in defs.get_assets_def(check.asset_key).check_keys, check.to_user_string()
    # Quality signals on the last assets: they warn (evaluation) or fail (a GGUF file that does not
    # reproduce the model) and hold nothing back.
    others = {k.to_user_string() for k in graph.asset_check_keys} - blocking
    assert others == {
        "model_evaluation:candidate_promoted",
        "model_evaluation:generations_stop_at_eos",
        "gguf_model:gguf_matches_safetensors",
    }


def test_dagster_definitions_validate_cli(home, instance):
    # `instance` sets DAGSTER_HOME and the storage variables dagster.yaml reads, as the CLI does.
    result = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


GPU_JOB = """
import json, sys, time
from pathlib import Path
import dagster as dg

@dg.asset(pool="gpu")
def holds_the_gpu() -> None:
    start = time.time()
    Path(sys.argv[1] + ".started").touch()
    time.sleep(2)
    Path(sys.argv[1]).write_text(json.dumps([start, time.time()]))

with dg.DagsterInstance.get() as instance:
    assert dg.materialize([holds_the_gpu], instance=instance).success
"""


def test_two_runs_never_hold_the_gpu_pool_at_once(home, instance, tmp_path):
    """The instance of dagster.yaml limits pool `gpu` to one step at a time, across processes.

    The second run starts while the first holds the slot. Two claims in the same millisecond can
    both win on Dagster's SQLite storage (it has no row locks: `with_for_update` is a no-op
    there), which CI once hit; Postgres storage locks the slot row (README "Postgres").
    """
    from assets.model import fine_tuned_model

    assert fine_tuned_model.op.pool == "gpu"
    script = tmp_path / "gpu_job.py"
    script.write_text(GPU_JOB)
    first_out, second_out = tmp_path / "first.json", tmp_path / "second.json"
    first = subprocess.Popen([sys.executable, str(script), str(first_out)])
    deadline = time.monotonic() + 120
    while not Path(f"{first_out}.started").exists():
        assert first.poll() is None, "the first run ended before its step started"
        assert time.monotonic() < deadline, "the first run's step did not start in 120 s"
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, str(script), str(second_out)])
    assert [first.wait(timeout=120), second.wait(timeout=120)] == [0, 0]
    _, first_end = json.loads(first_out.read_text())
    second_start, _ = json.loads(second_out.read_text())
    assert second_start >= first_end  # the second waited for the first to free the slot


def test_a_launchpad_config_of_only_overrides_is_complete():
    # What a user types in the launchpad: the state folder and YAML come from the code location.
    job = defs.resolve_implicit_global_asset_job_def()
    config = {"resources": {"settings": {"config": {"overrides": {"training.max_steps": "2"}}}}}
    settings = dg.validate_run_config(job, config)["resources"]["settings"]["config"]
    assert settings["overrides"] == {"training.max_steps": "2"}
    assert Path(settings["home"]).is_absolute() and settings["config_path"].endswith(".yaml")
