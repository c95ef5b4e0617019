"""A saved model as GGUF (f16, q8_0) with the `gguf` package, checked by loading it back.

    path = write_gguf(model_dir, out_dir / "model-q8_0.gguf", "q8_0", name="tunegraph-model v3")
    report = compare_logits(model_dir, path, texts)   # max |logit difference| against the safetensors model

The file follows llama.cpp's converter (`convert_hf_to_gguf.py`) where it and transformers
differ, so llama.cpp, Ollama and LM Studio read it as they read their own conversions:
- q_proj and k_proj rows are permuted from the rotate-half RoPE layout transformers uses to
  llama.cpp's interleaved one (`LlamaModel.permute`); transformers' GGUF loader undoes exactly
  this (`LlamaTensorProcessor`), which the round trip checks.
- 1-D tensors (the RMS norms) stay F32 in every type; 2-D ones, the token embeddings included,
  are F16 or Q8_0 (blocks of 32 weights with one f16 scale). A tied lm_head is not written: its
  absence is what tells both readers the embeddings are tied.
- the vocabulary is llama.cpp's `gpt2` model (byte-level BPE): tokens in id order, added
  special tokens typed CONTROL, the merges, the special token ids and the chat template.

Only Llama-architecture models with a byte-level BPE tokenizer (SmolLM2 and the tiny test
model) are handled; others are refused with a pointer to llama.cpp's converter.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

# Tensor type of 2-D weights and the file type llama.cpp records for it.
TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Largest |logit difference| accepted against the safetensors model, as a share of the largest
# |logit| over the same texts. Measured on SmolLM2-135M-Instruct over 1,871 positions of 8 stdlib
# examples (tests/e2e/test_gguf_smollm2.py): f16 0.00125, q8_0 0.035; on the tiny test model
# 0.0001 and 0.002. f16's limit also catches q/k rows left in transformers' order (0.008 on the
# tiny model, whose attention barely matters).
TOLERANCE = {"f16": 0.005, "q8_0": 0.08}

# llama.cpp names the pre-tokenizer (how text is split before BPE merges) in `tokenizer.ggml.pre`.
# These are the two splits transformers writes for a byte-level BPE tokenizer that llama.cpp knows.
_PRE_TOKENIZERS = {
    json.dumps(
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    ): "gpt-2",
}


class GgufExportError(ValueError):
    """The model cannot be written as GGUF here; the message says what to use instead."""


def write_gguf(model_dir: Path, path: Path, kind: str, name: str) -> Path:
    """Write the model saved in `model_dir` (config, safetensors, tokenizer) as one GGUF file."""
    tensor_type, file_type = TYPES[kind]
    config = AutoConfig.from_pretrained(model_dir)
    _check_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _add_vocabulary(writer, tokenizer, model_dir, config.vocab_size)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp writes no output.weight, and readers tie it again
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GgufExportError(f"no GGUF name for tensor {hf_name}: use llama.cpp's convert_hf_to_gguf.py")
        data = tensor.numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_key_value_heads)
        if data.ndim == 1 or data.shape[-1] % 32:  # norms (and rows Q8_0 blocks cannot tile) stay F32
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif tensor_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Rows of a q/k projection from rotate-half RoPE order to llama.cpp's interleaved pairs."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _check_supported(config: Any) -> None:
    if config.model_type != "llama":
        raise GgufExportError(
            f"GGUF export handles Llama-architecture models; this one is {config.model_type!r}: "
            "use llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GgufExportError(
            f"rope scaling {rope.get('rope_type')!r} is not exported: use llama.cpp's converter"
        )


def _add_vocabulary(writer: gguf.GGUFWriter, tokenizer: Any, model_dir: Path, vocab_size: int) -> None:
    """llama.cpp's `_set_vocab_gpt2`: tokens by id with their types, merges, special ids, template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise GgufExportError("GGUF export handles byte-level BPE tokenizers: use llama.cpp's converter")
    pre = _PRE_TOKENIZERS.get(json.dumps(backend["pre_tokenizer"]))
    if pre is None:
        raise GgufExportError(
            f"pre-tokenizer {backend['pre_tokenizer']} has no llama.cpp name here: use llama.cpp's converter"
        )
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    # Whether a BOS is prepended: what the tokenizer does, stated (readers differ in their defaults).
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)


@dataclass(frozen=True)
class Comparison:
    """Next-token logits of the GGUF model against the safetensors model on the same texts."""

    kind: str
    positions: int  # logit vectors compared (every position of every text)
    max_abs_diff: float
    max_abs_logit: float
    relative_diff: float  # max_abs_diff / max_abs_logit
    top1_agreement: float  # share of positions where both models predict the same next token
    tolerance: float
    tokenizer_matches: bool  # the GGUF's tokenizer gives the same ids on every text

    @property
    def passed(self) -> bool:
        return self.tokenizer_matches and self.relative_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        rounded = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {**rounded, "passed": self.passed}


def check_texts(tokenizer: Any, records: list[dict[str, Any]]) -> list[str]:
    """Held-out records as the model reads them: a dialogue through the chat template (answer
    included, so every position of prompt and answer is compared), a document as it is."""
    return [
        r["messages"][-1]["content"]
        if r["schema"] == "text"
        else tokenizer.apply_chat_template(r["messages"], tokenize=False)
        for r in records
    ]


@torch.no_grad()
def compare_logits(
    model_dir: Path, gguf_path: Path, kind: str, texts: list[str], max_tokens: int = 256
) -> Comparison:
    """Load `gguf_path` through transformers' GGUF loader and compare logits on `texts` (each cut
    to `max_tokens`), and its tokenizer's ids with the saved tokenizer's."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    diff, peak, agree, positions, same_ids = 0.0, 0.0, 0, 0, True
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        same_ids &= gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        ids = ids[:max_tokens]
        batch = torch.tensor([ids])
        want, got = reference(input_ids=batch).logits[0], loaded(input_ids=batch).logits[0]
        diff = max(diff, float((want - got).abs().max()))
        peak = max(peak, float(want.abs().max()))
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        positions += len(ids)
    return Comparison(
        kind=kind,
        positions=positions,
        max_abs_diff=diff,
        max_abs_logit=peak,
        relative_diff=diff / peak if peak else 0.0,
        top1_agreement=agree / positions if positions else 1.0,
        tolerance=TOLERANCE[kind],
        tokenizer_matches=same_ids,
    )
