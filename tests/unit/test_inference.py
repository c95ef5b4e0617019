"""Evaluation picks the training device: every model loaded after training runs where training ran, in
its precision (stages/inference.py), not on the CPU in fp32."""

import pytest
import torch

from stages.config import PipelineConfig
from stages.inference import inference_placement, load_saved
from stages.model_source import save_base_model
from stages.precision import resolve_precision


def _config(precision: str = "auto", model_dtype: str = "auto") -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"training": {"precision": precision}, "model": {"dtype": model_dtype}}
    )


@pytest.fixture
def a100(monkeypatch: pytest.MonkeyPatch) -> None:
    """A visible CUDA card of compute capability 8.0: what no machine here has. Only the device queries
    and the matmul probe (which would run on the card) are replaced; the decision is the real one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr("stages.precision.matmul_gflops", lambda dtype, device="cpu", n=2048, repeats=5: 1.0)


def test_with_a_gpu_visible_models_load_on_it_in_the_training_precision(a100):
    placement = inference_placement(_config())
    assert (placement.device, placement.dtype, placement.precision.name) == ("cuda", torch.bfloat16, "bf16")
    assert placement.as_metadata() == {
        "inference_device": "cuda",
        "inference_dtype": "bfloat16",
        "inference_precision": "bf16",
        "inference_precision_reason": "NVIDIA A100-SXM4-80GB, compute capability 8.0: native bf16",
    }
    # model.dtype decides the weights of a model that does not train; fp16 training stays fp16.
    assert inference_placement(_config(model_dtype="fp32")).dtype == torch.float32
    assert inference_placement(_config(precision="fp16")).dtype == torch.float16


def test_a_card_without_native_bf16_runs_inference_in_fp16(a100, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    placement = inference_placement(_config())
    assert (placement.device, placement.dtype) == ("cuda", torch.float16)


def test_on_a_cpu_the_placement_is_the_measured_training_precision(tmp_path):
    placement = inference_placement(_config())
    training = resolve_precision("auto", "cpu")  # what the training process chose on this machine
    assert (placement.device, placement.precision.name) == ("cpu", training.name)
    assert placement.dtype == training.dtype
    assert inference_placement(_config(precision="fp32")).dtype == torch.float32
    assert inference_placement(_config(precision="bf16")).dtype == torch.bfloat16

    save_base_model("bundled:tiny-random", tmp_path)
    model, _ = load_saved(tmp_path, inference_placement(_config(precision="bf16")))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert {p.device.type for p in model.parameters()} == {"cpu"}
