"""KTO (`preference.method: kto`): thumbs-up/down answers and pairs taken apart, through the real launcher
and TRL's KTOTrainer on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.config import PreferenceConfig, TrainingConfig
from stages.model_source import save_base_model
from stages.preferences import kto_training_rows
from stages.spec import TrainingSpec

ROOT = Path(__file__).resolve().parents[2]
ASK = [{"role": "user", "content": "What does len() return?"}]


def test_a_pair_becomes_a_desirable_and_an_undesirable_answer_and_thumbs_count_once():
    pair = {"messages": [*ASK, {"role": "assistant", "content": "The number of items."}], "rejected": "A banana.",
            "origin": "ranked"}  # fmt: skip
    # Thumbs on one prompt, up and down, also make a pair (for the reward model): KTO takes them once.
    up = {"messages": [*ASK, {"role": "assistant", "content": "Its length."}], "label": True}
    down = {"messages": [*ASK, {"role": "assistant", "content": "Nothing."}], "label": False}
    thumbs_pair = {"messages": up["messages"], "rejected": "Nothing.", "origin": "thumbs"}
    rows = kto_training_rows([pair, thumbs_pair], [up, down])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("Its length.", True), ("Nothing.", False), ("The number of items.", True), ("A banana.", False)
    ]  # fmt: skip
    assert all(r["prompt"] == ASK for r in rows)


@pytest.mark.slow  # about 18 s
def test_kto_trains_on_thumbs_and_pairs_and_logs_its_kl(tmp_path: Path):
    save_base_model("bundled:tiny-random", tmp_path / "base")
    pairs = [{"messages": [{"role": "user", "content": f"What does helper_{i}() return?"},
                           {"role": "assistant", "content": f"It returns {i}."}],
              "rejected": "A banana, maybe.", "origin": "pair"} for i in range(4)]  # fmt: skip
    thumbs = [{"messages": [{"role": "user", "content": f"Name {i}?"},
                            {"role": "assistant", "content": f"Name {i}." if i % 2 else "No."}],
               "label": bool(i % 2)} for i in range(4)]  # fmt: skip
    (tmp_path / "kto.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kto_training_rows(pairs, thumbs))
    )
    (tmp_path / "pairs.jsonl").write_text("")  # DPO's file: KTO reads its own rows only
    out = tmp_path / "out"
    out.mkdir()
    spec = TrainingSpec(
        init_model_dir=tmp_path / "base", output_dir=out, checkpoint_dir=tmp_path / "ck",
        pairs_path=tmp_path / "pairs.jsonl", unpaired_path=tmp_path / "kto.jsonl",
        training=TrainingConfig(precision="fp32", learning_rate=1e-3),
        preference=PreferenceConfig(enabled=True, method="kto", weights="full", max_steps=2, batch_size=4,
                                    logging_steps=1, save_steps=100, max_length=64),
    ).write(tmp_path / "spec.json")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "stages.launch", "stages.dpo", str(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == "kto" and summary["rows"] == 4 + 2 * 4 and summary["steps"] == 2
    logged = [h for h in summary["history"] if "loss" in h]
    assert len(logged) == 2 and all("kl" in h and h["loss"] > 0 for h in logged)
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("on", [False, True])
def test_trls_trainers_checkpoint_gradients_as_the_config_says(tmp_path: Path, on: bool):
    """TRL's configs default gradient checkpointing to on; training.gradient_checkpointing decides."""
    from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig

    from stages.precision import resolve_precision
    from stages.train import trl_arguments

    cfg = TrainingConfig(precision="fp32", gradient_checkpointing=on)
    spec = TrainingSpec(init_model_dir=tmp_path, output_dir=tmp_path, checkpoint_dir=tmp_path, training=cfg)
    arguments = trl_arguments(spec, cfg, resolve_precision("fp32", "cpu"))
    for config in (DPOConfig, KTOConfig, RewardConfig, GRPOConfig):
        assert config(**arguments, max_steps=1).gradient_checkpointing is on, config.__name__
