"""Online RL from the fine-tuned model (GRPO or RLOO, TRL), as a process of its own: `python -m stages.rl SPEC.json`.

Launched by the `preference_model` asset (`preference.method: grpo | rloo`) exactly like DPO
(`stages.dpo`): the same launcher, Dagster Pipes, atomic checkpoints, resume rule, precision and
device rules, MLflow telemetry and saved output. Each step the policy (the fine-tuned model, with
LoRA adapters or all weights) samples `num_generations` completions for each of `prompts_per_step`
held-in prompts; the reward model and the rule rewards (stages/rule_rewards.py) score them, weighted
as `preference.rl.rewards` says; each completion is pushed up or down by its reward against its
group's, with a KL penalty (`beta`) to the fine-tuned model. With LoRA the reference is the same
model with its adapters off, so no second copy is held.

Beside the model it writes, in the output folder: the prompts, `generations.jsonl` (step, prompt, completion,
each reward, at a few logged steps), `reward.png` (the reward curve and KL), both also in the MLflow
run, and in `train_summary.json` the mean reward over the first and last logged steps, the KL,
the wall time per step and the generated and trained tokens per second.
"""

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from stages import plots
from stages.checkpoints import AtomicCheckpoints
from stages.config import RLConfig
from stages.precision import resolve_precision, training_device, weights_dtype
from stages.rule_rewards import completion_text, rule_rewards
from stages.spec import TrainingSpec
from stages.tables import read_jsonl, write_jsonl
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

# In the checkpoint folder while training (a resume keeps it), then in the output folder.
GENERATIONS = "generations.jsonl"
REWARD_MODEL = "reward_model"  # the name its score is logged under: rewards/reward_model/mean


class Rollouts:
    """Trainer mixin for TRL's online trainers: times the rollouts and keeps the generations.

    `generation_s` and the token counts come from `_generate` (sampling alone), `rollout_s` from
    `_generate_and_score_completions` (sampling, rewards, the old and reference log-probs); the rest of
    a step is training. At every training log row the last generation batch (TRL's `_logs`) is
    appended to `generations_path`, which lives beside the checkpoints, so a resumed run keeps the
    generations of the steps before its checkpoint."""

    generations_path: Path | None = None
    generation_s = rollout_s = 0.0
    generated_tokens = prompt_tokens = 0

    def _generate(self, prompts: list) -> Any:
        start = time.perf_counter()
        out = super()._generate(prompts)  # GRPO and RLOO both return (prompt ids, completion ids, ...)
        self.generation_s += time.perf_counter() - start
        self.prompt_tokens += sum(len(ids) for ids in out[0])
        self.generated_tokens += sum(len(ids) for ids in out[1])
        return out

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.rollout_s += time.perf_counter() - start
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.generations_path is not None and self.accelerator.is_main_process:
            rows = generation_rows(
                self.state.global_step,
                self._logs,
                dict(zip(self.reward_func_names, self.reward_weights.tolist(), strict=True)),
            )
            with self.generations_path.open("a") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        super().log(logs, start_time)


def generation_rows(step: int, logs: dict[str, Any], weights: dict[str, float]) -> list[dict[str, Any]]:
    """TRL's record of the last generation batch (`_logs`: prompts, completions, each reward function's
    scores) as table rows, with the weighted sum the trainer learns from ("reward"; a reward that did not
    apply, NaN, counts 0 as in the trainer's nansum)."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"], strict=True)):
        scores = {name: values[i] for name, values in logs["rewards"].items()}
        total = sum(weights[name] * v for name, v in scores.items() if not math.isnan(v))
        rows.append({
            "step": step,
            "prompt": prompt[-1]["content"] if isinstance(prompt, list) else prompt,
            "completion": completion_text(completion),
            "reward": total,
            **scores,
        })  # fmt: skip
    return rows


class CheckpointedGRPOTrainer(Rollouts, AtomicCheckpoints, GRPOTrainer):
    """TRL's GRPOTrainer: group-normalised advantages, checkpoints renamed into place once complete."""


class CheckpointedRLOOTrainer(Rollouts, AtomicCheckpoints, RLOOTrainer):
    """TRL's RLOOTrainer: leave-one-out baseline, checkpoints renamed into place once complete."""


TRAINERS = {"grpo": (GRPOConfig, CheckpointedGRPOTrainer), "rloo": (RLOOConfig, CheckpointedRLOOTrainer)}


def train_rl(spec: TrainingSpec, log: Any = print) -> dict[str, Any]:
    cfg, pref = spec.training, spec.preference
    if pref is None or pref.method not in TRAINERS or spec.prompts_path is None:
        raise ValueError("an RL spec names preference settings with method grpo or rloo, and prompts_path")
    rl = pref.rl
    if rl.rewards.reward_model.weight and spec.reward_model_dir is None:
        raise ValueError(
            "preference.rl.rewards.reward_model has a weight but the spec names no reward_model_dir: "
            "train the reward model first, or set its weight to 0 to learn from the rule rewards alone"
        )
    if rl.seed is not None:  # the policy's own seed: sampling, LoRA init and data order follow it
        cfg = cfg.model_copy(update={"seed": rl.seed})
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, training_device())
    source = spec.init_model_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    peft_config = lora_config(cfg.lora) if pref.weights == "lora" else None
    dtype = weights_dtype(spec.model_dtype, precision, trains_all_weights=peft_config is None)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    prompts, too_long = held_in_prompts(
        spec.prompts_path, tokenizer, pref.max_length - rl.max_completion_tokens
    )
    if too_long:
        log(f"{too_long} prompts left out: longer than preference.max_length {pref.max_length} minus "
            f"max_completion_tokens {rl.max_completion_tokens}")  # fmt: skip
    if not len(prompts):
        raise ValueError(
            f"no prompt in {spec.prompts_path} fits preference.max_length {pref.max_length} with "
            f"{rl.max_completion_tokens} completion tokens: raise max_length or lower max_completion_tokens"
        )
    funcs, weights, processors = reward_functions(spec, rl, model, tokenizer, dtype)
    config_class, trainer_class = TRAINERS[pref.method]
    args = config_class(
        **trl_arguments(spec, cfg, precision),
        max_steps=rl.max_steps,
        per_device_train_batch_size=rl.prompts_per_step * rl.num_generations,  # completions, not prompts
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_tokens,
        temperature=rl.temperature,
        learning_rate=rl.learning_rate,
        beta=rl.beta,
        reward_weights=weights,
        logging_steps=rl.logging_steps,
        save_steps=rl.save_steps,
        use_vllm=rl.use_vllm,
        **({"vllm_mode": "colocate"} if rl.use_vllm else {}),
    )
    device = one_device_per_process(args)
    telemetry = telemetry_for(spec, None, log)
    telemetry.record_precision(precision)
    trainer = trainer_class(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_processing_classes=processors,
        peft_config=peft_config,
        callbacks=[telemetry, ParentWatch(spec.parent_pid)],
    )
    trainer.generations_path = kept_generations(spec)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    names = ", ".join(f"{n} x{w:g}" for n, w in zip(trainer.reward_func_names, weights, strict=True))
    log(f"{pref.method.upper()} ({pref.weights}, beta {rl.beta}) on {len(prompts)} prompts, {rl.prompts_per_step} "
        f"x {rl.num_generations} completions of <= {rl.max_completion_tokens} tokens a step, rewards {names}; "
        f"{WORLD_SIZE} x {device} ({sharding(trainer)}; {precision.name}: {precision.reason}; weights {dtype})")  # fmt: skip
    result, wall_s = fit(trainer, spec, telemetry, log)
    figures = rl_figures(trainer, wall_s, trainer.state.global_step - telemetry.first_step, rl)
    if RANK == 0:
        shutil.copy(
            spec.prompts_path, spec.output_dir / "prompts.jsonl"
        )  # what it learnt from, beside the model
        publish_generations(spec, trainer.generations_path, rl.sample_steps, telemetry)
        publish_curve(spec, trainer.state.log_history, telemetry)
    return save_and_summarise(
        whole_model(trainer, trainer.model, spec, lora=peft_config is not None, dtype=dtype),
        tokenizer,
        spec,
        result,
        telemetry,
        lora=peft_config is not None,
        device=device,
        distributed=sharding(trainer),
        method=pref.method,
        prompts=len(prompts),
        rewards=names,  # a string: Dagster Pipes metadata takes no nested dicts
        generations_file=str(spec.output_dir / GENERATIONS),
        reward_plot=str(spec.output_dir / "reward.png"),
        **figures,
        **precision.as_params(),
        weights_dtype=str(dtype).removeprefix("torch."),
        wall_s=wall_s,
        trainable_parameters=trainable,
    )


def held_in_prompts(path: Path, tokenizer: Any, max_prompt_tokens: int) -> tuple[Dataset, int]:
    """The prompts file (JSONL: `prompt` chat messages, `reference`) as TRL's conversational prompt
    dataset, without the prompts whose rendered tokens exceed `max_prompt_tokens`; (dataset, left out)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fits = [
        r for r in rows
        if len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True)["input_ids"])
        <= max_prompt_tokens
    ]  # fmt: skip
    return Dataset.from_list(
        [{"prompt": r["prompt"], "reference": r.get("reference") or ""} for r in fits]
    ), (len(rows) - len(fits))


def reward_functions(
    spec: TrainingSpec, rl: RLConfig, policy: Any, tokenizer: Any, dtype: Any
) -> tuple[list[Any], list[float], list[Any]]:
    """(reward functions, their weights, their tokenizers) for TRL: the reward model (a sequence
    classifier TRL runs on the chat-rendered prompt + completion) where it has a weight, then the rule
    rewards. The reward model is frozen, so it is held in the frozen weights' dtype."""
    eos_ids = policy.generation_config.eos_token_id
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    rules = rule_rewards(rl.rewards, sorted({tokenizer.eos_token_id, *eos_ids}))
    funcs, weights, processors = [], [], []
    if rl.rewards.reward_model.weight:
        folder = spec.reward_model_dir
        scorer = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
        scorer.config._name_or_path = REWARD_MODEL  # TRL names its metrics after this: not ".../model"
        funcs.append(scorer)
        weights.append(rl.rewards.reward_model.weight)
        processors.append(AutoTokenizer.from_pretrained(folder))
    for func, weight in rules:
        funcs.append(func)
        weights.append(weight)
        processors.append(None)
    return funcs, weights, processors


def kept_generations(spec: TrainingSpec) -> Path:
    """The generations file beside the checkpoints: a resumed run keeps the rows up to its checkpoint's
    step (later ones were generated again after the resume), a fresh run starts it empty."""
    path = spec.checkpoint_dir / GENERATIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    step = spec.resumed_from_step if spec.resume_from else 0
    rows = read_jsonl(path) if path.is_file() else []
    return write_jsonl(path, [r for r in rows if r["step"] <= step])


def sample_steps(steps: list[int], n: int) -> list[int]:
    """n of the logged steps, first and last included, evenly spaced between (all when there are <= n)."""
    unique = sorted(set(steps))
    if len(unique) <= n:
        return unique
    if n == 1:
        return [unique[-1]]
    return sorted({unique[round(i * (len(unique) - 1) / (n - 1))] for i in range(n)})


def publish_generations(spec: TrainingSpec, path: Path, n: int, telemetry: Any) -> list[dict[str, Any]]:
    """The generations of `n` logged steps into the output folder, and into the MLflow run as a table."""
    rows = read_jsonl(path)
    keep = set(sample_steps([r["step"] for r in rows], n))
    rows = [r for r in rows if r["step"] in keep]
    write_jsonl(spec.output_dir / GENERATIONS, rows)
    if telemetry.client is not None and rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = {c: [r.get(c) for r in rows] for c in columns}
        telemetry.client.log_table(telemetry.run_id, data=table, artifact_file="generations.json")
    return rows


def publish_curve(spec: TrainingSpec, history: list[dict[str, Any]], telemetry: Any) -> Path:
    """reward.png (the reward with its spread, and the KL) into the output folder and the MLflow run."""
    logged = [h for h in history if "reward" in h]
    kl = [h for h in logged if "kl" in h]
    path = plots.reward_and_kl(
        (
            [h["step"] for h in logged],
            [h["reward"] for h in logged],
            [h.get("reward_std", 0.0) for h in logged],
        ),
        ([h["step"] for h in kl], [h["kl"] for h in kl]),
        spec.output_dir / "reward.png",
    )
    if telemetry.client is not None:
        telemetry.client.log_artifact(telemetry.run_id, str(path))
    return path


def rl_figures(trainer: Any, wall_s: float, steps_run: int, rl: RLConfig) -> dict[str, Any]:
    """What the summary says of the run: the mean reward over the first and the last logged steps (a third
    of them each, at most 5), the KL at the end, each reward's final mean, the time per step and the rates.

    Read from the trainer's log history, which a resumed run restores from its checkpoint, so the first
    steps are the run's first even after a resume; the time per step and the rates are this process's
    (`steps_run` steps in `wall_s`)."""
    logged = [h for h in trainer.state.log_history if "reward" in h]
    k = max(1, min(5, len(logged) // 3))

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    last = logged[-1] if logged else {}
    train_s = wall_s - trainer.rollout_s
    trained_tokens = trainer.prompt_tokens + trainer.generated_tokens
    return {
        "reward_first_steps": mean(logged[:k], "reward"),
        "reward_last_steps": mean(logged[-k:], "reward"),
        "reward_std_last_steps": mean(logged[-k:], "reward_std"),
        "kl": last.get("kl"),
        "kl_last_steps": mean(logged[-k:], "kl"),
        "steps_averaged": k,
        **{f"reward_{name}": last.get(f"rewards/{name}/mean") for name in trainer.reward_func_names},
        "completion_tokens_mean": last.get("completions/mean_length"),
        "seconds_per_step": wall_s / max(steps_run, 1),
        "generation_s": trainer.generation_s,
        "rollout_s": trainer.rollout_s,
        "generated_tokens": trainer.generated_tokens,
        "generated_tokens_per_s": trainer.generated_tokens * WORLD_SIZE / max(trainer.generation_s, 1e-9),
        # The policy's training forward and backward read each prompt + completion once (num_iterations 1).
        "train_tokens_per_s": trained_tokens * WORLD_SIZE / max(train_s, 1e-9),
        "completions_per_step": rl.prompts_per_step * rl.num_generations * WORLD_SIZE,
    }


if __name__ == "__main__":
    main(train_rl)
