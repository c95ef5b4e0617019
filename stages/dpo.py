"""Direct preference optimisation, as a process of its own: `python -m stages.dpo SPEC.json`.

Launched by the `preference_model` asset exactly like the fine-tune (`stages.train`): the same
launcher, Dagster Pipes, atomic checkpoints, resume rule, MLflow telemetry and saved output. It
starts from the supervised model (`init_model_dir`); with LoRA the frozen starting model is
also DPO's reference, so no second copy is held in memory. Adapters are merged before saving.
"""

import json
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer

from stages.checkpoints import AtomicCheckpoints
from stages.config import PreferenceConfig, TrainingConfig
from stages.train import RANK, WORLD_SIZE, ParentWatch, Telemetry, main


class CheckpointedDPOTrainer(AtomicCheckpoints, DPOTrainer):
    """TRL's DPOTrainer, with checkpoints renamed into place only once complete."""


def train_dpo(spec: dict[str, Any], log: Any = print) -> dict[str, Any]:
    cfg = TrainingConfig.model_validate(spec["training"])
    pref = PreferenceConfig.model_validate(spec["preference"])
    out_dir = Path(spec["output_dir"])
    set_seed(cfg.seed)
    use_cuda = torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"

    source = Path(spec["init_model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    peft_config = None
    if pref.method == "lora":
        from peft import LoraConfig

        lora = cfg.lora
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    pairs = Dataset.from_json(spec["pairs_path"])
    device = "cuda" if use_cuda else "cpu"
    log(f"DPO ({pref.method}, beta {pref.beta}) on {len(pairs)} pairs, {WORLD_SIZE} x {device} ({precision})")
    args = DPOConfig(
        output_dir=spec["checkpoint_dir"],
        max_steps=pref.max_steps,
        per_device_train_batch_size=pref.batch_size,
        learning_rate=pref.learning_rate,
        beta=pref.beta,
        max_length=pref.max_length,
        lr_scheduler_type="cosine",
        logging_steps=pref.logging_steps,
        save_steps=pref.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not use_cuda,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    mlflow_spec = spec.get("mlflow") or {}
    client = MlflowClient(mlflow_spec["tracking_uri"]) if mlflow_spec and RANK == 0 else None
    telemetry = Telemetry(client, mlflow_spec.get("run_id"), None, log)
    trainer = CheckpointedDPOTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[telemetry, ParentWatch(spec.get("parent_pid"))],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=spec.get("resume_from"))
    wall_s = time.perf_counter() - started
    telemetry.flush()
    if RANK != 0:
        return {}

    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    model.config.use_cache = True
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    last = telemetry.history[-1] if telemetry.history else {}
    summary = {
        "steps": int(result.global_step),
        "resumed_from_step": spec.get("resumed_from_step"),
        "num_processes": WORLD_SIZE,
        "train_loss": last.get("loss", float(result.training_loss)),
        "mean_train_loss": float(result.training_loss),
        "reward_margin": last.get("rewards/margins"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "pairs": len(pairs),
        "wall_s": wall_s,
        "tracking_s": telemetry.tracking_s,
        "trainable_parameters": trainable,
        "device": device,
        "history": telemetry.history,
        "model_dir": str(model_dir),
    }
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(train_dpo)
