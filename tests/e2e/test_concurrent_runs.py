"""`tunegraph run` and a "Materialize" from the UI of the same assets, at the same time, 5 times.

Each asset writes a folder of its own run and downstream reads what Dagster recorded, so two runs
of one asset at once can only each record their own output: both finish, or one refuses with a
clear message, and no recorded output is mixed (every recorded folder is its own run's, and its
content is what Dagster recorded).
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
from conftest import TINY_CONFIG, instance_at, write_example_shards
from dagster_ui import dagster_dev
from test_faults import CONTENT, assert_outputs_match_their_records, assert_reads_were_recorded_and_gated

from resources.outputs import latest_recorded
from resources.settings import REPO_ROOT

DATA = ["deduplicated_corpus", "augmented_corpus", "tokenized_dataset"]


def tunegraph_run(home) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(TINY_CONFIG), "run",
                           "--select", ",".join(["raw_corpus", "clean_corpus", "base_model", *DATA])],
                          env={**os.environ, "TUNEGRAPH_HOME": str(home)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.mark.slow
def test_tunegraph_run_and_a_ui_materialize_of_the_same_assets_never_mix_outputs(home):
    [shard, *_] = write_example_shards(home, shards=2)
    assert tunegraph_run(home).returncode == 0  # the landing files read, the base model saved
    with dagster_dev(home, TINY_CONFIG) as ui:
        for i in range(5):
            with shard.open("a") as f:  # a data fix each round: both have the whole chain to redo
                f.write(
                    f'{{"instruction": "Round {i}?", "output": "The answer to round {i} is a sentence."}}\n'
                )
            with ThreadPoolExecutor(1) as pool:
                from_ui = pool.submit(ui.materialize, DATA)
                cli = tunegraph_run(home)
                status, errors = from_ui.result()
            assert cli.returncode == 0 or "may not run" in cli.stdout + cli.stderr, cli.stdout + cli.stderr
            assert status == "SUCCESS" or all(
                "may not run" in e or "materialised again" in e for e in errors
            ), errors
            with instance_at(home) as instance:
                for asset in DATA:
                    for entry in latest_recorded(instance, asset).values():
                        assert entry.folder.name == entry.run_id, f"{asset}: a folder of another run"
                assert_outputs_match_their_records(instance, instance.get_dynamic_partitions("landing_files"))
                assert_reads_were_recorded_and_gated(instance)
    # Both paths recorded outputs over the rounds, each its own.
    with instance_at(home) as instance:
        runs = {r.run_id: r for r in instance.get_runs()}
        sources = {runs[r.run_id].tags.get("tunegraph/source", "ui")
                   for r in instance.fetch_materializations(dg.AssetKey("tokenized_dataset"), limit=100).records}  # fmt: skip
    assert sources == {"cli", "ui"} and set(DATA) <= set(CONTENT)
