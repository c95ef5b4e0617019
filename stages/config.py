"""The pipeline declaration: one YAML file, validated here with clear one-line errors.

`load_config("configs/default.yaml")` returns a `PipelineConfig`; every field says why it exists.
The schema is Dagster-free so that the training process can read it too.
"""

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.prompt_config import DEFAULT_PROMPTS, PLAIN, PromptSearchConfig, PromptVariant

BUNDLED_MODELS = ("smollm2-135m-instruct", "tiny-random")


class ConfigError(ValueError):
    """A pipeline YAML that cannot be used; the message says which key and how to fix it."""


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusConfig(_Section):
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text"] = Field(
        "auto", description="File format of landing files; 'auto' picks it from the extension."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical name -> the name in your files: record fields ({instruction: question, "
        "output: answer}), chat turn keys ({role: speaker, content: text}) and role names "
        "({role.user: customer, role.assistant: agent}).",
    )

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        from stages.readers import RECORD_FIELDS, ROLE_FIELDS, TURN_KEYS

        known = (*RECORD_FIELDS, *TURN_KEYS, *ROLE_FIELDS)
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown canonical name(s) {', '.join(unknown)}; use {', '.join(known)}")
        return value


class CleaningConfig(_Section):
    min_chars: int = Field(8, ge=0, description="Records whose response is shorter are dropped (too_short).")
    max_chars: int = Field(4000, ge=1, description="Records whose response is longer are dropped (too_long).")
    max_duplicate_line_fraction: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="Share of repeated lines above which a record is dropped (Gopher: 0.3).",
    )
    max_top_ngram_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="Share of characters in the most frequent word 2-gram (Gopher: 0.2)."
    )
    max_symbol_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of characters that are neither letters, digits nor spaces."
    )
    min_words_for_repetition: int = Field(
        20,
        ge=1,
        description="Repetition rules only judge texts at least this long (short texts repeat by chance).",
    )


class NearDedupConfig(_Section):
    enabled: bool = Field(True, description="Drop near-duplicate responses (MinHash LSH) after exact dedup.")
    threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard of word 3-grams; 0.5 catches copies with ~10% edits.",
    )
    ngram: int = Field(3, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    min_words: int = Field(
        16,
        ge=1,
        description="Shorter responses are only exact-deduplicated (a few edited words make a new answer).",
    )


class DecontaminationConfig(_Section):
    enabled: bool = Field(True, description="Remove train records sharing an n-gram with any eval record.")
    ngram: int = Field(13, ge=3, description="n-gram length in words; 13 follows GPT-3's decontamination.")


class AugmentationConfig(_Section):
    enabled: bool = Field(True, description="Add instruction paraphrases of train records.")
    max_share: float = Field(
        0.3, ge=0.0, lt=1.0, description="Cap on the augmented share of the final training set."
    )
    few_shot_k: int = Field(
        0, ge=0, description="If > 0, half the augmented records get k other train examples as earlier turns."
    )
    model_paraphrase: bool = Field(
        False, description="Let the base model rewrite the paraphrased instructions (slow on CPU; cached)."
    )


class DataConfig(_Section):
    eval_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="Held-out share, by stable hash of id.")
    eval_files: list[str] = Field(
        default_factory=list, description="Extra eval sets (paths); evaluated, never trained on."
    )
    seed: int = Field(0, description="Seed of the split hash and of augmentation.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Keep only the first N train records (by stable hash); None keeps all."
    )
    block_size: int = Field(512, ge=16, description="Tokens per packed training block.")
    max_dropped_share: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Blocking check: most share of train examples packing may drop because their prompt "
        "fills data.block_size (no answer token left to learn); more fails blocks_have_labels.",
    )
    max_duplicate_rate: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Blocking check: most share of original train responses that still exactly or nearly "
        "duplicate an earlier one (near: data.near_dedup's threshold, down to 8-word responses). The "
        "demo corpus measures 0.025 with near dedup on, 0.073 with it off.",
    )
    cleaning: CleaningConfig = CleaningConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    # Where, not what: both engines give the same records, drops, counts and blocks (tests/e2e/
    # test_ray_cluster.py compares them), so section_hash leaves these two out and switching engines
    # makes no data asset stale.
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where the data stages' per-record work and near-dedup join run: 'local' (this host's "
        "cores, forked workers) or 'ray' (a Ray cluster: data.ray_address, else $RAY_ADDRESS, else a Ray "
        "started on this host's cores for each step). Results are identical; needs `pip install ray`.",
    )
    ray_address: str | None = Field(
        None,
        description="The Ray cluster for data.engine: ray, e.g. 'ray-head:6379' ('auto': the cluster "
        "`ray start` runs on this host); unset: $RAY_ADDRESS, else a local Ray for each step.",
    )

    @model_validator(mode="after")
    def _address_needs_ray(self) -> "DataConfig":
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(
                f"ray_address {self.ray_address!r} is set but engine is {self.engine!r}: "
                "set data.engine: ray, or remove data.ray_address"
            )
        return self


class ModelConfig(_Section):
    base: str = Field(
        "bundled:smollm2-135m-instruct",
        description="bundled:<name>, a Hugging Face model id, or a local directory.",
    )
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Weights that do not train (a LoRA run's frozen base; evaluation, chat, pair synthesis) "
        "and saved models: auto = the training precision (bf16 halves a 7B LoRA's frozen base, 28 -> 14 GB); "
        "trained weights stay fp32 masters for the optimizer whatever this says.",
    )

    @field_validator("base")
    @classmethod
    def _known_bundle(cls, value: str) -> str:
        if value.startswith("bundled:") and value.removeprefix("bundled:") not in BUNDLED_MODELS:
            names = ", ".join(f"bundled:{n}" for n in BUNDLED_MODELS)
            raise ValueError(f"unknown bundled model; use one of {names}, a model id or a local directory")
        return value


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator; alpha/r = 2 is the common choice.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="peft target modules.")


class K8sResources(_Section):
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod (a GPU node); 0 schedules a CPU pod.")
    cpu: str | None = Field(
        None, description="CPU request, e.g. '8'; None leaves it to the namespace default."
    )
    memory: str | None = Field(None, description="Memory request and limit, e.g. '32Gi'.")


class K8sVolume(_Section):
    claim: str = Field(
        description="PersistentVolumeClaim holding $TUNEGRAPH_HOME, shared with Dagster's run pods."
    )
    mount_path: str = Field(
        "/data",
        description="Where the pod mounts it: $TUNEGRAPH_HOME must be there or below, at the same path as in "
        "the Dagster run (the training spec names absolute paths).",
    )


class LauncherConfig(_Section):
    """Where the training process runs. How (device, process count) is decided there, not here."""

    kind: Literal["local", "k8s"] = Field(
        "local", description="local: a subprocess of the Dagster step; k8s: a pod (pip install dagster-k8s)."
    )
    image: str | None = Field(None, description="k8s: an image with this project installed.")
    namespace: str | None = Field(None, description="k8s: namespace; default the current one.")
    resources: K8sResources = K8sResources()
    volume: K8sVolume | None = Field(None, description="k8s: the volume holding $TUNEGRAPH_HOME.")

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> "LauncherConfig":
        k8s_only = [name for name in ("image", "namespace", "volume") if getattr(self, name) is not None]
        if self.kind == "local" and (k8s_only or self.resources != K8sResources()):
            names = ", ".join(k8s_only + (["resources"] if self.resources != K8sResources() else []))
            raise ValueError(f"{names} apply to kind k8s only; set kind: k8s or remove them")
        if self.kind == "k8s" and (self.image is None or self.volume is None):
            missing = " and ".join(n for n in ("image", "volume") if getattr(self, n) is None)
            raise ValueError(f"kind k8s needs {missing}: the image with tunegraph installed and the volume "
                             "claim holding $TUNEGRAPH_HOME")  # fmt: skip
        return self


class TrainingConfig(_Section):
    method: Literal["lora", "full"] = Field(
        "lora", description="LoRA adapters (merged on save) or all weights."
    )
    learning_rate: float = Field(2e-4, ge=0.0)
    max_steps: int = Field(40, ge=1, description="Optimizer steps; sized so `make demo` fits its budget.")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget for training, sized by measurement: after each step the learning-rate "
        "schedule ends at the last step the time left holds at the pace so far (never past max_steps), and "
        "training stops there with the rate decayed (the report says at which step). None: max_steps decides.",
    )
    batch_size: int = Field(4, ge=1, description="Packed blocks per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(2, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    neftune_noise_alpha: float | None = Field(
        None,
        gt=0.0,
        description="NEFTune: noise on input embeddings during training (e.g. 5); off by default.",
    )
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(
        20, ge=1, description="Checkpoint every N steps (what a crashed run resumes from)."
    )
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    seed: int = 0
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Training processes, one per device: None uses every visible GPU (one process on a CPU); "
        "a number narrows to that many GPUs (only those are made visible), or starts that many CPU workers "
        "(DDP over gloo, started by torchrun). Never one process over several GPUs (nn.DataParallel).",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="How several processes share the model: ddp (a full copy each), fsdp (parameters, "
        "gradients and optimizer states sharded: configs/accelerate/fsdp.yaml) or deepspeed (ZeRO-3: "
        "configs/accelerate/deepspeed_zero3.yaml, pip install deepspeed). Sharding runs on GPUs only: "
        "accelerate does not shard CPU processes, so a CPU run with fsdp or deepspeed is refused.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in backward instead of keeping them (non-reentrant, "
        "works with LoRA): activations shrink from every layer's to one layer's, at about a third more compute.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Number format of training and of every model load after it (stages/precision.py). auto: "
        "bf16 on a GPU of compute capability >= 8.0, fp16 with loss scaling on older GPUs, and on a CPU "
        "bf16 where a bf16 matmul measures faster than fp32 (fp32 otherwise).",
    )
    accelerate_config: str | None = Field(
        None,
        description="Your own `accelerate config` YAML instead of the shipped one training.distributed names "
        "(leave distributed at ddp); GPUs only when it shards.",
    )
    eval_steps: int | None = Field(
        20,
        ge=1,
        description="Held-out loss (the eval split tokenized_dataset writes) every N steps, logged to MLflow as "
        "eval_loss beside the training loss; None turns it off.",
    )
    eval_examples: int = Field(
        48,
        ge=1,
        description="Held-out examples scored at each evaluation (the first N of the split; forward passes only).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop when eval_loss has not improved for N evaluations in a row; the model at the stop is "
        "kept (not the best one). None trains for max_steps.",
    )
    warm_start_from: str | None = Field(
        None,
        description="Start from an earlier registered model instead of model.base, at step 0: a version "
        "('3'), an alias ('champion'), or 'name@alias' / 'name/3' / 'models:/...'. Recorded in lineage.",
    )
    lora: LoraSettings = LoraSettings()
    launcher: LauncherConfig = Field(
        LauncherConfig(),
        description="Where training runs (local or a Kubernetes pod); not part of any version: moving it "
        "makes nothing stale and a run resumes across it.",
    )

    @model_validator(mode="after")
    def _gpu_pod_fits_the_processes(self) -> "TrainingConfig":
        gpus = self.launcher.resources.gpus
        if gpus and self.num_processes is not None and self.num_processes > gpus:
            raise ValueError(
                f"num_processes {self.num_processes} needs as many GPUs, but launcher.resources.gpus is {gpus}"
            )
        return self

    @model_validator(mode="after")
    def _one_accelerate_config(self) -> "TrainingConfig":
        if self.accelerate_config is not None and self.distributed != "ddp":
            raise ValueError(
                f"distributed {self.distributed} selects the shipped accelerate config, and accelerate_config "
                "names another: keep one of them"
            )
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_evaluation(self) -> "TrainingConfig":
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError(
                "early_stopping_patience needs eval_steps: set training.eval_steps or drop early stopping"
            )
        return self


class RewardWeight(_Section):
    weight: float = Field(ge=0.0, description="Its share of the reward; 0 leaves it out (not computed).")


class LengthReward(_Section):
    weight: float = Field(0.25, ge=0.0, description="Its share of the reward; 0 leaves it out.")
    min_tokens: int = Field(
        8, ge=0, description="Completions shorter than this score below 1 (tokens / min)."
    )
    max_tokens: int = Field(
        48, ge=1, description="Completions longer than this score below 1 (max / tokens)."
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "LengthReward":
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"length.min_tokens {self.min_tokens} > max_tokens {self.max_tokens}: swap them")
        return self


class RLRewards(_Section):
    """What the RL policy is rewarded for: a weighted sum (TRL's reward_weights), each part logged apart."""

    reward_model: RewardWeight = Field(
        RewardWeight(weight=1.0), description="The reward model's score of prompt + completion."
    )
    stops_at_eos: RewardWeight = Field(
        RewardWeight(weight=0.5),
        description="1 when the completion ends with EOS, 0 when it ran out of tokens.",
    )
    length: LengthReward = Field(
        LengthReward(), description="1 inside [min_tokens, max_tokens], less outside."
    )
    rouge_l: RewardWeight = Field(
        RewardWeight(weight=0.5),
        description="ROUGE-L F1 against the prompt's reference answer (left out where it has none).",
    )

    @model_validator(mode="after")
    def _some_reward(self) -> "RLRewards":
        if not any(r.weight for r in (self.reward_model, self.stops_at_eos, self.length, self.rouge_l)):
            raise ValueError(
                "every reward weight is 0: give reward_model (or a rule reward) a weight above 0"
            )
        return self


class RLConfig(_Section):
    """Online RL (`preference.method: grpo | rloo`): the fine-tuned model samples a group of completions per
    held-in prompt, the rewards score them, and each completion is pushed up or down by how it did
    against its group (GRPO: the group's mean and std; RLOO: the mean of the others), with a KL penalty
    to the fine-tuned model (the reference) weighted by `beta`.

    Sized for this 2-core CPU and SmolLM2-135M: 2 prompts x 4 completions x 48 tokens a step. On a GPU,
    raise num_generations (8-16: the group mean is the baseline, and a bigger group gives an advantage of
    lower variance, fewer groups with zero spread), prompts_per_step (16-64) and max_completion_tokens
    (256-512, so answers can finish), and length.max_tokens with it; use_vllm only where vLLM is
    installed (it generates several times faster than transformers' generate, which is used otherwise).
    """

    num_generations: int = Field(
        4,
        ge=2,
        description="Group size: completions sampled per prompt (their spread is the learning signal).",
    )
    prompts_per_step: int = Field(
        2, ge=1, description="Prompts per device per step (x num_generations completions)."
    )
    max_completion_tokens: int = Field(48, ge=1, description="Tokens generated per completion at most.")
    temperature: float = Field(
        0.9, gt=0.0, description="Sampling temperature: the group needs diverse completions to compare."
    )
    max_steps: int = Field(20, ge=1)
    # Measured on the demo (GRPO, LoRA, 20 steps, 2026-12-07): at 2e-5 the policy barely moved (KL 0.002,
    # held-out reward 0.315 against the fine-tuned model's 0.316); at 3e-4, +0.022 and +0.030 over 2 seeds.
    learning_rate: float = Field(3e-4, ge=0.0)
    beta: float = Field(
        0.04,
        ge=0.0,
        description="KL coefficient to the fine-tuned model (DeepSeekMath's GRPO used 0.04); above 0 the KL "
        "is computed and logged, 0 skips the reference model.",
    )
    logging_steps: int = Field(1, ge=1, description="Every step by default: the reward curve is the point.")
    save_steps: int = Field(5, ge=1, description="Checkpoint every N steps (resumed like the fine-tune's).")
    prompts: int = Field(64, ge=1, description="Held-in (training-split) prompts the policy samples from.")
    sample_steps: int = Field(
        3, ge=1, description="Logged steps whose generations are kept as a table (first, last, between)."
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (colocated); needs vLLM installed (GPUs).")
    seed: int | None = Field(
        None,
        description="The sampling and training seed of RL (default training.seed): another seed retrains "
        "the policy alone, to measure the spread of its result across seeds.",
    )
    rewards: RLRewards = RLRewards()

    @model_validator(mode="after")
    def _length_reachable(self) -> "RLConfig":
        if self.rewards.length.weight and self.rewards.length.min_tokens > self.max_completion_tokens:
            raise ValueError(
                f"rewards.length.min_tokens {self.rewards.length.min_tokens} > max_completion_tokens "
                f"{self.max_completion_tokens}: no completion could reach it; lower it or raise the other"
            )
        return self


class RewardModelConfig(_Section):
    """The reward model (`reward_model`, TRL's RewardTrainer) and the gate it must pass.

    The gate, `reward_better_than_chance`: of the held-out pairs, the reward model must score the
    chosen answer strictly above the rejected one in `k` of `n` pairs such that a coin would do as
    well with probability at most `significance` (one-sided binomial test against 1/2), and `k / n`
    must reach `min_accuracy`. The test alone bounds the risk of passing a reward model that is a
    coin (5 % at the default) whatever the number of pairs; it does not say the model is useful: at
    10,000 pairs 51 % is "significant". `min_accuracy` is that floor of usefulness (0.6: it ranks
    3 of 5 pairs right, the least a reward model that steers RL must do). With too few pairs no
    result can pass the test (all `n` right has p = 0.5**n: at least 5 pairs at 0.05), and the
    check says how many are needed rather than passing on no evidence.
    """

    learning_rate: float = Field(1e-4, ge=0.0)
    max_steps: int = Field(20, ge=1)
    batch_size: int = Field(4, ge=1, description="Pairs per device per step (each pair is two sequences).")
    max_length: int = Field(
        512,
        ge=16,
        description="Prompt + answer tokens; longer pairs are left out (TRL drops, not truncates).",
    )
    logging_steps: int = Field(2, ge=1)
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps (resumed like the fine-tune's).")
    heldout_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of pairs held out to measure the reward model, by the corpus's stable hash of "
        "the pair's split id (its ranked list's or prompt's, so related pairs stay on one side).",
    )
    significance: float = Field(
        0.05, gt=0.0, lt=0.5, description="The gate's one-sided binomial test level against a coin."
    )
    min_accuracy: float = Field(
        0.6, ge=0.5, le=1.0, description="The gate's floor on held-out pair accuracy, however many pairs."
    )


class PreferenceConfig(_Section):
    """Learning from preferences after the supervised fine-tune; starts from the fine-tuned model."""

    enabled: bool = Field(
        False, description="Run preference_pairs and preference_model (DPO) after the fine-tune."
    )
    synthetic: bool = Field(
        False,
        description="Without files in landing/preferences/, build pairs from the corpus: the reference "
        "answer chosen, the fine-tuned model's answer rejected.",
    )
    synthetic_examples: int = Field(
        64, ge=1, description="Train examples the model answers for synthetic pairs."
    )
    synthetic_max_rouge_l: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A synthetic pair only where the model's answer is this far from the reference.",
    )
    min_pairs: int = Field(
        8, ge=1, description="Fewer pairs than this after cleaning fails the blocking check."
    )
    method: Literal["dpo", "kto", "grpo", "rloo"] = Field(
        "dpo",
        description="How the model learns the preferences: dpo (offline, from pairs), kto (offline, from "
        "thumbs-up/down single answers), grpo or rloo (online RL against the reward model).",
    )
    weights: Literal["lora", "full"] = Field("lora", description="LoRA (uses training.lora) or all weights.")

    @model_validator(mode="after")
    def _kto_needs_two_rows_a_batch(self) -> "PreferenceConfig":
        # KTO's KL estimate pairs each completion with another row's prompt: a batch of one has none.
        if self.method == "kto" and self.batch_size < 2:
            raise ValueError("method kto needs batch_size 2 or more (its KL term mixes rows of a batch)")
        return self

    @field_validator("method", mode="before")
    @classmethod
    def _method_names_the_algorithm(cls, value: Any) -> Any:
        if value in ("lora", "full"):
            raise ValueError(
                f"preference.method now names the algorithm (dpo, kto, grpo or rloo); for {value} weights "
                f"write preference.weights: {value}"
            )
        return value

    beta: float = Field(
        0.1, gt=0.0, description="DPO temperature: how far the policy may move from the reference."
    )
    learning_rate: float = Field(5e-5, ge=0.0)
    max_steps: int = Field(20, ge=1)
    batch_size: int = Field(2, ge=1, description="Pairs per device per step.")
    max_length: int = Field(512, ge=16, description="Prompt + answer tokens; longer pairs are truncated.")
    logging_steps: int = Field(2, ge=1)
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps (resumed like the fine-tune's).")
    rl: RLConfig = Field(RLConfig(), description="grpo and rloo: online RL against the reward model.")
    reward_model: RewardModelConfig = RewardModelConfig()


class EvaluationConfig(_Section):
    max_examples: int = Field(32, ge=1, description="Held-out examples scored (generation is the slow part).")
    max_new_tokens: int = Field(
        128, ge=1, description="Generation limit; a generation that reaches it did not stop at EOS."
    )
    repetition_penalty: float = Field(
        1.1,
        ge=1.0,
        description="Greedy decoding's penalty on tokens already in the text (1.0 = off). 1.1 breaks a "
        "small model's repetition loops; serve with the same value to get the evaluated behaviour.",
    )
    batch_size: int = Field(8, ge=1, description="Generation batch; bounded to keep memory flat.")
    primary_metric: Literal["perplexity", "rouge_l"] = "perplexity"
    promotion_margin: float = Field(
        0.0, ge=0.0, description="Relative improvement over champion (and base) needed to promote."
    )


class TrackingConfig(_Section):
    experiment: str = Field("tunegraph", description="MLflow experiment name.")
    registered_model: str = Field("tunegraph-model", description="MLflow registered model name.")


class ExportConfig(_Section):
    """What `gguf_model` writes from the champion; off by default (it adds about a minute on CPU)."""

    gguf: bool = Field(
        False, description="Write the champion as GGUF files (llama.cpp, Ollama, LM Studio) in gguf_model."
    )
    gguf_types: list[Literal["f16", "q8_0"]] = Field(
        ["f16", "q8_0"],
        min_length=1,
        description="GGUF tensor types to write: f16 (2 bytes a weight), q8_0 (34 bytes per 32 weights).",
    )
    gguf_check_examples: int = Field(
        8,
        ge=1,
        description="Held-out examples whose next-token logits the GGUF model must reproduce within the "
        "tolerance of its type (stages/gguf_export.py).",
    )


class ScheduleConfig(_Section):
    """When things run: not part of any asset's inputs, so a change here makes nothing stale."""

    retrain_cron: str = Field(
        "0 3 * * 1", description="When the retrain schedule looks for a stale model (weekly, Monday 03:00)."
    )


class PipelineConfig(_Section):
    name: str = "tunegraph"
    corpus: CorpusConfig = CorpusConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    preference: PreferenceConfig = PreferenceConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    export: ExportConfig = ExportConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    prompts: list[PromptVariant] = Field(
        list(DEFAULT_PROMPTS), description="Prompt variants, each scored on the model kinds it names."
    )
    prompt_search: PromptSearchConfig = PromptSearchConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:  # noqa: ANN401
        evaluation = raw.get("evaluation") if isinstance(raw, dict) else None
        moved = [
            k for k in ("system_prompt", "few_shot_k") if isinstance(evaluation, dict) and k in evaluation
        ]
        if moved:
            raise ValueError(f"evaluation.{moved[0]} moved to the prompts: list (a variant's system / "
                             "examples.k); see configs/default.yaml")  # fmt: skip
        return raw

    @field_validator("prompts")
    @classmethod
    def _prompts_are_usable(cls, value: list[PromptVariant]) -> list[PromptVariant]:
        names = [v.name for v in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variant name(s) {', '.join(twice)} used twice; give each variant its own name")
        plain = next((v for v in value if v.name == PLAIN), None)
        if plain is None or not {"base", "fine_tuned"} <= set(plain.models):
            raise ValueError(f"list a variant named {PLAIN} with models [base, fine_tuned]: every model is "
                             "compared on it (template '{instruction}' is the records' own prompts)")  # fmt: skip
        return value

    def variant(self, name: str) -> PromptVariant:
        found = next((v for v in self.prompts if v.name == name), None)
        if found is None:
            raise ConfigError(
                f"no prompt variant {name!r}; the config has {', '.join(v.name for v in self.prompts)}"
            )
        return found

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, as logged to MLflow params."""
        return _flatten(self.model_dump(mode="json"))

    def section_hash(self, *sections: str) -> str:
        """A short, stable hash of some sections, dotted paths allowed ("data.cleaning"). Where things
        run is left out, since it does not change what is computed: `training.launcher` (where training
        runs) and `data.engine` / `data.ray_address` (where the data stages run; their results are
        identical by contract), so a model's config hash and the data assets' versions ignore them."""
        where = {"training": {"launcher"}, "data": {"engine", "ray_address"}}
        dump = self.model_dump(mode="json", exclude=where)
        picked = {}
        for section in sections:
            value: Any = dump
            for part in section.split("."):
                value = value[part]
            picked[section] = value
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def parse_config(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            problems.append(f"{loc}: {e['msg']}{got}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(path: str | Path, overrides: dict[str, str] | None = None) -> PipelineConfig:
    """The pipeline YAML, with `overrides` (dotted key -> YAML value) applied on top and the whole
    validated by the same schema, so a bad override gets the same one-line error as a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass --config PATH or set TUNEGRAPH_CONFIG")
    return _parse_text(path.read_text(), str(path), tuple(sorted((overrides or {}).items())))


def parse_overrides(assignments: list[str]) -> dict[str, str]:
    """`["training.max_steps=10", ...]` (the CLI's --set) as a dict; refuses anything else."""
    overrides = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or " " in key.strip():
            raise ConfigError(
                f"--set {item!r}: write KEY=VALUE with a dotted config key, e.g. training.max_steps=10"
            )
        overrides[key.strip()] = value.strip()
    return overrides


@functools.lru_cache(maxsize=16)
def _parse_text(text: str, source: str, overrides: tuple[tuple[str, str], ...] = ()) -> PipelineConfig:
    """Keyed by the file's text (and the overrides): every step of a run asks for the config, and
    the (frozen) result of parsing and validating the same text is the same, while any edit
    parses afresh."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (corpus, data, model, ...)")
    for key, value in overrides:
        _set(raw, key, _yaml_value(key, value))
    if overrides:
        source = f"{source} with {', '.join(f'{k}={v}' for k, v in overrides)}"
    return parse_config(raw, source)


def _yaml_value(key: str, value: str) -> Any:  # noqa: ANN401
    try:
        return yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {key}: {value!r} is not a YAML value ({str(err).splitlines()[0]})"
        ) from None


def _set(raw: dict[str, Any], key: str, value: Any) -> None:  # noqa: ANN401
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parents[: i + 1])} is a value, not a section")
        node = child
    node[leaf] = value
