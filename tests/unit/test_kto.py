"""KTO (`preference.method: kto`): thumbs-up/down answers and pairs taken apart, through the real launcher
and TRL's KTOTrainer on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

from stages.config import PreferenceConfig, TrainingConfig
from stages.dpo import unpaired_rows
from stages.model_source import save_base_model
from stages.spec import TrainingSpec

ROOT = Path(__file__).resolve().parents[2]
ASK = [{"role": "user", "content": "What does len() return?"}]


def test_a_pair_becomes_a_desirable_and_an_undesirable_answer_beside_the_landed_thumbs():
    pairs = [{"prompt": ASK, "chosen": [{"role": "assistant", "content": "The number of items."}],
              "rejected": [{"role": "assistant", "content": "A banana."}]}]  # fmt: skip
    thumbs = [{"prompt": ASK, "completion": [{"role": "assistant", "content": "Its length."}], "label": 1}]
    rows = unpaired_rows(pairs, thumbs)
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("Its length.", True), ("The number of items.", True), ("A banana.", False)
    ]  # fmt: skip
    assert all(r["prompt"] == ASK for r in rows)


def test_kto_trains_on_thumbs_and_pairs_and_logs_its_kl(tmp_path: Path):
    save_base_model("bundled:tiny-random", tmp_path / "base")
    pairs = [{"prompt": [{"role": "user", "content": f"What does helper_{i}() return?"}],
              "chosen": [{"role": "assistant", "content": f"It returns {i}."}],
              "rejected": [{"role": "assistant", "content": "A banana, maybe."}]} for i in range(4)]  # fmt: skip
    thumbs = [{"prompt": [{"role": "user", "content": f"Name {i}?"}],
               "completion": [{"role": "assistant", "content": f"Name {i}." if i % 2 else "No."}],
               "label": bool(i % 2)} for i in range(4)]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(t) + "\n" for t in thumbs))
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
