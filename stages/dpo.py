"""Offline preference learning, as a process of its own: `python -m stages.dpo SPEC.json`.

`preference.method: dpo` is direct preference optimisation on pairs (TRL's DPOTrainer); `kto` is
Kahneman-Tversky optimisation (TRL's KTOTrainer) on single answers labelled desirable or not
(`unpaired_path`: the thumbs-up/down rows landed plus each training pair taken apart, written by
preference_pairs with stages/preferences.py `kto_training_rows`), so a user with only thumbs, only
pairs or both can use it.

Launched by the `preference_model` asset exactly like the fine-tune (`stages.train`): the same
launcher, Dagster Pipes, atomic checkpoints, resume rule, MLflow telemetry and saved output. It
starts from the supervised model (`init_model_dir`); with LoRA the frozen starting model is
also DPO's reference, so no second copy is held in memory. Adapters are merged before saving.
"""

import json
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from stages.checkpoints import AtomicCheckpoints
from stages.precision import resolve_precision, training_device, weights_dtype
from stages.spec import TrainingSpec
from stages.train import (
    WORLD_SIZE,
    ParentWatch,
    fit,
    lora_config,
    main,
    one_device_per_process,
    save_and_summarise,
    sharding,
    telemetry_for,
    trl_arguments,
    whole_model,
)


class CheckpointedDPOTrainer(AtomicCheckpoints, DPOTrainer):
    """TRL's DPOTrainer, with checkpoints renamed into place only once complete."""


class CheckpointedKTOTrainer(AtomicCheckpoints, KTOTrainer):
    """TRL's KTOTrainer, with checkpoints renamed into place only once complete."""


def train_dpo(spec: TrainingSpec, log: Any = print) -> dict[str, Any]:
    cfg = spec.training
    if spec.preference is None or spec.pairs_path is None:
        raise ValueError("a DPO spec names its preference settings and pairs_path")
    pref = spec.preference
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, training_device())
    source = spec.init_model_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    peft_config = lora_config(cfg.lora) if pref.weights == "lora" else None
    dtype = weights_dtype(spec.model_dtype, precision, trains_all_weights=peft_config is None)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    settings = dict(
        **trl_arguments(spec, cfg, precision),
        max_steps=pref.max_steps,
        per_device_train_batch_size=pref.batch_size,
        learning_rate=pref.learning_rate,
        beta=pref.beta,
        max_length=pref.max_length,
        logging_steps=pref.logging_steps,
        save_steps=pref.save_steps,
    )
    if pref.method == "kto":
        if spec.unpaired_path is None:
            raise ValueError("a KTO spec names unpaired_path (the rows preference_pairs wrote to kto.jsonl)")
        data = Dataset.from_list(_read_jsonl(spec.unpaired_path))
        args, trainer_class = KTOConfig(**settings), CheckpointedKTOTrainer
    elif pref.method == "dpo":
        data = Dataset.from_list(_read_jsonl(spec.pairs_path))
        args, trainer_class = DPOConfig(**settings), CheckpointedDPOTrainer
    else:
        raise ValueError(f"stages.dpo trains dpo or kto, not {pref.method} (stages.rl runs online RL)")
    device = one_device_per_process(args)
    telemetry = telemetry_for(spec, None, log)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[telemetry, ParentWatch(spec.parent_pid)],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(f"{pref.method.upper()} ({pref.weights}, beta {pref.beta}) on {len(data)} rows, {WORLD_SIZE} x {device} ({sharding(trainer)}; "
        f"{precision.name}: {precision.reason}; weights {dtype})")  # fmt: skip
    result, wall_s = fit(trainer, spec, telemetry, log)
    last = telemetry.history[-1] if telemetry.history else {}
    return save_and_summarise(
        whole_model(trainer, trainer.model, spec, lora=peft_config is not None, dtype=dtype),
        tokenizer,
        spec,
        result,
        telemetry,
        lora=peft_config is not None,
        device=device,
        distributed=sharding(trainer),
        reward_margin=last.get("rewards/margins"),
        reward_accuracy=last.get("rewards/accuracies"),
        pairs=len(data) if pref.method == "dpo" else None,
        rows=len(data),
        method=pref.method,
        **precision.as_params(),
        weights_dtype=str(dtype).removeprefix("torch."),
        wall_s=wall_s,
        trainable_parameters=trainable,
    )


def _read_jsonl(path: Any) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    main(train_dpo)
