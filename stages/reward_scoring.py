"""Scoring answers with the reward model: one scalar per (prompt, answer), higher is preferred.

The reward model (`reward_model`, stages/reward.py) is a Hugging Face
`AutoModelForSequenceClassification` folder with `num_labels=1`, `config.pad_token_id` set and its
tokenizer. It scores what TRL's RewardTrainer trained it on: the prompt's messages followed by
`{"role": "assistant", "content": answer}`, rendered with the tokenizer's chat template and read at
the last token that is not padding. Every user (the held-out accuracy, RL, the evaluation) scores
through `reward_scores`, so the same answer gets the same score everywhere.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.inference import Placement


def load_reward_model(folder: Path, placement: Placement) -> tuple[Any, Any]:
    """(model, tokenizer) from a reward model folder, on the placement's device and dtype, in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=placement.dtype)
    if model.config.num_labels != 1 or model.config.pad_token_id is None:
        raise ValueError(
            f"{folder} is no reward model (num_labels {model.config.num_labels}, pad_token_id "
            f"{model.config.pad_token_id}): point at the model/ folder the reward_model asset wrote"
        )
    return model.to(placement.device).eval(), tokenizer


@torch.no_grad()
def reward_scores(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    completions: list[str],
    batch_size: int = 8,
) -> list[float]:
    """The reward of each completion as the answer to its prompt (chat messages ending with the user's turn).

    Batched, right-padded with the model's pad token (the sequence-classification head reads the last
    non-pad token, as in training); no gradients."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"{len(prompts)} prompts but {len(completions)} completions: give one answer per prompt"
        )
    pad = model.config.pad_token_id
    ids = [
        tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
        )["input_ids"]
        for prompt, answer in zip(prompts, completions, strict=True)
    ]
    scores: list[float] = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        width = max(len(x) for x in batch)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=model.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=model.device)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        scores += logits[:, 0].float().tolist()
    return scores
