"""Per-example attention for packed blocks: the masked SDPA's loss and gradients, and nothing else changed."""

import pyarrow as pa
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.chat import IGNORE_INDEX
from stages.packed_attention import PACKED_SDPA, example_spans, use_packed_sdpa
from stages.packing import pack_bfd
from stages.train import PackedCollator


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_cache=False, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _packed_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    examples = []
    for n_prompt, n_resp in [(5, 9), (3, 4), (8, 11), (2, 6), (6, 3), (4, 12)]:
        ids = torch.randint(0, 128, (n_prompt + n_resp,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    return PackedCollator(pad_token_id=0)(pack_bfd(pa.Table.from_pylist(examples), 24)[0].to_pylist())


def test_examples_are_found_where_positions_restart():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1]])
    assert example_spans(positions) == [[(0, 3), (3, 5), (5, 9)], [(0, 7), (7, 9)]]


def test_packed_sdpa_gives_the_masked_loss_and_gradients():
    """Same packed batch, transformers' block-diagonal SDPA vs one SDPA call per example: loss within
    1e-6, every parameter's gradient within 1e-6 (fp32)."""
    model, batch = _tiny_llama().train(), _packed_batch()
    assert (batch["position_ids"] == 0).sum() > len(batch["input_ids"])  # several examples in a row

    def loss_and_grads() -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    masked, masked_grads = loss_and_grads()
    assert use_packed_sdpa(model) and model.config._attn_implementation == PACKED_SDPA
    packed, packed_grads = loss_and_grads()
    assert abs(packed - masked) < 1e-6
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, masked_grads[name], atol=1e-6), name


def test_padding_masks_and_generation_keep_transformers_sdpa():
    """With a padding mask (left-padded prompts) and a KV cache, packed_sdpa hands over to SDPA: the
    same logits and the same greedy tokens as a model that never switched."""
    reference, model = _tiny_llama().eval(), _tiny_llama().eval()
    assert use_packed_sdpa(model)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            reference(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )
        settings = {"max_new_tokens": 5, "do_sample": False, "use_cache": True, "pad_token_id": 0}
        assert torch.equal(
            model.generate(input_ids=ids, attention_mask=mask, **settings),
            reference.generate(input_ids=ids, attention_mask=mask, **settings),
        )
