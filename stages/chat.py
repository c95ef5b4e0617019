"""Chat-template rendering and response-only tokenisation.

Every example is rendered with the base model's chat template; the prompt (everything up to and
including the assistant header) is masked out of the labels, and the response ends with the EOS
token the model stops on at generation time. A tokenizer without a template gets ChatML, which is
saved with the model so evaluation and serving render exactly what training saw.
"""

from typing import Any

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips

# ChatML, the template of SmolLM2 and many others; documented as tunegraph's default.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give `tokenizer` the default template if it has none. Returns True when it did."""
    if tokenizer.chat_template:
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no EOS token: set one before fine-tuning so the model can stop")
    return True


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """Everything before the final assistant turn."""
    return list(record["messages"][:-1])


def response_text(record: dict[str, Any]) -> str:
    return record["messages"][-1]["content"]


def render_prompts(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Prompt text for each conversation, ending with the assistant header (generation prompt)."""
    return [
        tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) if conv else ""
        for conv in conversations
    ]


def tokenize_records(tokenizer: Any, records: list[dict[str, Any]], batch_size: int = 1024) -> list[dict]:
    """Records -> [{input_ids, labels}] with labels only on the response and its EOS.

    Prompt and response are tokenised separately, in batches: the prompt ends with the assistant
    header's newline, so the boundary tokenises the same way at generation time.
    """
    out: list[dict] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        prompts = render_prompts(tokenizer, [prompt_messages(r) for r in batch])
        responses = [response_text(r) + tokenizer.eos_token for r in batch]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
        for p, r in zip(prompt_ids, response_ids, strict=True):
            out.append({"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r})
    return out
