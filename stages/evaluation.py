"""Score a model on held-out examples: response perplexity and greedy generations.

Both work in token-budgeted batches sorted by length, so memory stays flat whatever the prompt
lengths (few-shot prompts are several times longer than zero-shot ones).
"""

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.chat import IGNORE_INDEX, prompt_messages, render_prompts, response_text

VARIANTS = ("base_zero_shot", "base_system_prompt", "base_few_shot", "fine_tuned", "champion")


def variant_conversations(
    variant: str, records: list[dict[str, Any]], shots: list[dict[str, Any]], system_prompt: str
) -> list[list[dict[str, str]]]:
    """The prompt each variant sees for each record (everything before the answer)."""
    convs = []
    for record in records:
        prompt = prompt_messages(record)
        if variant == "base_system_prompt":
            prompt = [
                {"role": "system", "content": system_prompt},
                *(m for m in prompt if m["role"] != "system"),
            ]
        elif variant == "base_few_shot":
            demos = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
            prompt = [*demos, *prompt]
        convs.append(prompt)
    return convs


def _batches(lengths: list[int], max_batch: int, token_budget: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= max_batch or lengths[batch[0]] * (len(batch) + 1) > token_budget):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def response_nll(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    responses: list[str],
    batch_size: int = 8,
    token_budget: int = 8192,
    desc: str = "perplexity",
) -> tuple[float, int]:
    """(summed negative log-likelihood, response tokens) of each response + EOS given its prompt."""
    prompts = render_prompts(tokenizer, conversations)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r + tokenizer.eos_token for r in responses], add_special_tokens=False)["input_ids"]
    seqs = [p + r for p, r in zip(p_ids, r_ids, strict=True)]
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in tqdm(
        list(_batches([len(s) for s in seqs], batch_size, token_budget)), desc=desc, leave=False
    ):
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), IGNORE_INDEX)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n, p = len(seqs[i]), len(p_ids[i])
            ids[row, :n] = torch.tensor(seqs[i])
            labels[row, p:n] = torch.tensor(r_ids[i])
            mask[row, :n] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_labels = labels[:, 1:].to(device)
        total += float(
            F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((shift_labels != IGNORE_INDEX).sum())
    return total, count


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 8,
    token_budget: int = 8192,
    desc: str = "generate",
    repetition_penalty: float = 1.0,
) -> list[dict[str, Any]]:
    """Greedy completions: [{text, stopped}] in input order; `stopped` = EOS before the limit."""
    prompts = render_prompts(tokenizer, conversations)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    out: list[dict[str, Any]] = [{} for _ in prompts]
    lengths = [len(p) + max_new_tokens for p in p_ids]
    for batch in tqdm(list(_batches(lengths, batch_size, token_budget)), desc=desc, leave=False):
        width = max(len(p_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding, so every prompt ends where generation starts
            ids[row, width - len(p_ids[i]) :] = torch.tensor(p_ids[i])
            mask[row, width - len(p_ids[i]) :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[:, width:].cpu()
        for row, i in enumerate(batch):
            tokens = generated[row].tolist()
            stopped = tokenizer.eos_token_id in tokens
            if stopped:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            out[i] = {"text": tokenizer.decode(tokens, skip_special_tokens=True).strip(), "stopped": stopped}
    return out


def references(records: list[dict[str, Any]]) -> list[str]:
    return [response_text(r) for r in records]
