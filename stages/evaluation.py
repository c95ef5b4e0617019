"""Score a model on held-out examples: perplexity and greedy generations, by schema.

A record with a prompt (instruction, prompt/completion, chat) is an answer to score: perplexity of
the answer (+EOS) given the prompt, and the greedy answer against the reference (ROUGE-L, exact
match, whether it stops at EOS). A `text` record is a document (continued pre-training):
perplexity of all its tokens, and the greedy continuation of its first half against the text that
follows (ROUGE-L); exact match and stopping do not apply to it. METRICS_BY_SCHEMA says the same for
the report.

Perplexity works in token-budgeted batches sorted by length, generation in a token-budgeted continuous
batch (stages/generation.py), so memory stays flat whatever the prompt lengths (few-shot prompts are
several times longer than zero-shot ones).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages import metrics
from stages.chat import IGNORE_INDEX, label_positions, render_prompts, response_text
from stages.generation import Decoder
from stages.serving import decode_answer, decoding_config

# The report's contract rows (DESIGN.md): the base model with today's three variants, and the models.
VARIANTS = ("base_zero_shot", "base_system_prompt", "base_few_shot", "fine_tuned", "champion")

_ANSWER = {
    "loss/perplexity": "the answer's tokens and EOS, given the prompt (the last assistant turn of a dialogue)",
    "rouge_l": "the greedy answer against the reference answer",
    "exact_match": "the greedy answer equals the reference (normalised)",
    "stop_rate": "share of greedy answers that end at EOS within evaluation.max_new_tokens",
}
METRICS_BY_SCHEMA: dict[str, dict[str, str | None]] = {
    "instruction": _ANSWER,
    "prompt_completion": _ANSWER,
    "chat": _ANSWER,
    "text": {
        "loss/perplexity": "every token of the document and EOS (as trained: loss on all tokens)",
        "rouge_l": "the greedy continuation of the document's first half against the tokens that follow",
        "exact_match": None,
        "stop_rate": None,
    },
    "preference": {
        "loss/perplexity": "DPO loss on the training pairs (report.preference.train_loss); the DPO model is "
        "scored on the held-out corpus as the variant `preference`",
        "rouge_l": None,
        "exact_match": None,
        "stop_rate": None,
        "reward_margin": "chosen minus rejected reward on the training pairs (report.preference)",
    },
}


# What a forward pass costs beyond its tokens, in tokens (SmolLM2 bf16 here: 256 tokens in 0.136 s, 512 in
# 0.170 s: ~0.1 s fixed, ~750 tokens' worth; 512 errs towards splitting off a long row). Padding that costs
# less than this stays in the batch.
FORWARD_COST_TOKENS = 512


def _batches(lengths: list[int], max_batch: int, token_budget: int) -> Iterator[list[int]]:
    """Indices in batches of similar length: the split of the length-sorted order that computes the fewest
    token slots (rows x the batch's widest row, plus FORWARD_COST_TOKENS a batch), each batch within
    `max_batch` rows and `token_budget` slots. Greedy filling put one 497-token held-out answer in a batch
    of 16 rows of ~60: 7,952 slots for 1,400 tokens, 2.4 of a variant's 3 s of perplexity."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    n = len(order)
    cost = [0.0] * (n + 1)  # cost[j]: the cheapest split of order[j:]
    end = [n] * (n + 1)  # end[j]: where the first batch of that split ends
    for j in range(n - 1, -1, -1):
        width = lengths[order[j]]  # the widest row of any batch starting at j
        cost[j] = float("inf")
        for k in range(j + 1, min(n, j + max_batch) + 1):
            if k - j > 1 and (k - j) * width > token_budget:
                break
            total = FORWARD_COST_TOKENS + (k - j) * width + cost[k]
            if total < cost[j]:
                cost[j], end[j] = total, k
    j = 0
    while j < n:
        yield order[j : end[j]]
        j = end[j]


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
    return text_nll(model, tokenizer, prompts, responses, batch_size, token_budget, desc)


@torch.no_grad()
def text_nll(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 8,
    token_budget: int = 8192,
    desc: str = "perplexity",
) -> tuple[float, int]:
    """`response_nll` on prompts already rendered ("" scores a whole document)."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r + tokenizer.eos_token for r in responses], add_special_tokens=False)["input_ids"]
    seqs = [p + r for p, r in zip(p_ids, r_ids, strict=True)]
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in tqdm(
        list(_batches([len(s) for s in seqs], batch_size, token_budget)), desc=desc, leave=False
    ):
        ids, labels, mask = scored_batch(tokenizer.pad_token_id, p_ids, r_ids, batch)
        # Logits only where a token is scored: a few-shot prompt's tokens cost no 49k-wide projection.
        scored = label_positions(labels)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       logits_to_keep=scored["logits_to_keep"].to(device)).logits.float()  # fmt: skip
        targets = scored["shift_labels"].to(device)
        total += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return total, count


def scored_batch(
    pad_id: int, p_ids: list[list[int]], r_ids: list[list[int]], batch: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels, attention mask) of prompt + response rows, right-padded; only responses labelled."""
    width = max(len(p_ids[i]) + len(r_ids[i]) for i in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE_INDEX)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        p, n = len(p_ids[i]), len(p_ids[i]) + len(r_ids[i])
        ids[row, :n] = torch.tensor(p_ids[i] + r_ids[i])
        labels[row, p:n] = torch.tensor(r_ids[i])
        mask[row, :n] = 1
    return ids, labels, mask


def left_padded(pad_id: int, p_ids: list[list[int]], batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of prompts left-padded, so every prompt ends where generation starts."""
    width = max(len(p_ids[i]) for i in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        ids[row, width - len(p_ids[i]) :] = torch.tensor(p_ids[i])
        mask[row, width - len(p_ids[i]) :] = 1
    return ids, mask


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 8,
    token_budget: int | None = None,  # None: the model's KV budget (stages/generation.py)
    desc: str = "generate",
    repetition_penalty: float = 1.0,
) -> list[dict[str, Any]]:
    """Greedy completions: [{text, stopped}] in input order; `stopped` = EOS before the limit."""
    prompts = render_prompts(tokenizer, conversations)
    return generate_text(
        model, tokenizer, prompts, max_new_tokens, batch_size, token_budget, desc, repetition_penalty
    )


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 8,
    token_budget: int | None = None,  # None: the model's KV budget (stages/generation.py)
    desc: str = "generate",
    repetition_penalty: float = 1.0,
) -> list[dict[str, Any]]:
    """`generate` on prompts already rendered: a chat prompt, or the start of a document."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    # The decoding the fine-tuned model is saved with (generation_config.json): serving matches.
    config = decoding_config(tokenizer, max_new_tokens, repetition_penalty)
    with tqdm(total=len(prompts), desc=desc, leave=False) as bar:
        generated = Decoder(model, config, batch_size, token_budget).run(p_ids, on_done=bar.update)
    out = []
    for tokens in generated:
        text, stopped = decode_answer(tokenizer, tokens)
        out.append({"text": text, "stopped": stopped})
    return out


def references(records: list[dict[str, Any]]) -> list[str]:
    return [response_text(r) for r in records]


@dataclass(frozen=True)
class Item:
    """One thing a variant is scored on: an answer to a prompt, or the continuation of a document."""

    kind: str  # "answer" or "continuation"
    nll_prompt: str  # rendered text before the scored tokens ("" for a document: all of it is scored)
    nll_target: str  # the scored tokens (EOS is appended)
    gen_prompt: str  # the rendered text the model continues greedily
    reference: str  # what the greedy output is compared with
    shown: str  # the prompt as a person reads it (samples)


def eval_items(
    conversations: list[list[dict[str, str]]],
    records: list[dict[str, Any]],
    tokenizer: Any,
    max_new_tokens: int,
) -> list[Item]:
    """What each record is scored on, asked as `conversations` (stages/prompts.py), in order."""
    prompts = render_prompts(tokenizer, conversations)
    items = []
    for record, prompt in zip(records, prompts, strict=True):
        if record["schema"] == "text":
            head, reference = continuation(tokenizer, response_text(record), max_new_tokens)
            items.append(Item("continuation", "", response_text(record), head, reference, head))
        else:
            user = next((m["content"] for m in reversed(record["messages"]) if m["role"] == "user"), "")
            items.append(Item("answer", prompt, response_text(record), prompt, response_text(record), user))
    return items


_WORDS = re.compile(r"\S+\s*")


def continuation(tokenizer: Any, text: str, max_new_tokens: int) -> tuple[str, str]:
    """(prefix, reference): a document's first half of words, and at most `max_new_tokens` tokens of
    what follows, so that a greedy continuation of that length is compared with text of its length."""
    words = _WORDS.findall(text)
    cut = max(1, len(words) // 2)
    rest = tokenizer("".join(words[cut:]), add_special_tokens=False)["input_ids"][:max_new_tokens]
    return "".join(words[:cut]).rstrip(), tokenizer.decode(rest).strip()


def score(
    model: Any,
    tokenizer: Any,
    items: list[Item],
    batch_size: int,
    max_new_tokens: int,
    repetition_penalty: float,
    desc: str,
) -> tuple[dict[str, Any], list[str]]:
    """(scores, greedy outputs) of a model on items; metrics that apply to no item are None."""
    nll, tokens = text_nll(model, tokenizer, [i.nll_prompt for i in items], [i.nll_target for i in items],
                           batch_size, desc=f"{desc} perplexity")  # fmt: skip
    outputs = generate_text(model, tokenizer, [i.gen_prompt for i in items], max_new_tokens, batch_size,
                            desc=f"{desc} generate", repetition_penalty=repetition_penalty)  # fmt: skip
    texts = [o["text"] for o in outputs]
    answers = [(i, o) for i, o in zip(items, outputs, strict=True) if i.kind == "answer"]
    loss = nll / tokens
    rouge = metrics.load("rouge_l").compute(predictions=texts, references=[i.reference for i in items])
    exact = metrics.load("exact_match").compute(
        predictions=[o["text"] for _, o in answers], references=[i.reference for i, _ in answers]
    )
    scores = {
        "loss": loss,
        "perplexity": metrics.perplexity(loss),
        "rouge_l": rouge["rouge_l"],
        "exact_match": exact["exact_match"] if answers else None,
        "stop_rate": metrics.mean([float(o["stopped"]) for _, o in answers]) if answers else None,
        "examples": len(items),
        "continuations": len(items) - len(answers),
    }
    return scores, texts
