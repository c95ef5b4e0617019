"""The reward model, as a process of its own: `python -m stages.reward SPEC.json`.

Launched by the `reward_model` asset exactly like DPO (`stages.dpo`): the same launcher, Dagster
Pipes, atomic checkpoints, resume rule, MLflow telemetry and saved output. TRL's RewardTrainer
trains the fine-tuned model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1)
to score the chosen answer above the rejected one (Bradley-Terry loss), on the training share of
the pairs; the held-out share (preference_pairs' `heldout` column: stages/preferences.py `split_pairs`) is
scored at the end through `stages.reward_scoring`, from the saved folder, exactly as RL and the
evaluation will score. With LoRA the new score head is trained whole beside the adapters, which
are merged before saving.
"""

import json
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

from stages.checkpoints import AtomicCheckpoints
from stages.inference import Placement
from stages.precision import resolve_precision, training_device, weights_dtype
from stages.preferences import dpo_rows
from stages.reward_scoring import load_reward_model, reward_scores
from stages.spec import TrainingSpec
from stages.tables import read_rows, write_rows
from stages.train import (
    RANK,
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

HELD_OUT_FILE = "heldout_scores.parquet"  # every held-out pair with its two scores, for the asset's table


class CheckpointedRewardTrainer(AtomicCheckpoints, RewardTrainer):
    """TRL's RewardTrainer, with checkpoints renamed into place only once complete."""


def train_reward(spec: TrainingSpec, log: Any = print) -> dict[str, Any]:
    cfg = spec.training
    if spec.preference is None or spec.reward_pairs_path is None:
        raise ValueError("a reward model spec names its preference settings and reward_pairs_path")
    pref, rm = spec.preference, spec.preference.reward_model
    set_seed(cfg.seed)  # before the model: the score head is initialised at random
    precision = resolve_precision(cfg.precision, training_device())
    source = spec.init_model_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    peft_config = lora_config(cfg.lora, task_type="SEQ_CLS") if pref.weights == "lora" else None
    dtype = weights_dtype(spec.model_dtype, precision, trains_all_weights=peft_config is None)
    model = AutoModelForSequenceClassification.from_pretrained(source, dtype=dtype, num_labels=1)
    pairs = read_rows(spec.reward_pairs_path)  # split by preference_pairs, the one owner of the split
    train, held_out = [p for p in pairs if not p["heldout"]], [p for p in pairs if p["heldout"]]
    if not train:
        raise SystemExit(
            f"error: all {len(held_out)} pairs fell in the held-out share: add pairs or lower "
            "preference.reward_model.heldout_fraction"
        )
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in dpo_rows(train)]
    args = RewardConfig(
        **trl_arguments(spec, cfg, precision),
        max_steps=rm.max_steps,
        per_device_train_batch_size=rm.batch_size,
        learning_rate=rm.learning_rate,
        max_length=rm.max_length,
        logging_steps=rm.logging_steps,
        save_steps=rm.save_steps,
    )
    device = one_device_per_process(args)
    telemetry = telemetry_for(spec, None, log)
    trainer = CheckpointedRewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[telemetry, ParentWatch(spec.parent_pid)],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    kept = len(trainer.train_dataset)  # TRL leaves out pairs longer than max_length
    log(f"reward model ({pref.weights}) on {kept} of {len(train)} training pairs ({len(held_out)} held out), "
        f"{WORLD_SIZE} x {device} ({sharding(trainer)}; {precision.name}: {precision.reason}; weights {dtype})")  # fmt: skip
    result, wall_s = fit(trainer, spec, telemetry, log)
    model = whole_model(trainer, trainer.model, spec, lora=peft_config is not None, dtype=dtype,
                        model_class=AutoModelForSequenceClassification, task_type="SEQ_CLS")  # fmt: skip
    if RANK == 0:
        model.config.pad_token_id = tokenizer.pad_token_id  # what the head reads the last real token by
    last = telemetry.history[-1] if telemetry.history else {}
    summary = save_and_summarise(
        model,
        tokenizer,
        spec,
        result,
        telemetry,
        lora=peft_config is not None,
        device=device,
        distributed=sharding(trainer),
        train_accuracy=last.get("accuracy"),
        train_margin=last.get("margin"),
        pairs=len(train) + len(held_out),
        train_pairs=len(train),
        train_pairs_used=kept,
        **precision.as_params(),
        weights_dtype=str(dtype).removeprefix("torch."),
        wall_s=wall_s,
        trainable_parameters=trainable,
    )
    if RANK != 0:
        return summary
    # Scored from the saved folder, as RL and the evaluation will load it, in the format it ran in here.
    placement = Placement(device, weights_dtype(spec.model_dtype, precision, False), precision)
    summary |= score_held_out(
        Path(summary["model_dir"]), placement, held_out, spec.output_dir / HELD_OUT_FILE
    )
    (spec.output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"held-out pairs: {summary['heldout_correct']}/{summary['heldout_pairs']} ranked right, "
        f"mean margin {summary['heldout_margin']}")  # fmt: skip
    return summary


def score_held_out(
    folder: Path, placement: Placement, pairs: list[dict[str, Any]], out: Path
) -> dict[str, Any]:
    """Score both answers of each held-out pair; write them to `out`; (accuracy, margin, counts).

    A pair counts as right only when the chosen answer scores strictly higher (a tie is no preference)."""
    model, tokenizer = load_reward_model(folder, placement)
    prompts = [p["messages"][:-1] for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p["messages"][-1]["content"] for p in pairs])
    rejected = reward_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs])
    rows = [
        {"id": p["id"], "origin": p.get("origin", "pair"), "prompt": p["messages"][-2]["content"],
         "chosen": p["messages"][-1]["content"], "rejected": p["rejected"], "chosen_score": c, "rejected_score": r}
        for p, c, r in zip(pairs, chosen, rejected, strict=True)
    ]  # fmt: skip
    write_rows(out, rows)
    correct = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "heldout_pairs": len(pairs),
        "heldout_correct": correct,
        "heldout_accuracy": correct / len(pairs) if pairs else None,
        "heldout_margin": sum(margins) / len(margins) if margins else None,
    }


if __name__ == "__main__":
    main(train_reward)
