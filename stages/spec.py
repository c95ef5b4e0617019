"""The training process's spec: what a training asset writes as `spec.json`, and what
`python -m stages.train|stages.dpo|stages.reward|stages.rl SPEC.json` (and `stages.launch`) read.

Typed, so a missing or misspelt entry is a one-line error when the process starts, not a
KeyError after the model loaded. Paths are absolute: the process may run in a pod that mounts
the same state folder.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from stages.config import PreferenceConfig, TrainingConfig


class MlflowTarget(BaseModel):
    """The MLflow run the process logs its loss curve and system metrics to (rank 0 only)."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str
    run_id: str


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init_model_dir: Path = Field(description="The model (and tokenizer) training starts from.")
    output_dir: Path = Field(description="Where the trained model and train_summary.json are written.")
    checkpoint_dir: Path = Field(description="Where checkpoints go (and are resumed from).")
    training: TrainingConfig
    model_dtype: str = Field(
        default="auto", description="model.dtype: the frozen weights' format (stages/precision.py)."
    )
    train_path: Path | None = Field(default=None, description="SFT: the packed training blocks (Parquet).")
    eval_path: Path | None = Field(default=None, description="SFT: held-out examples for the eval loss.")
    block_size: int | None = Field(
        default=None, description="SFT: tokens per packed block (data.block_size), for the memory estimate."
    )
    pairs_path: Path | None = Field(default=None, description="DPO: preference pairs (JSONL).")
    unpaired_path: Path | None = Field(
        default=None, description="KTO: thumbs-up/down single answers (JSONL: prompt, completion, label)."
    )
    preference: PreferenceConfig | None = Field(
        default=None, description="DPO, KTO, GRPO, RLOO, the reward model: their settings."
    )
    prompts_path: Path | None = Field(
        default=None, description="GRPO/RLOO: held-in prompts (JSONL: `prompt` chat messages, `reference`)."
    )
    reward_model_dir: Path | None = Field(
        default=None,
        description="GRPO/RLOO: the reward model itself (`<reward_model output>/model`: a sequence classifier, "
        "num_labels 1, with its tokenizer).",
    )
    reward_pairs_path: Path | None = Field(
        default=None,
        description="Reward model: the canonical pairs (Parquet, with ids and preference_pairs' `heldout` split).",
    )
    resume_from: Path | None = Field(default=None, description="A checkpoint to resume from.")
    resumed_from_step: int | None = None
    parent_pid: int | None = Field(default=None, description="Stop if this process (the Dagster step) dies.")
    mlflow: MlflowTarget | None = None

    @classmethod
    def read(cls, path: Path) -> "TrainingSpec":
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=2))
        return path
