"""GGUF export of the tiny model with the real tokenizer: llama.cpp's layout, read back by transformers."""

import collections

import gguf
import numpy as np
import pytest
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from stages.gguf_export import TOLERANCE, GgufExportError, compare_logits, permute, write_gguf
from stages.model_source import save_base_model

TEXTS = [
    "<|im_start|>user\nExplain what json.dumps does in Python.<|im_end|>\n"
    "<|im_start|>assistant\nSerialize obj to a JSON formatted str.<|im_end|>\n",
    "Grüße 🦙 2024: heapq.heappush(heap, item) keeps the heap invariant.",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_base_model("bundled:tiny-random", folder)
    return folder


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (9, 3)])
def test_q_k_rows_follow_llama_cpp_and_transformers_undoes_exactly_that(heads, kv_heads):
    rows = (heads if kv_heads == heads else kv_heads) * 8
    weights = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    permuted = permute(weights, heads, kv_heads)
    assert not np.array_equal(permuted, weights)  # rotate-half order -> interleaved pairs
    processor = LlamaTensorProcessor({"num_attention_heads": heads, "num_key_value_heads": kv_heads})
    name = "blk.0.attn_q.weight" if heads == kv_heads else "blk.0.attn_k.weight"
    assert np.array_equal(processor.process(permuted, name).weights, weights)


# f16 in make test-slow (15 s): q8_0 goes through the same layout plus the quantiser.
@pytest.mark.parametrize("kind", [pytest.param("f16", marks=pytest.mark.slow), "q8_0"])
def test_tiny_model_round_trips_within_tolerance_in_llama_cpp_layout(tiny_dir, tmp_path, kind):
    path = write_gguf(tiny_dir, tmp_path / f"tiny-{kind}.gguf", kind, "tiny v1")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings: not written, as llama.cpp does
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["token_embd.weight"] == types["blk.1.ffn_down.weight"] == kind.upper()
    field = {k: reader.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.model",
                                                       "tokenizer.ggml.pre", "llama.block_count")}  # fmt: skip
    assert field == {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2",
                     "tokenizer.ggml.pre": "gpt-2", "llama.block_count": 2}  # fmt: skip
    token_types = collections.Counter(reader.fields["tokenizer.ggml.token_type"].contents())
    assert token_types == {
        gguf.TokenType.NORMAL: 49152 - 17,
        gguf.TokenType.CONTROL: 17,
    }  # as in SmolLM2's own file
    assert (
        reader.fields["tokenizer.chat_template"].contents() == (tiny_dir / "chat_template.jinja").read_text()
    )

    comparison = compare_logits(tiny_dir, path, kind, TEXTS)
    assert comparison.tokenizer_matches and comparison.positions > 40
    assert comparison.relative_diff <= TOLERANCE[kind] and comparison.top1_agreement == 1.0
    assert comparison.passed


def test_a_model_that_is_not_llama_is_refused_with_where_to_go(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(GgufExportError, match="this one is 'gpt2': use llama.cpp's convert_hf_to_gguf.py"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "f16", "x")
