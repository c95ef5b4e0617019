"""A model users can take away, after a tiny run: it answers through `mlflow models serve`,
`tunegraph chat` and plain transformers exactly as the evaluation measured it, it carries its card
in the registry, it exports to GGUF within tolerance, and it was evaluated while it trained."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import output, write_config
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from assets.versions import latest_data_version
from pipelines import cli
from pipelines.runner import Runner
from resources.settings import REPO_ROOT, TunegraphSettings
from resources.tracking import MlflowTracking
from stages.gguf_export import TOLERANCE
from stages.tables import read_json, read_rows

MLFLOW = REPO_ROOT / ".venv" / "bin" / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer {url} within {timeout_s} s: {log.read_text()[-2000:]}")


@pytest.mark.slow  # about 50 s: keeps `make test` under 10 minutes with set-up on a slow day
def test_the_champion_answers_as_evaluated_everywhere_carries_its_card_and_exports_to_gguf(
    prepared_home, instance, tmp_path, capsys, monkeypatch
):
    # A full fine-tune, 30 steps at a high rate: the tiny random model then answers in tokens that
    # depend on the prompt (" the......." or "........"); with tiny.yaml's 6 steps it answers blank lines.
    training = {"method": "full", "learning_rate": 5e-3, "max_steps": 30, "eval_steps": 10, "save_steps": 30}
    config = write_config(tmp_path / "tiny.yaml", training=training, export={"gguf": True})
    settings = TunegraphSettings(home=str(prepared_home), config_path=str(config))
    record = Runner(settings, instance).run()
    assert record["status"] == "success", record["errors"]
    assert record["failed_checks"] == ["model_evaluation:generations_stop_at_eos"]  # a random tiny model
    paths = settings.paths()
    tracking = MlflowTracking(home=str(prepared_home))
    client = tracking.client()
    registry = read_json(output(instance, "fine_tuned_model") / "mlflow.json")
    assert (
        str(client.get_model_version_by_alias("tunegraph-tiny", "champion").version)
        == registry["version"]
        == "1"
    )

    # Evaluated while it trained: held-out loss every 10 steps in MLflow, beside the training loss.
    eval_loss = client.get_metric_history(registry["mlflow_run_id"], "eval_loss")
    assert [m.step for m in eval_loss] == [10, 20, 30] and eval_loss[-1].value < eval_loss[0].value
    assert [m.step for m in client.get_metric_history(registry["mlflow_run_id"], "loss")] == list(
        range(2, 31, 2)
    )
    summary = read_json(output(instance, "fine_tuned_model") / "train_summary.json")
    assert summary["eval_loss"] == pytest.approx(eval_loss[-1].value)

    # The evaluated decoding is the model's own: greedy, the penalty, the token limit, EOS/pad.
    model_dir = output(instance, "fine_tuned_model") / "model"
    saved = json.loads((model_dir / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert saved["do_sample"] is False and saved["repetition_penalty"] == 1.1 and saved["max_new_tokens"] == 8
    assert (saved["eos_token_id"], saved["pad_token_id"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)

    # The evaluation's own greedy answers to held-out prompts (the samples it records).
    evaluation = read_json(output(instance, "model_evaluation") / "summary.json")
    held_out = {r["messages"][-2]["content"]: r for r in read_rows(output(instance, "deduplicated_corpus")
                                                                    / "eval" / "held_out.parquet")}  # fmt: skip
    samples = [s for s in evaluation["samples"] if len(held_out[s["prompt"]]["messages"]) == 2][:3]
    assert samples and any(s["fine_tuned"] for s in samples), "the tiny model answered nothing at all"

    # Plain transformers: from_pretrained + generate with no arguments gives the same answers.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for sample in samples:
        messages = [{"role": "user", "content": sample["prompt"]}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        generated = model.generate(**inputs)[0, inputs["input_ids"].shape[1] :].tolist()
        cut = (
            generated[: generated.index(tokenizer.eos_token_id)]
            if tokenizer.eos_token_id in generated
            else generated
        )
        assert tokenizer.decode(cut, skip_special_tokens=True).strip() == sample["fine_tuned"]

    # `tunegraph chat`, streaming to the terminal: the same answers.
    capsys.readouterr()  # what the run printed
    for sample in samples:
        assert cli.main(["--config", str(config), "chat", sample["prompt"]]) == 0
        assert capsys.readouterr().out.strip() == sample["fine_tuned"]

    # Interactive without a question: the conversation goes on until an empty line.
    questions = iter([samples[0]["prompt"], "And in one word?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions))
    assert cli.main(["--config", str(config), "chat", "--model", "1"]) == 0
    session = capsys.readouterr().out.splitlines()
    assert session[0].startswith("tunegraph-tiny v1, with its chat template and saved decoding")
    assert session[1] == samples[0]["fine_tuned"] and len(session) == 3  # greeting, two answers

    # `mlflow models serve` on the champion, offline, answering OpenAI-style chat requests.
    port, log = _free_port(), tmp_path / "serve.log"
    # As from an activated virtualenv: mlflow starts `uvicorn` by name.
    env = {**os.environ, "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": tracking.uri(), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(MLFLOW), "models", "serve", "-m", "models:/tunegraph-tiny@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        for sample in samples:
            response = _post(
                f"http://127.0.0.1:{port}/invocations",
                {"messages": [{"role": "user", "content": sample["prompt"]}]},
            )
            [choice] = response["choices"] if isinstance(response, dict) else response[0]["choices"]
            assert choice["message"]["content"].strip() == sample["fine_tuned"]
    finally:
        server.terminate()
        server.wait(timeout=60)

    # The model card of version 1, in its MLflow artifacts: base model, licence, the evaluation
    # against the baselines, the decoding, and the data versions it was trained on.
    tracking.activate()
    card_path = Path(
        mlflow.artifacts.download_artifacts("models:/tunegraph-tiny/1/README.md", dst_path=str(tmp_path))
    )
    card = ModelCard.load(card_path)
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    text = card_path.read_text()
    lineage = read_json(output(instance, "fine_tuned_model") / "lineage.json")
    for landing in lineage["landing_files"].values():
        assert f"`{landing['content_hash']}`" in text
    for asset in ("tokenized_dataset", "augmented_corpus", "base_model"):
        assert f"- `{asset}`: `{latest_data_version(instance, asset)}`" in text
    assert f"MLflow run: `{registry['mlflow_run_id']}`" in text and "Dagster run: `" in text
    for variant in ("base_zero_shot", "base_system_prompt", "base_few_shot", "fine_tuned"):
        assert f"| {variant} " in text
    assert "| repetition_penalty | 1.1 " in text and "Promotion (perplexity): promoted to `champion`" in text
    # The model folder's own copy was written at registration, before the evaluation.
    assert "Not evaluated yet" in (model_dir / "README.md").read_text()

    # GGUF: both types written from the champion and read back by transformers within tolerance.
    exported = read_json(output(instance, "gguf_model") / "summary.json")
    assert exported["version"] == "1" and [c["kind"] for c in exported["checks"]] == ["f16", "q8_0"]
    for check in exported["checks"]:
        assert check["passed"] and check["tokenizer_matches"] and check["positions"] > 100
        assert check["relative_diff"] <= TOLERANCE[check["kind"]] and check["top1_agreement"] == 1.0
        assert (output(instance, "gguf_model") / check["file"]).stat().st_size > 1_000_000

    # `tunegraph push`: the upload folder holds the model, the evaluated card and the GGUF files;
    # the hub is unreachable here, so the push itself fails with what to check.
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", os.environ["HF_ENDPOINT"])
    assert cli.main(["--config", str(config), "push", "someone/tiny"]) == 1
    err = capsys.readouterr().err
    assert "could not push to http://127.0.0.1:" in err and "HF_TOKEN" in err
    staged = paths.hub_upload("tunegraph-tiny", "1")
    assert sorted(p.name for p in staged.iterdir()) == sorted([
        "README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json", "tunegraph-tiny-v1-f16.gguf", "tunegraph-tiny-v1-q8_0.gguf",
    ])  # fmt: skip
    assert (staged / "README.md").read_text() == text
