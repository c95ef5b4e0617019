"""Where and in which format saved models run after training: one decision for every inference path.

Evaluation, generation, synthetic preference pairs, model paraphrases, `tunegraph chat` and the model
logged at registration all load through `load_saved(folder, inference_placement(cfg))`: the device
training runs on (a GPU when one is visible) and the format `training.precision` resolves to there,
with `model.dtype` for the weights. Before, every caller loaded fp32 on the CPU: for a 7B model trained
on a GPU, about 30 GB of host memory per loaded model and hours of evaluation.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages.config import PipelineConfig
from stages.precision import Precision, resolve_precision, training_device, weights_dtype


@dataclass(frozen=True)
class Placement:
    """Where a saved model runs for inference (evaluation, generation, pair synthesis, paraphrases, chat,
    registration) and in which format: where training ran, in the training precision."""

    device: str  # "cpu" or "cuda"
    dtype: torch.dtype
    precision: Precision

    def as_metadata(self) -> dict[str, str]:
        """Flat key -> value for Dagster metadata and MLflow tags."""
        return {
            "inference_device": self.device,
            "inference_dtype": str(self.dtype).removeprefix("torch."),
            "inference_precision": self.precision.name,
            "inference_precision_reason": self.precision.reason,
        }


def inference_placement(cfg: PipelineConfig, device: str | None = None) -> Placement:
    """The one decision of where and how models are loaded after training: the training device (a GPU when
    one is visible), the precision `training.precision` resolves to there, and the weights in `model.dtype`
    (auto: that precision's format; nothing trains, so no fp32 masters). A 7B model in bf16 on a GPU
    instead of fp32 on the CPU: 14 GB of device memory instead of 28 GB of host memory and hours."""
    device = device or training_device()
    precision = resolve_precision(cfg.training.precision, device)
    return Placement(device, weights_dtype(cfg.model.dtype, precision, trains_all_weights=False), precision)


def load_saved(folder: Path, placement: Placement) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder written by `save_base_model` or the fine-tune, on the placement's
    device and in its dtype, in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=placement.dtype).to(placement.device)
    return model.eval(), tokenizer
