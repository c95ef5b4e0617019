"""Every shipped config validates; a bad value gets one line that names the key."""

import pytest

from resources.settings import REPO_ROOT
from stages.config import ConfigError, load_config, parse_config, parse_overrides


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.training.max_steps >= 1 and cfg.model.base.startswith("bundled:")


def test_invalid_value_names_the_key_on_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"learning_rate": -1}}, "my.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: training.learning_rate: Input should be greater than or equal to 0")


def test_unknown_key_and_unknown_bundle_are_refused():
    with pytest.raises(ConfigError, match=r"training.lerning_rate: Extra inputs are not permitted"):
        parse_config({"training": {"lerning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"model.base: .*unknown bundled model"):
        parse_config({"model": {"base": "bundled:gpt5"}})


def test_early_stopping_without_held_out_evaluation_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"early_stopping_patience": 2, "eval_steps": None}}, "my.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith(
        "my.yaml: training: Value error, early_stopping_patience needs eval_steps: "
        "set training.eval_steps or drop early stopping"
    )
    assert parse_config({"training": {"early_stopping_patience": 2}}).training.eval_steps == 20


def test_preference_method_names_the_algorithm_and_the_old_weights_values_point_to_their_key():
    assert parse_config({"preference": {"method": "grpo", "weights": "full"}}).preference.method == "grpo"
    with pytest.raises(ConfigError) as err:
        parse_config({"preference": {"method": "full"}}, "my.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith(
        "my.yaml: preference.method: Value error, preference.method now names the algorithm (dpo, kto, grpo or "
        "rloo); for full weights write preference.weights: full"
    )


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="pass --config PATH or set TUNEGRAPH_CONFIG"):
        load_config(tmp_path / "nope.yaml")


def test_corpus_fields_name_record_fields_turn_keys_and_roles_only():
    fields = {"messages": "dialogue", "role": "speaker", "content": "text", "role.assistant": "agent"}
    assert parse_config({"corpus": {"fields": fields}}).corpus.fields == fields
    with pytest.raises(
        ConfigError, match=r"corpus.fields: .*unknown canonical name\(s\) answer; use id, system"
    ):
        parse_config({"corpus": {"fields": {"answer": "output"}}})


def test_overrides_apply_on_top_of_the_yaml_and_get_the_same_one_line_errors():
    tiny = REPO_ROOT / "configs" / "tiny.yaml"
    cfg = load_config(
        tiny,
        {"training.max_steps": "3", "training.learning_rate": "5e-4", "data.augmentation.enabled": "false"},
    )
    assert (cfg.training.max_steps, cfg.training.learning_rate, cfg.data.augmentation.enabled) == (
        3,
        5e-4,
        False,
    )
    assert cfg.training.batch_size == load_config(tiny).training.batch_size  # the rest is the YAML's
    with pytest.raises(ConfigError) as err:
        load_config(tiny, {"training.max_stepz": "3"})
    assert (
        str(err.value)
        == f"{tiny} with training.max_stepz=3: training.max_stepz: Extra inputs are not permitted (got 3)"
    )
    with pytest.raises(
        ConfigError, match=r"with training.max_steps=0: training.max_steps: Input should be greater"
    ):
        load_config(tiny, {"training.max_steps": "0"})
    with pytest.raises(ConfigError, match=r"override training.max_steps.x: training.max_steps is a value"):
        load_config(tiny, {"training.max_steps.x": "1"})
    assert parse_overrides(["training.max_steps=10", "evaluation.system_prompt=Be brief."]) == {
        "training.max_steps": "10", "evaluation.system_prompt": "Be brief."
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"--set 'max_steps': write KEY=VALUE"):
        parse_overrides(["max_steps"])


def test_data_engine_is_local_or_ray_and_an_address_needs_ray():
    assert parse_config({}).data.engine == "local"
    ray = parse_config({"data": {"engine": "ray", "ray_address": "ray-head:6379"}}).data
    assert (ray.engine, ray.ray_address) == ("ray", "ray-head:6379")
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"engine": "spark"}})
    assert "\n" not in str(
        err.value
    ) and "data.engine: Input should be 'local' or 'ray' (got 'spark')" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"data: .*ray_address 'h:6379' is set but engine is 'local': set data.engine: ray"
    ):
        parse_config({"data": {"ray_address": "h:6379"}})


def test_the_engine_is_left_out_of_the_config_hash():
    # Where the data stages run, not what they compute: a model trained on data from either engine
    # has the same config hash, as training.launcher leaves it alone.
    local = parse_config({})
    ray = parse_config({"data": {"engine": "ray", "ray_address": "auto"}})
    assert ray.section_hash("corpus", "data", "model", "training") == local.section_hash(
        "corpus", "data", "model", "training"
    )
    assert parse_config({"data": {"seed": 1}}).section_hash("data") != local.section_hash("data")
