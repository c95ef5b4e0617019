"""The fine-tune, as a process of its own: `python -m stages.train SPEC.json`.

Launched by the `fine_tuned_model` asset with `accelerate launch` (or `torchrun` for CPU DDP)
through Dagster Pipes: logs and the final metadata stream back to the asset. It also runs by
hand with the same spec file. The spec names the model to start from, the packed training
blocks, the held-out rows (their loss is measured every `training.eval_steps`), the output and
checkpoint folders, the checkpoint to resume (if any), the training config and the MLflow run
to log metrics to. LoRA adapters are merged before saving, so the
output folder is a plain model with the tokenizer and chat template.

Under DDP every rank trains; only rank 0 talks to Dagster and MLflow and saves the model.
"""

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import ExportableState

from stages.chat import IGNORE_INDEX, label_positions
from stages.checkpoints import AtomicCheckpoints
from stages.chunked_loss import CHUNK_ROWS, plain_head, scored_loss
from stages.config import LoraSettings, TrainingConfig
from stages.launch import malloc_in_use
from stages.memory import DEVICE_MEMORY_ENV, ESTIMATE_ENV
from stages.packed_attention import PACKED_SDPA, use_packed_sdpa
from stages.precision import Precision, resolve_precision, training_device, weights_dtype
from stages.spec import TrainingSpec

RANK = int(os.environ.get("RANK", "0"))
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))


class CheckpointedTrainer(AtomicCheckpoints, Trainer):
    """The HF Trainer, with checkpoints renamed into place only once complete, held-out batches
    collated apart from the training ones (the throughput counts training tokens only), and the loss
    of PackedCollator batches computed a chunk of logits at a time (stages/chunked_loss.py)."""

    def __init__(
        self, *args: Any, eval_collator: Any = None, budget: "TimeBudget | None" = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.budget = budget

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """HF's cosine schedule, or under a time budget the same curve ending where the budget says."""
        if self.budget is None or self.budget.seconds is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup, budget = self.args.get_warmup_steps(num_training_steps), self.budget
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer or self.optimizer, lambda step: cosine_with_warmup(step, warmup, budget.end)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The chunked loss where the model's head allows it (plain_head), else the model's own."""
        head = plain_head(self.accelerator.unwrap_model(model))
        custom = self.compute_loss_func is not None or self.label_smoother is not None
        if head is None or "shift_labels" not in inputs or custom:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = scored_loss(model, inputs, head, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens, DDP averages the ranks.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        train_collator, self.data_collator = self.data_collator, self.eval_collator or self.data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator


class ParentWatch(TrainerCallback):
    """Stop when the Dagster step that launched us is gone (killed run): no orphaned training."""

    def __init__(self, parent_pid: int | None):
        self.parent_pid = parent_pid

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.parent_pid is None:
            return
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            raise SystemExit(
                f"the launching process {self.parent_pid} is gone: stopping at step {state.global_step}"
            ) from None


def budgeted_end(done: int, elapsed_s: float, budget_s: float, pace_s: float, end: int) -> int:
    """The step a time budget ends training at: as many more steps as the time left holds at `pace_s`
    a step, never later than the current `end` (so the learning rate never jumps back up), never
    before `done`."""
    return max(done, min(end, done + int((budget_s - elapsed_s) / pace_s)))


def cosine_with_warmup(step: int, warmup: int, end: int) -> float:
    """The learning-rate factor of HF's cosine schedule, for a schedule that ends at `end`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# Steps measured before the first plan: planned from one step, a demo run ended at step 14 of a
# budget that held 22 (its second step took 6 s, the ones after it 4 s).
PACE_STEPS = 3


class TimeBudget(TrainerCallback, ExportableState):
    """Fit training into `training.max_minutes`, sized by measurement: after every step (once
    PACE_STEPS steps after this process's first are measured) the learning-rate schedule's end moves to the last step that the time left
    holds at the pace measured so far, held-out evaluations included, never past max_steps.
    Training stops there with a held-out evaluation, the learning rate decayed as planned: a slow
    day trains fewer steps, not a half-decayed model.

    The time used and the planned last step are kept with each checkpoint (HF saves an
    ExportableState callback's `state()` in trainer_state.json): a resumed run continues both,
    so a kill and a resume neither restart the budget nor move the learning rate's end back."""

    def __init__(self, minutes: float | None, max_steps: int, log: Any = print):
        self.log = log
        self.seconds = None if minutes is None else minutes * 60
        self.max_steps = max_steps
        self.end = max_steps  # read by the learning-rate schedule (CheckpointedTrainer)
        self.start = time.perf_counter()  # shifted back by the time used before a resume
        self.first: tuple[int, float] | None = None  # (step, time) at this process's first step end
        self.stopped_at: int | None = None

    def state(self) -> dict[str, Any]:
        # Read back by on_train_begin, not by HF's restore_callback_states_from_checkpoint (left off):
        # that would replace this object, and the learning-rate schedule reads this one's `end`.
        minutes = None if self.seconds is None else self.seconds / 60
        return {
            "args": {"minutes": minutes, "max_steps": self.max_steps},
            "attributes": {"used_s": time.perf_counter() - self.start, "end": self.end},
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step else None
        used = saved["attributes"]["used_s"] if saved else 0.0
        self.start = time.perf_counter() - used
        if saved:  # resumed from a checkpoint: the same budget and plan, continued
            self.end = min(self.max_steps, saved["attributes"]["end"])
            if self.seconds is not None:
                self.log(f"time budget: resumed at step {state.global_step} with {used:.0f} s of "
                         f"{self.seconds:.0f} s used, training ends at step {self.end} of {self.max_steps}")  # fmt: skip

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.seconds is None or state.global_step >= self.max_steps:
            return
        now, done = time.perf_counter(), state.global_step
        if self.first is None:  # the first step also pays for warming up: not a pace
            self.first = (done, now)
        measured = done - self.first[0]
        if now - self.start > self.seconds:
            end = done
        elif measured < PACE_STEPS:
            end = self.end
        else:
            pace = (now - self.first[1]) / measured
            end = budgeted_end(done, now - self.start, self.seconds, pace, self.end)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            end = agreed_min(end, args.device)  # every rank stops at the same step: the earliest planned
        if end != self.end:
            self.log(f"time budget: training ends at step {end} of {self.max_steps} "
                     f"({time.perf_counter() - self.start:.0f} s of {self.seconds:.0f} s used at step {done})")  # fmt: skip
        self.end = end
        if done >= self.end:
            control.should_training_stop = True
            control.should_evaluate = args is not None and args.eval_strategy != "no"
            self.stopped_at = done


def agreed_min(value: int, device: torch.device) -> int:
    """The smallest `value` over the processes of the default process group, agreed with a tensor on
    this process's own `device` (the Trainer's `args.device`): NCCL, the GPU backend, reduces CUDA
    tensors only ("No backend type associated with device type cpu" for a CPU tensor), gloo CPU ones."""
    agreed = torch.tensor([value], device=device)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return int(agreed.item())


class PackedCollator:
    """Stack packed blocks, padding the tail of short blocks as a separate masked sequence.

    No attention_mask on purpose: transformers derives the per-example causal mask from
    position_ids only when the mask is None (and the KV cache is off). An unpacked example (the
    held-out rows) has no position_ids: it is one sequence from 0.

    Logits only where a token is scored: `logits_to_keep` (a boolean mask, the positions whose next
    token has a label) makes the model apply its LM head to those positions alone, and
    `shift_labels` are their targets, so the 49k-wide logits and the loss skip prompts and padding
    (transformers' ForCausalLMLoss; the loss equals the full-logits one, tests/unit/test_packing.py).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.label_tokens = 0  # read by the telemetry callback for effective tokens/s

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, positions = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            own = f["position_ids"] if "position_ids" in f else range(len(f["input_ids"]))
            positions.append(list(own) + list(range(pad)))
        batch = {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
        }
        batch |= label_positions(batch["labels"])
        self.label_tokens += len(batch["shift_labels"])
        return batch


class Telemetry(TrainerCallback):
    """Every numeric value the trainer logs (loss, learning rate, grad norm, DPO rewards...) plus
    effective tokens/s when a collator counts them, to MLflow in batches.

    Held-out evaluations arrive as their own log rows (`eval_loss`, ...): they go to `evals` and
    to MLflow under the same step axis as the training loss.

    Metrics are buffered and flushed every `flush_every` logging steps and at the end, so
    tracking costs a few SQLite writes per run instead of one per metric.
    """

    def __init__(self, client: Any, run_id: str | None, collator: Any, log: Any):
        self.client, self.run_id, self.collator, self.log = client, run_id, collator, log
        self.world_size = WORLD_SIZE  # the collator counts this rank's tokens only
        self.buffer: list[tuple[str, float, int, int]] = []  # (key, value, ms, step): mlflow Metric's fields
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.flush_every = 10
        self.start = time.perf_counter()
        self.tracking_s = 0.0
        self.first_step = 0
        self.budget: TimeBudget | None = None  # when set, progress counts to the step it plans to end at

    def record_precision(self, precision: Precision) -> None:
        """The precision chosen and the probe that chose it: tags (a resumed run on another machine may
        choose differently, and a param cannot change) and the measured matmul rates as metrics."""
        if self.client is None:
            return
        from mlflow.entities import RunTag

        now = int(time.time() * 1000)
        params = precision.as_params()
        self.buffer += [(k, float(v), now, 0) for k, v in params.items() if isinstance(v, float)]
        tags = [RunTag(f"tunegraph.{k}", str(v)) for k, v in params.items() if isinstance(v, str)]
        self.client.log_batch(self.run_id, tags=tags)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.first_step = state.global_step  # a resumed run starts past 0: its ETA counts from here

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "eval_loss" in logs:
            row = {"step": state.global_step, "eval_loss": float(logs["eval_loss"])}
            self.evals.append(row)
            self.log(f"step {row['step']}/{self._end(state)} eval_loss {row['eval_loss']:.4f}")
            self.buffer.append(("eval_loss", row["eval_loss"], int(time.time() * 1000), row["step"]))
            return
        if not logs or "loss" not in logs:
            return
        row = {"step": state.global_step}
        row |= {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and k != "epoch"}
        if self.collator is not None:
            elapsed = time.perf_counter() - self.start
            row["effective_tokens_per_s"] = self.collator.label_tokens * self.world_size / max(elapsed, 1e-9)
        self.history.append(row)
        extra = " ".join(
            f"{k} {row[k]:.4g}"
            for k in ("rewards/margins", "reward", "kl", "effective_tokens_per_s")
            if k in row
        )
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(state.global_step - self.first_step, 1) * (self._end(state) - state.global_step)
        self.log(f"step {row['step']}/{self._end(state)} loss {row['loss']:.4f} {extra} "
                 f"({elapsed:.0f} s, about {left:.0f} s left)")  # fmt: skip
        now = int(time.time() * 1000)
        self.buffer += [(k, v, now, row["step"]) for k, v in row.items() if k != "step"]
        if len(self.history) % self.flush_every == 0:
            self.flush()

    def _end(self, state: Any) -> int:
        return self.budget.end if self.budget else state.max_steps

    def flush(self) -> None:
        if self.client is None or not self.buffer:
            self.buffer = []
            return
        from mlflow.entities import Metric

        t = time.perf_counter()
        metrics = [Metric(*m) for m in self.buffer]
        # MLflow accepts at most 1000 metrics per log_batch call.
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.buffer = []
        self.tracking_s += time.perf_counter() - t


def training_attention(model: Any, precision: str) -> str:
    """Switch `model` to one causal SDPA call per packed example (stages/packed_attention.py) where that
    was measured faster than transformers' SDPA with a block-diagonal mask, and say which runs.

    Measured on this 2-core VM on 2026-12-03: fp32 CPU, SmolLM2 full fine-tune, 6 alternating steps of
    4 x 512 tokens, 51.1 s per example against 54.6 s masked; bf16 on the AMX units (the demo's LoRA),
    30 layers' attention forward + backward 1.28 s per example against 0.87 s masked. Re-measured on
    2026-12-04 with the examples split rather than sliced: 6 alternating demo LoRA bf16 steps each, 29.8 s
    with a call per example against 29.7 s masked, so bf16 and GPUs keep the masked kernel."""
    on_cpu_fp32 = not torch.cuda.is_available() and precision == "fp32"
    if on_cpu_fp32 and use_packed_sdpa(model):
        return "one SDPA call per packed example"
    return model.config._attn_implementation


def lora_config(lora: LoraSettings, task_type: str = "CAUSAL_LM") -> Any:
    """peft's LoraConfig; task_type SEQ_CLS (the reward model) also trains the new score head whole."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type=task_type)  # fmt: skip


def shared_arguments(spec: TrainingSpec, cfg: TrainingConfig, precision: Precision) -> dict[str, Any]:
    """Trainer arguments every training stage sets the same way (checkpoints, seed, device)."""
    return {
        "output_dir": str(spec.checkpoint_dir),
        "save_total_limit": cfg.save_total_limit,
        "seed": cfg.seed,
        "bf16": precision.name == "bf16",
        "fp16": precision.name == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "lr_scheduler_type": "cosine",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        # Non-reentrant: works with frozen inputs (LoRA) and under FSDP, as PyTorch recommends. Set only when
        # on: transformers 5.25 warns of the name (activation_checkpointing there, absent from older 5.x).
        **(
            {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
            if cfg.gradient_checkpointing
            else {}
        ),
    }


def trl_arguments(spec: TrainingSpec, cfg: TrainingConfig, precision: Precision) -> dict[str, Any]:
    """`shared_arguments` for TRL's trainers, whose configs turn gradient checkpointing on by default:
    `training.gradient_checkpointing` decides there too."""
    return {**shared_arguments(spec, cfg, precision), "gradient_checkpointing": cfg.gradient_checkpointing}


def telemetry_for(spec: TrainingSpec, collator: Any, log: Any) -> Telemetry:
    """Telemetry to the spec's MLflow run; only rank 0 talks to MLflow (imported only then: a training
    process run by hand, or on a GPU machine without MLflow, logs to its summary alone)."""
    client = None
    if spec.mlflow and RANK == 0:
        from mlflow import MlflowClient

        client = MlflowClient(spec.mlflow.tracking_uri)
    return Telemetry(client, spec.mlflow.run_id if spec.mlflow else None, collator, log)


def fit(trainer: Trainer, spec: TrainingSpec, telemetry: Telemetry, log: Any) -> tuple[Any, float]:
    """Train, from the spec's checkpoint if it names one; (train output, wall seconds)."""
    resume_from = str(spec.resume_from) if spec.resume_from else None
    if resume_from:
        log(f"resuming from {resume_from}")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    wall_s = time.perf_counter() - started
    telemetry.flush()
    return result, wall_s


def save_and_summarise(
    model: Any,
    tokenizer: Any,
    spec: TrainingSpec,
    result: Any,
    telemetry: Telemetry,
    lora: bool,
    **extra: Any,
) -> dict[str, Any]:
    """On rank 0: merge LoRA adapters, save the model with its tokenizer, write train_summary.json.

    Returns the summary ({} on the other ranks, which have nothing to save).
    """
    if RANK != 0:
        return {}
    if lora:
        model = model.merge_and_unload()
    out_dir = spec.output_dir
    model.config.use_cache = True
    if model.config._attn_implementation == PACKED_SDPA:  # a training-only attention: saved models use SDPA
        model.set_attn_implementation("sdpa")
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    figures = {"memory_estimate_gb": ESTIMATE_ENV, "device_memory_gb": DEVICE_MEMORY_ENV}
    summary = {
        "steps": int(result.global_step),
        "resumed_from_step": spec.resumed_from_step,
        "num_processes": WORLD_SIZE,
        "train_loss": telemetry.history[-1]["loss"] if telemetry.history else float(result.training_loss),
        "mean_train_loss": float(result.training_loss),
        "eval_loss": telemetry.evals[-1]["eval_loss"] if telemetry.evals else None,
        "tracking_s": telemetry.tracking_s,
        "peak_memory_mb": peak_memory_mb(),
        # stages.memory's estimate before launch, and the memory of the device it was checked against.
        **{k: round(int(os.environ[v]) / 1e9, 2) for k, v in figures.items() if v in os.environ},
        **extra,
        "history": telemetry.history,
        "eval_history": telemetry.evals,
        "model_dir": str(model_dir),
    }
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def peak_memory_mb() -> float:
    """This process's peak memory: the CUDA allocator's peak on a GPU, the peak resident set on a CPU
    (what the memory estimate before a launch is checked against)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def one_device_per_process(args: TrainingArguments) -> str:
    """This process's device type ("cuda", "cpu"), refusing one process over several GPUs: the Trainer
    would wrap the model in nn.DataParallel (a batch N times larger, other results). `stages.launch`
    starts a process per GPU and shows each only its own; this catches a run started by hand."""
    if args.n_gpu > 1:
        raise SystemExit(
            f"error: this process sees {args.n_gpu} GPUs and would train them with nn.DataParallel: start it "
            "with `python -m stages.launch`, which runs one process per GPU (or set CUDA_VISIBLE_DEVICES)"
        )
    return args.device.type


def sharding(trainer: Trainer) -> str:
    """How the processes share the model, as the Trainer's accelerator set it up (not as the config
    asked): fsdp, deepspeed, ddp, or none for one process."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    return "ddp" if WORLD_SIZE > 1 else "none"


def whole_model(
    trainer: Trainer,
    model: Any,
    spec: TrainingSpec,
    lora: bool,
    dtype: torch.dtype,
    model_class: Any = AutoModelForCausalLM,
    task_type: str = "CAUSAL_LM",
) -> Any:
    """The trained model with every weight whole, for rank 0 to save (None on the other ranks under FSDP).

    Under DDP every process holds the whole model: `model` itself. Under FSDP or ZeRO-3 each holds a
    shard of every weight (the module's own parameters are views of it, or empty): the full state dict
    is gathered onto rank 0 by accelerate (a collective: every rank calls this; ZeRO-3 needs
    zero3_save_16bit_model, set in the shipped config) and loaded into a fresh copy of the starting
    model, with its LoRA adapters when it has them, so the model is merged and saved as under DDP. That
    copy is a second model in rank 0's host memory at the end of training. Measured under FSDP on CPU
    (tests/unit/test_devices.py); the DeepSpeed path has not run here (no GPU, no deepspeed).
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return model
    state = trainer.accelerator.get_state_dict(trainer.model)
    if RANK != 0:
        return None
    extra = {"num_labels": 1} if task_type == "SEQ_CLS" else {}  # the reward model's scalar head
    whole = model_class.from_pretrained(spec.init_model_dir, dtype=dtype, **extra)
    if lora:
        from peft import get_peft_model

        whole = get_peft_model(whole, lora_config(spec.training.lora, task_type))
    whole.load_state_dict(state)
    return whole


def held_out_set(path: str | None, cfg: TrainingConfig) -> Dataset | None:
    """The first `eval_examples` rows of tokenized_dataset's eval split (unpacked), or None when off."""
    if path is None or cfg.eval_steps is None:
        return None
    rows = Dataset.from_parquet(path)
    return rows.select(range(min(cfg.eval_examples, len(rows)))) if len(rows) else None


def evaluation_arguments(cfg: TrainingConfig, evaluating: bool) -> dict[str, Any]:
    """Trainer arguments for the held-out loss: every eval_steps, loss only (no logits kept)."""
    if not evaluating:
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": cfg.eval_steps,
        "per_device_eval_batch_size": cfg.batch_size,
        "prediction_loss_only": True,  # logits of 49k-token vocabularies would pile up in memory
        # Early stopping reads the best eval_loss so far; the model at the stop is kept, since
        # loading the best checkpoint back would need the Trainer's own checkpoint rotation.
        **(
            {"metric_for_best_model": "eval_loss", "greater_is_better": False}
            if cfg.early_stopping_patience
            else {}
        ),
    }


def train(spec: TrainingSpec, log: Any = print) -> dict[str, Any]:
    cfg = spec.training
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, training_device())
    source = spec.init_model_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    dtype = weights_dtype(spec.model_dtype, precision, trains_all_weights=cfg.method == "full")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.config.use_cache = False  # with a KV cache, packed examples would attend to each other
    attention = training_attention(model, precision.name)
    if cfg.method == "lora":
        from peft import get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # the frozen embeddings' output must carry a gradient
        model = get_peft_model(model, lora_config(cfg.lora))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    malloc = malloc_in_use()
    loss_path = f"chunked, {CHUNK_ROWS} rows of logits at a time" if plain_head(model) else "full logits"

    dataset = Dataset.from_parquet(str(spec.train_path))
    collator = PackedCollator(tokenizer.pad_token_id)
    held_out = held_out_set(str(spec.eval_path) if spec.eval_path else None, cfg)
    if held_out is not None:
        log(f"held-out loss every {cfg.eval_steps} steps on {len(held_out)} examples")
    args = TrainingArguments(
        **shared_arguments(spec, cfg, precision),
        **evaluation_arguments(cfg, held_out is not None),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        ddp_find_unused_parameters=False if WORLD_SIZE > 1 else None,
        remove_unused_columns=False,
    )
    device = one_device_per_process(args)
    telemetry = telemetry_for(spec, collator, log)
    telemetry.record_precision(precision)
    stopping = (
        [EarlyStoppingCallback(cfg.early_stopping_patience)]
        if held_out and cfg.early_stopping_patience
        else []
    )
    budget = TimeBudget(cfg.max_minutes, cfg.max_steps, log)
    telemetry.budget = budget
    trainer = CheckpointedTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out,
        data_collator=collator,
        eval_collator=PackedCollator(tokenizer.pad_token_id),
        callbacks=[telemetry, ParentWatch(spec.parent_pid), budget, *stopping],
        budget=budget,
    )
    log(
        f"training {cfg.method} on {WORLD_SIZE} x {device} ({sharding(trainer)}; {precision.name}: {precision.reason}; "
        f"weights {dtype}, malloc {malloc}, loss {loss_path}, attention {attention}): {trainable:,} trainable parameters"
    )
    result, wall_s = fit(trainer, spec, telemetry, log)
    if budget.stopped_at is not None:
        log(
            f"stopped at step {budget.stopped_at}/{cfg.max_steps}, the learning rate decayed by then: "
            f"training.max_minutes {cfg.max_minutes} holds no more steps at the pace measured"
        )
    return save_and_summarise(
        whole_model(trainer, model, spec, cfg.method == "lora", dtype),
        tokenizer,
        spec,
        result,
        telemetry,
        lora=cfg.method == "lora",
        device=device,
        distributed=sharding(trainer),
        gradient_checkpointing=cfg.gradient_checkpointing,
        label_tokens=collator.label_tokens,
        **precision.as_params(),
        weights_dtype=str(dtype).removeprefix("torch."),
        malloc=malloc,
        loss_path=loss_path,
        stopped_by_time_budget_at=budget.stopped_at,
        wall_s=wall_s,
        effective_tokens_per_s=collator.label_tokens * WORLD_SIZE / wall_s,
        trainable_parameters=trainable,
    )


def main(train_fn: Callable[..., dict[str, Any]] | None = None) -> None:
    """Entry point shared by the training stages: `python -m stages.train|stages.dpo SPEC.json`."""
    train_fn = train_fn or train
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {train_fn.__module__} SPEC.json")
    spec = TrainingSpec.read(Path(sys.argv[1]))
    torch.set_num_threads(int(os.environ.get("TUNEGRAPH_TORCH_THREADS", torch.get_num_threads())))
    if DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ or RANK != 0:  # by hand, or a DDP worker
        train_fn(spec)
        return
    with open_dagster_pipes() as pipes:
        summary = train_fn(spec, log=pipes.log.info)
        pipes.report_asset_materialization(
            metadata={
                k: v for k, v in summary.items() if k not in ("history", "eval_history") and v is not None
            }
        )


if __name__ == "__main__":
    main()
