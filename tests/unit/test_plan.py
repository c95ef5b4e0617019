"""The run plan is a pure function of what Dagster reports: checked here on a small graph."""

import pytest

from stages.plan import Failed, Graph, plan_run, retrain, run_order, unread_partitions

#   raw -> clean -> dedup -> augmented -> tokens -> model -> evaluation
#                                      base ---------^
GRAPH = Graph(
    order=["base", "raw", "clean", "dedup", "augmented", "tokens", "model", "evaluation"],
    parents={
        "base": set(),
        "raw": set(),
        "clean": {"raw"},
        "dedup": {"clean"},
        "augmented": {"dedup", "base"},
        "tokens": {"augmented", "base"},
        "model": {"tokens", "base"},
        "evaluation": {"model", "augmented"},
    },
    partitioned={"raw", "clean"},
)
FILES = ["a.jsonl", "b.jsonl"]
CONTAMINATED = Failed("augmented:no_eval_contamination", "failed: remove planted (x.jsonl:1)", not_run=False)


def test_nothing_stale_plans_nothing():
    plan = plan_run(GRAPH, {}, FILES, {})
    assert plan.empty and plan.blocked == {}


def test_a_changed_file_reruns_its_partition_and_everything_downstream():
    plan = plan_run(GRAPH, {"raw": {"b.jsonl"}}, FILES, {})
    assert plan.partitions == {"b.jsonl": ["raw", "clean"]}
    assert plan.assets == ["dedup", "augmented", "tokens", "model", "evaluation"]


def test_a_config_key_of_one_asset_reruns_it_and_its_descendants_only():
    plan = plan_run(GRAPH, {"model": {None}}, FILES, {})
    assert plan.partitions == {} and plan.assets == ["model", "evaluation"]


def test_a_clean_partition_alone_is_recleaned_without_rereading():
    plan = plan_run(GRAPH, {"clean": {"a.jsonl"}}, FILES, {})
    assert plan.partitions == {"a.jsonl": ["clean"]}


def test_a_failed_gate_holds_back_everything_downstream_until_its_asset_reruns():
    stale = {"tokens": {None}, "model": {None}, "evaluation": {None}}
    plan = plan_run(GRAPH, stale, FILES, {"augmented": [CONTAMINATED]})
    assert plan.empty
    assert plan.blocked == {"tokens": [CONTAMINATED], "model": [CONTAMINATED], "evaluation": [CONTAMINATED]}
    # Selecting the model, or forcing it, does not get past the gate either.
    assert plan_run(GRAPH, stale, FILES, {"augmented": [CONTAMINATED]}, select={"model"}).blocked == {
        "model": [CONTAMINATED]
    }
    forced = plan_run(GRAPH, {}, FILES, {"augmented": [CONTAMINATED]}, select={"model"}, full=True)
    assert forced.empty and list(forced.blocked) == ["model"]
    # New data upstream reruns the gated asset, and with it the gate: the plan goes through.
    fixed = plan_run(GRAPH, {"raw": {"a.jsonl"}, **stale}, FILES, {"augmented": [CONTAMINATED]})
    assert fixed.blocked == {} and fixed.assets[-4:] == ["augmented", "tokens", "model", "evaluation"]


def test_a_gate_that_never_ran_on_the_latest_materialisation_reruns_its_asset():
    not_run = Failed("augmented:schema_valid", "has not run on the latest materialisation", not_run=True)
    plan = plan_run(GRAPH, {}, FILES, {"augmented": [not_run]})
    assert plan.assets == ["augmented", "tokens", "model", "evaluation"] and plan.blocked == {}


def test_select_limits_the_run_and_full_redoes_the_selection():
    assert plan_run(GRAPH, {"raw": {"a.jsonl"}}, FILES, {}, select={"raw", "clean"}).assets == []
    full = plan_run(GRAPH, {}, FILES, {}, select={"raw", "clean", "dedup"}, full=True)
    assert full.partitions == {"a.jsonl": ["raw", "clean"], "b.jsonl": ["raw", "clean"]}
    assert full.assets == ["dedup"]
    with pytest.raises(ValueError, match=r"unknown assets \['modle'\]"):
        plan_run(GRAPH, {}, FILES, {}, select={"modle"})


def test_retrain_is_due_only_for_a_stale_model_behind_passed_gates_and_ingested_files():
    assert retrain(plan_run(GRAPH, {}, FILES, {}), "model") == (
        [],
        "model is up to date with its data, config and code",
    )
    assert retrain(plan_run(GRAPH, {"tokens": {None}}, FILES, {}), "model")[0] == [
        "tokens",
        "model",
        "evaluation",
    ]
    waiting = retrain(plan_run(GRAPH, {"raw": {"b.jsonl"}}, FILES, {}), "model")
    assert waiting == ([], "landing files not yet read and cleaned: b.jsonl (they are read first)")
    held = retrain(plan_run(GRAPH, {"model": {None}}, FILES, {"augmented": [CONTAMINATED]}), "model")
    assert held == ([], f"blocking checks did not pass: {CONTAMINATED.name} {CONTAMINATED.detail}")


def test_stale_landing_files_no_run_reads_are_read_by_whoever_asks():
    # b.jsonl changed (the sensor's request was lost); a.jsonl's cleaning rules changed.
    plan = plan_run(GRAPH, {"raw": {"b.jsonl"}, "clean": {"a.jsonl"}}, FILES, {})
    assert unread_partitions(plan, set()) == {"a.jsonl": ["clean"], "b.jsonl": ["raw", "clean"]}
    assert unread_partitions(plan, {"b.jsonl"}) == {"a.jsonl": ["clean"]}  # a run is on its way for b
    assert unread_partitions(plan_run(GRAPH, {"model": {None}}, FILES, {}), set()) == {}


#   base -> prompts[variant] -> evaluation <- model (prompts: one run per stale partition)
VARIANT_GRAPH = Graph(
    order=["base", "tokens", "prompts", "model", "evaluation"],
    parents={
        "base": set(),
        "tokens": {"base"},
        "prompts": {"base"},
        "model": {"tokens"},
        "evaluation": {"prompts", "model"},
    },  # fmt: skip
    partitioned=set(),
    by_variant={"prompts"},
)
VARIANT_KEYS = {"prompts": ["few_shot", "zero_shot"]}


def test_an_edited_variant_runs_its_partition_alone_then_what_reads_it():
    plan = plan_run(VARIANT_GRAPH, {"prompts": {"few_shot"}}, [], {}, variant_keys=VARIANT_KEYS)
    assert plan.variants == {"prompts": ["few_shot"]} and plan.assets == ["evaluation"]
    assert run_order(VARIANT_GRAPH, plan) == [(["prompts"], "few_shot"), (["evaluation"], None)]


def test_a_new_base_model_reruns_every_variant_partition_between_two_runs():
    plan = plan_run(VARIANT_GRAPH, {"base": {None}}, [], {}, variant_keys=VARIANT_KEYS)
    assert run_order(VARIANT_GRAPH, plan) == [
        (["base", "tokens", "model"], None),
        (["prompts"], "few_shot"),
        (["prompts"], "zero_shot"),
        (["evaluation"], None),
    ]
