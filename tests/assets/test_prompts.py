"""Prompt variants as partitions: Dagster owns "has it changed?", the registry one version per text."""

import dagster as dg
import yaml
from conftest import TINY_CONFIG, output, unsynced, write_config

from pipelines.runner import Runner
from resources.settings import TunegraphSettings
from resources.tracking import MlflowTracking
from stages.prompt_registry import versions
from stages.tables import read_json

PROMPT_EVAL = "base_prompt_evaluation"
VARIANTS = ["few_shot", "retrieved_context", "system_prompt", "zero_shot"]  # configs/tiny.yaml, base model


def prompt_materialisations(instance) -> dict[str, int]:  # noqa: ANN001
    records = instance.fetch_materializations(dg.AssetKey(PROMPT_EVAL), limit=1000).records
    return {k: sum(r.partition_key == k for r in records) for k in VARIANTS}


def with_system(settings, tmp_path, name: str, system: str) -> TunegraphSettings:  # noqa: ANN001
    """configs/tiny.yaml with one variant's system message changed."""
    prompts = yaml.safe_load(TINY_CONFIG.read_text())["prompts"]
    prompts = [{**p, "system": system} if p["name"] == name else p for p in prompts]
    config = write_config(tmp_path / f"{name}.yaml", prompts=prompts)
    return TunegraphSettings(home=settings.home, config_path=str(config))


def test_editing_one_variant_rescores_exactly_its_partition_and_registers_one_version_per_text(
    prepared_home, instance, settings, tmp_path
):
    first = Runner(settings, instance).run(select=[PROMPT_EVAL])
    assert first["status"] == "success", first["errors"]
    assert first["prompt_partitions"] == {PROMPT_EVAL: VARIANTS}
    assert not {k for k in unsynced(instance) if k.startswith(PROMPT_EVAL)}
    summary = read_json(output(instance, PROMPT_EVAL, "retrieved_context") / "summary.json")
    # The rendered prompt carries the retrieved training record; the metadata shows it.
    assert "Related documentation:" in summary["rendered_example"]
    assert summary["scores"]["held_out"]["prompt_tokens"] > 0 and summary["row"] == "base_retrieved_context"

    edited = with_system(settings, tmp_path, "system_prompt", "Answer in one sentence.")
    Runner(edited, instance).run(
        select=[]
    )  # records the new config (as the sensor's tick does), runs nothing
    stale = {k: v for k, v in unsynced(instance).items() if k.startswith(PROMPT_EVAL)}
    assert stale == {
        f"{PROMPT_EVAL}[system_prompt]": ["prompt_variant[system_prompt] has a new data version"]
    }

    before = prompt_materialisations(instance)
    second = Runner(edited, instance).run(select=[PROMPT_EVAL])
    assert second["status"] == "success", second["errors"]
    assert second["prompt_partitions"] == {PROMPT_EVAL: ["system_prompt"]}
    after = prompt_materialisations(instance)
    assert {k: after[k] - before[k] for k in VARIANTS} == {"few_shot": 0, "retrieved_context": 0,
                                                           "system_prompt": 1, "zero_shot": 0}  # fmt: skip

    # Back to the first text: stale again (its scores must match its text), but no third version.
    third = Runner(settings, instance).run(select=[PROMPT_EVAL])
    assert third["prompt_partitions"] == {PROMPT_EVAL: ["system_prompt"]}
    client = MlflowTracking(home=settings.home).client()
    assert [v.version for v in versions(client, "tunegraph-tiny.system_prompt")] == [1, 2]
    assert [v.version for v in versions(client, "tunegraph-tiny.few_shot")] == [1]
    rescored = read_json(output(instance, PROMPT_EVAL, "system_prompt") / "summary.json")
    assert rescored["prompt"]["version"] == "1"
    # Each scored partition has its leaderboard run in MLflow, linked to the prompt version it used.
    run = client.get_run(rescored["mlflow_run_id"])
    assert run.data.tags["tunegraph.row_kind"] == "prompt" and "eval/rouge_l" in run.data.metrics
    assert "tunegraph-tiny.system_prompt" in run.data.tags.get("mlflow.linkedPrompts", "")


def test_a_variant_removed_from_the_config_leaves_the_partitions(prepared_home, instance, settings, tmp_path):
    prompts = [p for p in yaml.safe_load(TINY_CONFIG.read_text())["prompts"] if p["name"] != "few_shot"]
    fewer = TunegraphSettings(
        home=settings.home, config_path=str(write_config(tmp_path / "fewer.yaml", prompts=prompts))
    )
    Runner(fewer, instance).run(select=[])
    assert instance.get_dynamic_partitions("prompts_base") == [
        "zero_shot",
        "system_prompt",
        "retrieved_context",
    ]
    assert instance.get_dynamic_partitions("prompts_fine_tuned") == ["zero_shot", "retrieved_context"]
