"""Online RL (stages/rl.py) on the tiny model: GRPO and RLOO each run two steps against a tiny reward model
and the rule rewards, and log reward and KL to the summary and to a real MLflow run; a killed run resumes
from its checkpoint. The training process runs as the asset launches it (`python -m stages.launch`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from resources.tracking import MlflowTracking
from stages import checkpoints, memory
from stages.config import PreferenceConfig, TrainingConfig
from stages.model_source import save_base_model
from stages.spec import MlflowTarget, TrainingSpec
from stages.tables import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
RL = {"num_generations": 2, "prompts_per_step": 2, "max_completion_tokens": 8, "learning_rate": 1e-3,
      "logging_steps": 1, "rewards": {"length": {"min_tokens": 2, "max_tokens": 6}}}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama as the policy, and a reward model as the contract has it (the tiny model's
    weights as a sequence classifier, num_labels 1, pad token set, saved with its tokenizer), and prompts."""
    root = tmp_path_factory.mktemp("rl")
    save_base_model("bundled:tiny-random", root / "policy")
    scorer = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    scorer.config.pad_token_id = tokenizer.pad_token_id
    scorer.save_pretrained(root / "reward" / "model")
    tokenizer.save_pretrained(root / "reward" / "model")
    write_jsonl(root / "prompts.jsonl", [
        {"id": str(i), "prompt": [{"role": "user", "content": f"What does helper_{i}() return?"}],
         "reference": f"It returns the integer {i}."} for i in range(8)
    ])  # fmt: skip
    return root


def rl_spec(tiny: Path, tmp_path: Path, method: str, run_id: str | None = None, **rl: object) -> TrainingSpec:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    home = tmp_path / "home"
    return TrainingSpec(
        init_model_dir=tiny / "policy",
        output_dir=out,
        checkpoint_dir=tmp_path / "checkpoints",
        training=TrainingConfig(method="lora", precision="fp32", seed=0),
        preference=PreferenceConfig(enabled=True, method=method, rl={**RL, **rl}),
        prompts_path=tiny / "prompts.jsonl",
        reward_model_dir=tiny / "reward" / "model",
        mlflow=MlflowTarget(tracking_uri=MlflowTracking(home=str(home)).uri(), run_id=run_id)
        if run_id
        else None,
    )


def start(spec: TrainingSpec) -> subprocess.Popen:
    path = spec.write(spec.output_dir / "spec.json")
    env = {**os.environ, "TUNEGRAPH_TORCH_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.launch", "stages.rl", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen, spec: TrainingSpec) -> dict:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return json.loads((spec.output_dir / "train_summary.json").read_text())


@pytest.mark.parametrize(
    "method", ["grpo", pytest.param("rloo", marks=pytest.mark.slow)]
)  # the same trainer path
def test_two_steps_log_reward_and_kl_to_the_summary_and_mlflow(tiny, tmp_path, method):
    tracking = MlflowTracking(home=str(tmp_path / "home"))
    client = tracking.client()
    run_id = client.create_run(tracking.experiment_id("rl-test")).info.run_id
    spec = rl_spec(tiny, tmp_path, method, run_id, max_steps=2, save_steps=100)
    summary = finish(start(spec), spec)

    assert summary["steps"] == 2 and summary["method"] == method
    assert summary["rewards"] == "reward_model x1, stops_at_eos x0.5, length x0.25, rouge_l x0.5"
    history = summary["history"]
    assert [h["step"] for h in history] == [1, 2]
    # Step 1 samples from the reference itself (KL 0); after one update the policy has moved.
    assert history[0]["kl"] == 0.0 and history[1]["kl"] != 0.0 and summary["kl"] == history[1]["kl"]
    assert summary["reward_first_steps"] == history[0]["reward"]
    assert summary["reward_last_steps"] == history[1]["reward"]
    # 2 steps of 2 prompts x 2 completions of 8 tokens (the random model never stops): 64 generated tokens.
    assert summary["generated_tokens"] == 64 and summary["generated_tokens_per_s"] > 0
    assert summary["train_tokens_per_s"] > 0 and summary["seconds_per_step"] > 0

    metrics = client.get_run(run_id).data.metrics
    for key in ("reward", "reward_std", "kl", "loss", "completions/mean_length", "rewards/reward_model/mean",
                "rewards/stops_at_eos/mean", "rewards/length/mean", "rewards/rouge_l/mean"):  # fmt: skip
        assert len(client.get_metric_history(run_id, key)) == 2, key
    assert metrics["rewards/length/mean"] == 0.75  # 8 tokens against at most 6: 6 / 8
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"reward.png", "generations.json"} <= artifacts

    generations = read_jsonl(spec.output_dir / "generations.jsonl")
    assert sorted({g["step"] for g in generations}) == [1, 2] and len(generations) == 8
    assert {"prompt", "completion", "reward", "reward_model", "rouge_l"} <= set(generations[0])
    assert (spec.output_dir / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tiny, tmp_path):
    spec = rl_spec(tiny, tmp_path, "grpo", max_steps=8, save_steps=2)
    key = {"data_version": "prompts-1", "config": "c", "code_version": "v"}
    checkpoints.plan_resume(spec.checkpoint_dir, key, "first")
    process = start(spec)
    deadline = time.monotonic() + 240
    while not checkpoints.checkpoints(spec.checkpoint_dir):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # as a lost machine or OOM kill would: no clean-up runs
    process.wait()
    assert not (spec.output_dir / "train_summary.json").exists()

    plan = checkpoints.plan_resume(spec.checkpoint_dir, key, "second")  # the asset's resume rule
    assert plan.checkpoint is not None and 2 <= plan.step < 8, plan.reason
    resumed = spec.model_copy(update={"resume_from": plan.checkpoint, "resumed_from_step": plan.step})
    summary = finish(start(resumed), resumed)
    assert summary["steps"] == 8 and summary["resumed_from_step"] == plan.step
    # The log history comes back with the checkpoint: the first steps' reward is the run's step 1.
    assert [h["step"] for h in summary["history"]] == list(range(plan.step + 1, 9))
    generations = read_jsonl(spec.output_dir / "generations.jsonl")
    assert min(g["step"] for g in generations) == 1 and max(g["step"] for g in generations) == 8


def test_the_memory_estimate_sizes_an_rl_step_by_its_completions(tiny, tmp_path):
    spec = rl_spec(tiny, tmp_path, "rloo", num_generations=4, prompts_per_step=3)
    run = memory.spec_run(spec, processes=1)
    # 3 prompts x 4 completions trained a step, each prompt + completion within preference.max_length.
    assert (run.batch_size, run.block_size, run.method) == (12, spec.preference.max_length, "lora")
