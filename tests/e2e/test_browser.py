"""The UI as a user sees it, in a real browser (Debian's Chromium, driven by Playwright): the asset
graph by stage, the checks, the dataset card, the evaluation table, the loss curve and its MLflow
links, MLflow's training runs compared, and "Materialize" clicked until the run succeeds.
Screenshots go to the state folder's screenshots/ (the README's picture is one of them)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_CONFIG, training_runs, write_example_shards
from dagster_ui import tunegraph_ui

from resources.settings import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # fmt: skip  (no calls out of this closed network)
RECENT_RUNS = "{ runsOrError(limit: 5) { ... on Runs { results { runId status assetSelection { path } } } } }"


def cli(home: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--config", str(TINY_CONFIG), *args],
                          env={**os.environ, "TUNEGRAPH_HOME": str(home)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is installed by `make test-slow`")
def test_the_ui_shows_what_a_user_looks_for(home):
    from playwright.sync_api import expect, sync_playwright

    write_example_shards(home, shards=2)
    cli(home, "run")
    cli(home, "run", "--set", "training.learning_rate=5e-4")  # a second fine-tune to compare
    shots = home / "screenshots"
    shots.mkdir()
    with tunegraph_ui(home, TINY_CONFIG) as (ui, _, mlflow_port), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        dagster = ui.url.removesuffix("/graphql")

        # The data stage's asset graph, every asset synced (green).
        page.goto(f"{dagster}/locations/tunegraph/asset-groups/data")
        # "Join the Dagster community" on a first visit, in some Dagster versions: skipped if it comes.
        skip = page.get_by_role("button", name="Skip")
        expect(skip.or_(page.get_by_text("raw_corpus", exact=True).first)).to_be_visible(timeout=30_000)
        if skip.is_visible():
            skip.click()
        for asset in ("raw_corpus", "clean_corpus", "augmented_corpus", "tokenized_dataset"):
            expect(page.get_by_text(asset, exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "asset-graph.png")

        # The gates before training, each passed.
        page.goto(f"{dagster}/assets/augmented_corpus?view=checks")
        for check in ("no_eval_contamination", "duplicate_rate", "no_residual_pii"):
            expect(page.get_by_text(check, exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "checks.png")

        # The dataset card with its histogram, on tokenized_dataset.
        page.goto(f"{dagster}/assets/tokenized_dataset")
        card = page.get_by_text("Dataset card").first
        card.scroll_into_view_if_needed(timeout=30_000)
        expect(page.get_by_text("documents in:").first).to_be_visible()
        # The histogram is a long markdown value: Dagster shows it behind "[Show Markdown]".
        show_markdown(page, "length_histogram")
        expect(page.locator("img[alt='example lengths']")).to_have_count(1)
        page.screenshot(path=shots / "dataset-card.png")

        # The leaderboard: every prompting baseline against the fine-tuned model.
        page.goto(f"{dagster}/assets/model_evaluation")
        show_markdown(page, "leaderboard")  # a long table: behind "[Show Markdown]"
        for variant in ("base_zero_shot", "base_few_shot", "fine_tuned", "champion"):
            expect(page.get_by_text(variant, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "evaluation.png")

        # The loss curve, and links to the MLflow run and the registered version.
        page.goto(f"{dagster}/assets/fine_tuned_model")
        show_markdown(page, "loss_curve")
        expect(page.locator("img[alt='training loss']")).to_have_count(1, timeout=30_000)
        links = [
            page.get_by_role("link").nth(i).get_attribute("href")
            for i in range(page.get_by_role("link").count())
        ]
        assert any("/runs/" in h and "workflowType=machine_learning" in h for h in links if h), links
        assert any("/#/models/tunegraph-tiny/versions/2" in h for h in links if h), links
        page.screenshot(path=shots / "fine-tune.png")

        # MLflow: the training runs, named by what differs, then the two fine-tunes compared.
        runs = training_runs(home)
        experiment = runs[0].info.experiment_id
        mlflow = f"http://127.0.0.1:{mlflow_port}"
        page.goto(f"{mlflow}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        expect(page.get_by_text("sft v2 · data", exact=False).first).to_be_visible(timeout=60_000)
        expect(
            page.get_by_text("leaderboard base_zero_shot", exact=False).first
        ).to_be_visible()  # a prompt row
        page.screenshot(path=shots / "mlflow-runs.png")
        ids = json.dumps([r.info.run_id for r in runs])
        page.goto(f"{mlflow}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}")
        expect(page.get_by_text("Comparing 2 Runs", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("training.learning_rate", exact=True).first).to_be_visible()
        page.screenshot(path=shots / "mlflow-compare.png")

        # "Materialize" clicked on an asset's page, and the run it launched succeeds.
        page.goto(f"{dagster}/assets/deduplicated_corpus")
        page.get_by_role("button").filter(has_text="Materialize").first.click(timeout=30_000)
        deadline = time.time() + 300
        while True:
            # The click's run; automation may launch the assets below it right after (eager), so it
            # need not stay the latest.
            runs = ui.query(RECENT_RUNS)["runsOrError"]["results"]
            run = next((r for r in runs if r["assetSelection"] == [{"path": ["deduplicated_corpus"]}]), None)
            if run and run["status"] == "SUCCESS":
                break
            assert run is None or run["status"] not in ("FAILURE", "CANCELED"), run
            assert time.time() < deadline, f"the run launched from the UI did not succeed: {run or runs}"
            time.sleep(1)
        page.goto(f"{dagster}/runs/{run['runId']}")
        expect(page.get_by_text("Success", exact=False).first).to_be_visible(timeout=60_000)
        page.screenshot(path=shots / "materialize-run.png")
        browser.close()
    assert sorted(p.name for p in shots.iterdir()) == sorted([
        "asset-graph.png", "checks.png", "dataset-card.png", "evaluation.png", "fine-tune.png",
        "mlflow-compare.png", "mlflow-runs.png", "materialize-run.png"])  # fmt: skip


def show_markdown(page, key: str) -> None:  # noqa: ANN001
    """Open a metadata entry's markdown: Dagster shows a long value behind "[Show Markdown]"."""
    row = page.get_by_role("row").filter(has_text=key)
    row.get_by_text("[Show Markdown]").first.click(timeout=30_000)
