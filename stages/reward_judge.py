"""Every way of getting answers judged by the reward model: its mean score, the win rate against the base
model's plain answers, and how often a policy itself ranks the people's chosen answer above the rejected one.

Perplexity and ROUGE-L compare answers with references; they do not say which answers people prefer.
The reward model (trained on their pairs, gated on held-out pair accuracy) does, so model_evaluation
adds three columns to every leaderboard row:

- `reward`: the reward model's mean score of the row's held-out answers (the question asked plainly, so a
  prompt variant's scaffolding is not judged, only its answer);
- `win_rate`: the share of held-out questions where the row's answer scores above the base model's plain
  answer (`base_zero_shot`), ties counted half: 0.5 is "no better than the base";
- `pair_accuracy`: for each policy (a model, not a prompt), the share of held-out preference pairs whose
  chosen answer it gives a higher log-probability than the rejected one (DPO's implicit reward): does the
  model itself prefer what people prefer.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch

BASELINE = "base_zero_shot"

Messages = list[dict[str, str]]
Scorer = Callable[[list[Messages], list[str]], list[float]]


def judge(
    questions: Sequence[Messages | None],
    answers: dict[str, list[str]],
    score: Scorer,
    baseline: str = BASELINE,
) -> dict[str, dict[str, float]]:
    """{row: {reward, win_rate}} for every row of `answers` (held-out answers in `questions`' order).

    A question of None (a document to continue, not a question to answer) is not judged. `score`
    is the reward model (stages/reward_scoring.reward_scores bound to a loaded model)."""
    asked = [i for i, q in enumerate(questions) if q is not None]
    if not asked:
        return {}
    rewards = {
        row: score([questions[i] for i in asked], [texts[i] for i in asked])  # type: ignore[misc]
        for row, texts in answers.items()
    }
    base = rewards.get(baseline)
    out = {}
    for row, scores in rewards.items():
        out[row] = {"reward": sum(scores) / len(scores)}
        if base is not None:
            out[row]["win_rate"] = sum(_win(a, b) for a, b in zip(scores, base, strict=True)) / len(scores)
    return out


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


@torch.no_grad()
def pair_accuracy(model: Any, tokenizer: Any, pairs: Sequence[dict[str, Any]], batch_size: int = 8) -> float:
    """The share of pairs (TRL's conversational format: prompt, chosen, rejected message lists) whose
    chosen answer `model` gives a higher summed log-probability than the rejected answer."""
    if not pairs:
        raise ValueError("pair_accuracy needs at least one pair")
    chosen = answer_logprobs(model, tokenizer, [(p["prompt"], p["chosen"]) for p in pairs], batch_size)
    rejected = answer_logprobs(model, tokenizer, [(p["prompt"], p["rejected"]) for p in pairs], batch_size)
    return sum(_win(c, r) for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def answer_logprobs(
    model: Any, tokenizer: Any, conversations: Sequence[tuple[Messages, Messages]], batch_size: int
) -> list[float]:
    """Summed log-probability of each answer's tokens given its prompt (the chat template's rendering)."""
    rows = []
    for prompt, answer in conversations:
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template([*prompt, *answer], tokenize=False)
        if not whole.startswith(head):
            raise ValueError("the chat template renders the prompt differently inside the conversation")
        prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(whole[len(head) :], add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids, answer_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            mask[i, : len(p) + len(a)] = 1
            scored[i, len(p) : len(p) + len(a)] = True
        ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logprobs = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
        out.extend((token_logprobs * scored[:, 1:]).sum(1).tolist())
    return out
