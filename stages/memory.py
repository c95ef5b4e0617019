"""The memory a training run needs, estimated from shapes before anything loads, and the gate that
refuses a run which cannot fit its device, in one line with the setting that would make it fit.

    estimate(ModelShape.read(model_dir), RunShape.of(training, block_size, ...), "cuda").total

The parts, per process (bytes):
- weights: every parameter at the weights' dtype (`formats`: model.dtype and the training precision);
- optimizer states: AdamW's two moments at the trainable parameters' dtype (LoRA adapters are fp32).
  FSDP / ZeRO-3 divide weights, states and gradients by the processes and gather one unit (a layer,
  or the embeddings) at a time, twice over with prefetch; DDP adds gradient buckets;
- activations: what each decoder layer keeps for backward, per token 11 x hidden + 4 x intermediate
  values (the norms' inputs and outputs, q, k and v, k and v expanded to every head, the attention
  output and o_proj's input; the MLP's gate, its activation, up and their product), more with LoRA
  dropout, and on a CPU the attention's scores and probabilities; with gradient checkpointing each
  layer's input, and in backward one layer's recomputed set and its gradients;
- gradients: the trainable parameters' gradients and AdamW's foreach temporary (they overlap the
  activations: written as backward frees them; `Estimate.total` counts the larger);
- loss: the chunked loss's one [chunk rows x vocab] logits buffer, the head's fp32 gradient and the
  scored rows' hidden states and gradients (every token counted as scored: an upper bound); the
  model's own loss for heads the chunked one cannot reproduce: logits, log-softmax and gradient;
- runtime: the process's own (libraries, CUDA context), a constant.

A run fits when the total stays under 90 % of the device's memory (CUDA: the card's total memory,
per process; CPU: the machine's available memory, shared by every process), the rest left to the
allocator's fragmentation.
"""

import functools
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from stages.chunked_loss import CHUNK_ROWS, PLAIN_HEAD_MODELS
from stages.precision import Precision, cuda_choice, weights_dtype
from stages.spec import TrainingSpec

GB = 1e9
# Set by `stages.launch` for the training process, which reports them (train_summary.json, MLflow).
ESTIMATE_ENV, DEVICE_MEMORY_ENV = "TUNEGRAPH_MEMORY_ESTIMATE", "TUNEGRAPH_DEVICE_MEMORY"
HEADROOM = 0.9  # the share of a device's memory a run may plan to use
# Per process, measured after imports on this machine: 0.54 GB RSS (torch, transformers, datasets, peft);
# a CUDA context adds ~0.5 GB on the card.
RUNTIME_BYTES = {"cpu": 0.5 * GB, "cuda": 1.0 * GB}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's sizes, as its config.json gives them (no weights needed)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            hidden=hidden,
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            model_type=config.get("model_type", "llama"),
        )

    @classmethod
    def read(cls, model_dir: Path) -> "ModelShape":
        return cls.from_config(json.loads((Path(model_dir) / "config.json").read_text()))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    @property
    def layer_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden  # + two norms

    @property
    def embedding_parameters(self) -> int:
        """The embeddings, the final norm and an untied head: what sits outside the decoder layers."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.embedding_parameters


@dataclass(frozen=True)
class RunShape:
    """What of a training run decides its memory, beside the model's shape."""

    method: str  # "lora" or "full"
    batch_size: int
    block_size: int
    gradient_checkpointing: bool = False
    processes: int = 1
    sharded: bool = False  # FSDP or ZeRO-3: states split over the processes
    weight_bytes: int = 4  # the weights' dtype (model.dtype): 4 fp32, 2 bf16/fp16
    activation_bytes: int = 4  # 2 under bf16/fp16 autocast
    lora_r: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0

    @classmethod
    def of(
        cls,
        training: Any,
        block_size: int,
        processes: int,
        precision: str = "no",
        weight_bytes: int = 4,
    ) -> "RunShape":
        """The run a TrainingConfig asks for, on `processes` processes; `precision` ("no", "bf16", "fp16")
        and `weight_bytes` are decided by the caller (the precision probe and model.dtype)."""
        targets = training.lora.target_modules
        return cls(
            method=training.method,
            batch_size=training.batch_size,
            block_size=block_size,
            gradient_checkpointing=training.gradient_checkpointing,
            processes=processes,
            sharded=training.distributed in ("fsdp", "deepspeed") and processes > 1,
            weight_bytes=weight_bytes,
            activation_bytes=4 if precision == "no" else 2,
            lora_r=training.lora.r,
            lora_targets=targets if isinstance(targets, str) else tuple(targets),
            lora_dropout=training.lora.dropout,
        )


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]  # bytes per process, by part

    @property
    def total(self) -> float:
        """The peak: gradients are written as backward frees the activations, and AdamW's temporary lives
        after backward, so the larger of (activations + loss) and (gradients) counts, not their sum."""
        p = self.parts
        passes = max(p["activations"] + p["loss"], p["gradients"])
        return p["weights"] + p["optimizer states"] + passes + p["runtime"]

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GB:.2f}" for name, value in self.parts.items())
        return f"{self.total / GB:.1f} GB ({parts})"


def trainable_parameters(model: ModelShape, run: RunShape) -> int:
    if run.method == "full":
        return model.parameters
    targets = LINEARS if run.lora_targets == "all-linear" else run.lora_targets
    shapes = model.linear_shapes()
    return model.layers * sum(run.lora_r * sum(shapes[name]) for name in targets if name in shapes)


def estimate(model: ModelShape, run: RunShape, device_type: str) -> Estimate:
    """The bytes one training process needs at its peak (module docstring for each part)."""
    trainable = trainable_parameters(model, run)
    trainable_bytes = 4 if run.method == "lora" else run.weight_bytes
    weights = model.parameters * run.weight_bytes
    states = 2 * trainable * trainable_bytes  # AdamW's two moments
    gradients = 2 * trainable * trainable_bytes  # the gradients and the foreach AdamW step's temporary
    if run.sharded:
        unit = max(model.layer_parameters, model.embedding_parameters) * run.weight_bytes
        weights, states, gradients = (
            weights / run.processes + 2 * unit,
            states / run.processes,
            gradients / run.processes,
        )
    elif run.processes > 1:
        gradients += trainable * trainable_bytes  # DDP's gradient buckets

    h, i, tokens = model.hidden, model.intermediate, run.batch_size * run.block_size
    per_layer = tokens * (
        11 * h + 4 * i + (6 * h + i if run.method == "lora" and run.lora_dropout > 0 else 0)
    )
    if device_type != "cuda":
        # CPU attention keeps each example's scores and probabilities for backward (at most block_size² per
        # row and head): measured, a 4 x 512 batch's peak grew by that (134 MB over 4 layers, 4 heads).
        per_layer += 2 * run.batch_size * model.heads * run.block_size**2
    # Checkpointed: each layer's input, and in backward one layer's recomputed activations and their gradients.
    kept = (
        tokens * model.layers * h + 2 * per_layer if run.gradient_checkpointing else model.layers * per_layer
    )
    activations = kept * run.activation_bytes

    head_grad = model.vocab * h * 4 if run.method == "full" else 0
    if model.model_type in PLAIN_HEAD_MODELS:
        loss = min(CHUNK_ROWS, tokens) * model.vocab * run.activation_bytes + head_grad + tokens * h * 4 * 3
    else:
        loss = 3 * tokens * model.vocab * 4 + head_grad
    return Estimate(
        {
            "weights": weights,
            "optimizer states": states,
            "gradients": gradients,
            "activations": activations,
            "loss": loss,
            "runtime": RUNTIME_BYTES["cuda" if device_type == "cuda" else "cpu"],
        }
    )


@dataclass(frozen=True)
class DeviceMemory:
    name: str  # "cuda:0 (NVIDIA A10G)" or "this machine's available memory"
    bytes: float
    shared: bool  # True: every process draws on it (a CPU's RAM); False: each process has its own


def device_memory(devices: Sequence[str]) -> DeviceMemory:
    """The memory each training process gets: the smallest of the CUDA cards it runs on (their total
    memory), or, with none, the memory this machine has available now (shared by the processes)."""
    if not devices:
        import psutil

        return DeviceMemory("this machine's available memory", psutil.virtual_memory().available, True)
    import torch

    sizes = [(torch.cuda.get_device_properties(i).total_memory, i) for i in range(len(devices))]
    size, index = min(sizes)
    return DeviceMemory(f"cuda:{index} ({torch.cuda.get_device_name(index)})", size, False)


class DoesNotFit(ValueError):
    """A run that would run out of memory; its message is one line with the setting that would fit."""


def needed(model: ModelShape, run: RunShape, memory: DeviceMemory, device_type: str) -> float:
    """Bytes of `memory` the run uses: a process's estimate, times the processes where they share it."""
    return estimate(model, run, device_type).total * (run.processes if memory.shared else 1)


def check_fit(model: ModelShape, run: RunShape, memory: DeviceMemory, device_type: str) -> Estimate:
    """The run's estimate when it fits `memory`; otherwise DoesNotFit naming what would make it fit."""
    found = estimate(model, run, device_type)
    if needed(model, run, memory, device_type) <= HEADROOM * memory.bytes:
        return found
    where = f"{run.processes} processes x " if memory.shared and run.processes > 1 else ""
    raise DoesNotFit(
        f"this run needs about {where}{found.describe()} but {memory.name} has {memory.bytes / GB:.1f} GB "
        f"(planned to {HEADROOM:.0%}): {remedy(model, run, memory, device_type)}"
    )


def remedy(model: ModelShape, run: RunShape, memory: DeviceMemory, device_type: str) -> str:
    """The fewest settings that together make the run fit, the least intrusive first (one setting when
    one is enough), as the refusal states them."""

    def use(candidate: RunShape) -> float:
        return needed(model, candidate, memory, device_type)

    groups = candidates(run, device_type == "cuda")
    for count in range(1, len(groups) + 1):
        for chosen in itertools.combinations(groups, count):
            for options in itertools.product(*chosen):
                combined = functools.reduce(lambda at, option: merged(at, option[1], run), options, run)
                if use(combined) <= HEADROOM * memory.bytes:
                    labels = [label for label, _ in options]
                    listed = labels[0] if count == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
                    return f"set {listed} (about {use(combined) / GB:.1f} GB)"
    return "no setting here makes it fit: use a smaller model.base or a device with more memory"


def candidates(run: RunShape, gpus: bool) -> list[list[tuple[str, RunShape]]]:
    """Settings that lower the run's memory, least intrusive first; each group's options mildest first."""
    groups = []
    if not run.gradient_checkpointing:
        groups.append([("training.gradient_checkpointing: true", replace(run, gradient_checkpointing=True))])
    if run.batch_size > 1:
        sizes = sorted({run.batch_size // 2, 1}, reverse=True)
        groups.append([(f"training.batch_size: {size} (gradient_accumulation_steps x{run.batch_size // size} "
                        "keeps the batch)", replace(run, batch_size=size)) for size in sizes])  # fmt: skip
    if run.weight_bytes > 2:
        groups.append([("model.dtype: bf16", replace(run, weight_bytes=2))])
    if run.method == "full":
        groups.append([("training.method: lora", replace(run, method="lora"))])
    if gpus and not run.sharded:
        groups.append([(f"training.distributed: fsdp over {n} GPUs", replace(run, sharded=True, processes=n))
                       for n in (2, 4, 8, 16, 32, 64)])  # fmt: skip
    return groups


def merged(current: RunShape, candidate: RunShape, original: RunShape) -> RunShape:
    """`current` with what `candidate` changed from `original` applied too."""
    changed = {k: v for k, v in candidate.__dict__.items() if original.__dict__[k] != v}
    return replace(current, **changed)


def spec_run(
    spec: TrainingSpec, processes: int, precision: str = "no", weight_bytes: int = 4
) -> RunShape | None:
    """The run a training spec asks for, or None when it does not say its sequence length (a spec written
    by hand without block_size). DPO and the reward model hold a chosen and a rejected sequence of
    max_length per pair; GRPO and RLOO train prompts_per_step x num_generations completions, prompt and
    completion within max_length (stages/rl.py leaves longer prompts out); their frozen reward model (and
    with full weights the reference copy) are not counted. `precision` and `weight_bytes` default to fp32,
    an upper bound until the caller knows them."""
    if spec.preference is not None:
        pref = spec.preference
        if spec.reward_pairs_path is not None:  # the reward model, under its own settings
            run = RunShape.of(spec.training, pref.reward_model.max_length, processes, precision, weight_bytes)
            return replace(run, method=pref.weights, batch_size=2 * pref.reward_model.batch_size)
        run = RunShape.of(spec.training, pref.max_length, processes, precision, weight_bytes)
        rollouts = pref.rl.prompts_per_step * pref.rl.num_generations
        batch = rollouts if pref.method in ("grpo", "rloo") else 2 * pref.batch_size
        return replace(run, method=pref.weights, batch_size=batch)
    if spec.block_size is None:
        return None
    return RunShape.of(spec.training, spec.block_size, processes, precision, weight_bytes)


def formats(spec: TrainingSpec, devices: Sequence[str]) -> tuple[str, int]:
    """(autocast format "no" | "bf16" | "fp16", bytes per weight) the run will train with.

    On GPUs as the training process decides (stages/precision.py: by compute capability, no probe needed);
    on a CPU the probe would cost half a second before every launch, so fp32 is assumed there (an upper
    bound) and the weights follow model.dtype through the same rule (`weights_dtype`)."""
    trains_all = (
        spec.training.method == "full" if spec.preference is None else spec.preference.weights == "full"
    )
    if devices:
        capability, name = torch.cuda.get_device_capability(0), torch.cuda.get_device_name(0)
        precision = cuda_choice(spec.training.precision, capability, name)
    else:
        precision = Precision("fp32", "cpu", "assumed before the probe: an upper bound")
    return precision.trainer_flag, weights_dtype(spec.model_dtype, precision, trains_all).itemsize


def gate(spec: TrainingSpec, devices: Sequence[str], processes: int) -> tuple[Estimate, DeviceMemory] | None:
    """Refuse (DoesNotFit) a run whose estimate does not fit the memory of `devices` (the GPUs it trains
    on; none: this machine's RAM); else (estimate, memory), or None when the spec gives no sequence length."""
    run = spec_run(spec, processes, *formats(spec, devices))
    if run is None:
        return None
    memory = device_memory(devices[:processes])
    device_type = "cuda" if devices else "cpu"
    return check_fit(ModelShape.read(spec.init_model_dir), run, memory, device_type), memory
