"""Serving the way the evaluation measured: the decoding saved with the model, answers through its
chat template, and the registered MLflow model taking OpenAI-style chat messages.

- `write_generation_config`: greedy decoding with the evaluated `repetition_penalty` and
  `max_new_tokens`, and the EOS/pad ids, saved as the model's `generation_config.json`, so a plain
  `from_pretrained` + `generate` answers as the evaluation did (without the penalty about 10 % of
  the demo's answers loop until the limit).
- `stream_reply`: one answer, printed token by token (`tunegraph chat`).
- `log_chat_model`: the model logged with MLflow's `llm/v1/chat` task: a chat signature and
  input example, the saved chat template applied to the messages, OpenAI-style responses, so
  `mlflow models serve` answers `{"messages": [...]}`.

Every path decodes an answer with `decode_answer`, so the same tokens give the same text.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers.generation.streamers import BaseStreamer

from stages.chat import render_prompts

# What `mlflow models serve` shows as the model's example request.
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What does json.dumps do?"}]}


def decoding_config(tokenizer: Any, max_new_tokens: int, repetition_penalty: float) -> GenerationConfig:
    """The evaluation's decoding as a GenerationConfig: greedy, its penalty and limit, EOS/pad."""
    return GenerationConfig(
        do_sample=False,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def write_generation_config(model_dir: Path, decoding: dict[str, Any]) -> dict[str, Any]:
    """Save `decoding` ({max_new_tokens, repetition_penalty}) as the generation_config.json of the
    model saved in `model_dir`, with its tokenizer's EOS and pad ids; returns what was saved, in words."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    decoding_config(tokenizer, **decoding).save_pretrained(model_dir)
    return {
        **decoding,
        "do_sample": False,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }


def decode_answer(tokenizer: Any, tokens: list[int]) -> tuple[str, bool]:
    """(answer text, stopped at EOS) from generated token ids: cut at EOS, special tokens dropped, stripped."""
    stopped = tokenizer.eos_token_id in tokens
    if stopped:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip(), stopped


@dataclass(frozen=True)
class Reply:
    text: str
    tokens: list[int]  # generated ids, EOS included when it stopped
    stopped: bool  # ended at EOS rather than at max_new_tokens


class _Printer(BaseStreamer):
    """Writes the answer as tokens arrive; holds back a split multi-byte character until it is whole."""

    def __init__(self, tokenizer: Any, write: Callable[[str], None]):
        self.tokenizer, self.write = tokenizer, write
        self.tokens: list[int] = []
        self.shown = ""
        self.prompt_done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:  # generate() hands over the prompt first
            self.prompt_done = True
            return
        self.tokens += value.flatten().tolist()
        text = decode_answer(self.tokenizer, self.tokens)[0]
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            self.write(text[len(self.shown) :])
            self.shown = text

    def end(self) -> None:
        text = decode_answer(self.tokenizer, self.tokens)[0]
        self.write(text[len(self.shown) :] if text.startswith(self.shown) else f"\n{text}")


@torch.no_grad()
def stream_reply(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], write: Callable[[str], None] = print
) -> Reply:
    """Answer the last user turn of `messages` with the model's saved decoding, writing it as it comes."""
    prompt = render_prompts(tokenizer, [messages])[0]
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    printer = _Printer(tokenizer, write)
    generated = model.generate(**inputs, streamer=printer)[0, inputs["input_ids"].shape[1] :].tolist()
    text, stopped = decode_answer(tokenizer, generated)
    return Reply(text, generated, stopped)


def log_chat_model(model: Any, tokenizer: Any, registered_model: str, pip_requirements: list[str]) -> Any:
    """Log the model to the active MLflow run as a chat model and register it; returns the ModelInfo.

    `model_config` repeats the saved token limit so that MLflow's `finish_reason` says "length"
    when an answer hits it; a request's own `max_tokens` still overrides it.
    """
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="llm/v1/chat",
        input_example=INPUT_EXAMPLE,
        model_config={"max_new_tokens": model.generation_config.max_new_tokens},
        pip_requirements=pip_requirements,
        registered_model_name=registered_model,
    )
