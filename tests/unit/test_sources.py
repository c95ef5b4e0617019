"""The config keys assets declare they read: real keys, covering every setting, versioned by value."""

from pathlib import Path

from conftest import write_config

from assets.sources import ABSENT, CONFIG_KEYS, config_versions, landing_versions
from resources.settings import Paths, TunegraphSettings
from stages.config import PipelineConfig

# A label, when (not what) to retrain, and where the data stages run: data.engine's results are identical by
# contract (tests/e2e/test_ray_cluster.py), so switching engines makes no data asset stale.
NOT_READ_BY_ANY_ASSET = {"name", "schedule.retrain_cron", "data.engine", "data.ray_address"}
WATCHED_PER_VARIANT = {"prompts"}  # by the source prompt_variant, one partition per variant


def test_every_config_key_exists_and_every_setting_is_watched():
    flat = PipelineConfig().flat()
    for key in CONFIG_KEYS:
        assert any(k == key or k.startswith(f"{key}.") for k in flat), f"{key} is not a config key"
    unwatched = {k for k in flat if not any(k == c or k.startswith(f"{c}.") for c in CONFIG_KEYS)}
    assert unwatched == NOT_READ_BY_ANY_ASSET | WATCHED_PER_VARIANT


def test_a_changed_value_changes_only_the_keys_that_hold_it(tmp_path: Path):
    def versions(**overrides: dict) -> dict[str, str]:
        path = write_config(tmp_path / f"{len(list(tmp_path.iterdir()))}.yaml", **overrides)
        return config_versions(TunegraphSettings(home=str(tmp_path), config_path=str(path)))

    base = versions()
    lr = versions(training={"learning_rate": 5e-4})
    assert {k for k in CONFIG_KEYS if lr[k] != base[k]} == {"training"}
    tokens = versions(evaluation={"max_new_tokens": 9})
    assert {k for k in CONFIG_KEYS if tokens[k] != base[k]} == {"evaluation", "evaluation.max_new_tokens"}
    assert versions(schedule={"retrain_cron": "0 4 * * *"}) == base
    assert versions(data={"engine": "ray", "ray_address": "auto"}) == base  # where, not what

    # data.eval_files is versioned by the content of the files it names, too.
    (tmp_path / "eval.jsonl").write_text('{"instruction": "Q?", "output": "A."}\n')
    named = versions(data={"eval_files": ["eval.jsonl"]})
    (tmp_path / "eval.jsonl").write_text('{"instruction": "Q?", "output": "Another answer."}\n')
    edited = versions(data={"eval_files": ["eval.jsonl"]})
    assert {k for k in CONFIG_KEYS if named[k] != edited[k]} == {"data.eval_files"}


def test_landing_files_are_versioned_by_content_and_a_deleted_one_is_absent(tmp_path: Path):
    paths = Paths(tmp_path)
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "a.jsonl").write_text("one\n")
    first = landing_versions(paths, [], "auto")
    (tmp_path / "landing" / "a.jsonl").write_text("one\n")  # rewritten, same bytes
    assert landing_versions(paths, ["a.jsonl"], "auto") == first
    (tmp_path / "landing" / "a.jsonl").write_text("two\n")
    assert landing_versions(paths, ["a.jsonl"], "auto")["a.jsonl"] != first["a.jsonl"]
    (tmp_path / "landing" / "a.jsonl").unlink()
    assert landing_versions(paths, ["a.jsonl"], "auto") == {"a.jsonl": ABSENT}
