"""The fused Llama decode step (stages/decode_step.py) gives the model's own forward's logits to the bit."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from stages.decode_step import LlamaDecodeStep, Slots, takes_fast_step
from stages.model_source import tiny_random_model


def _smollm2_shaped(layers: int = 2) -> LlamaForCausalLM:
    """SmolLM2-135M's widths (hidden 576, 9 query / 3 key-value heads, MLP 1536) with random weights and two
    layers: the matmul shapes whose kernels the demo's evaluation runs, without loading the model."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         rope_theta=100000.0)  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("shape", ["tiny", "smollm2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_logits_equal_the_forwards_to_the_bit(shape, dtype, padded):
    model = (tiny_random_model(49152) if shape == "tiny" else _smollm2_shaped()).to(dtype).eval()
    rows, width = 5, 24
    ids = torch.randint(0, 49152, (rows, width), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(rows, width, dtype=torch.long)
    if padded:
        mask[1, :7], mask[3, :15] = 0, 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]  # fmt: skip
        slots = Slots.from_cache(cache, room=2)  # room for 2 of the 6 steps: the buffers grow on the way
        step = LlamaDecodeStep(model)
        token, position = logits.argmax(-1), mask.sum(-1)
        for _ in range(6):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            theirs = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                           cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # fmt: skip
            ours = step(token, position, mask if padded else None, slots)
            assert torch.equal(ours, theirs)
            token, position = theirs.argmax(-1), position + 1
    assert slots.width == width + 6


def test_fusing_shares_the_weights_and_changes_no_output():
    model = tiny_random_model(512).eval()
    ids = torch.tensor([[5, 9, 11, 3]])
    before = model(input_ids=ids).logits
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    step = LlamaDecodeStep(model)
    after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q)
    fused = step.qkv[0]
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() == fused.data_ptr()  # a view: no copy


def test_only_the_llama_it_reproduces_takes_the_step():
    model = tiny_random_model(512)
    assert takes_fast_step(model)
    model.config._attn_implementation = "eager"  # different attention arithmetic: the generic forward decodes
    assert not takes_fast_step(model)
    with pytest.raises(ValueError, match="LlamaForCausalLM with SDPA only"):
        LlamaDecodeStep(model)


def test_slots_select_rows_and_join_left_padded():
    keys = [torch.arange(2 * 1 * 3 * 1, dtype=torch.float32).view(2, 1, 3, 1)]
    slots = Slots(keys, [k.clone() for k in keys], width=3)
    slots.select(torch.tensor([1]), start=1)  # keep row 1, drop one padding column
    assert slots.width == 2 and slots.keys[0][0, 0, :2, 0].tolist() == [4.0, 5.0]
    other = Slots([torch.full((1, 1, 3, 1), 9.0)], [torch.full((1, 1, 3, 1), 9.0)], width=3)
    joined = slots.joined(other, room=4)
    assert joined.width == 3 and joined.keys[0].shape == (2, 1, 7, 1)
    assert joined.keys[0][:, 0, :3, 0].tolist() == [[0.0, 4.0, 5.0], [9.0, 9.0, 9.0]]  # row 0 left-padded


def test_slots_stay_on_the_device_of_the_cache_they_hold():
    """ "meta" stands for a GPU: a buffer made without the cache's device (a bare torch.zeros) fails this."""
    keys = [torch.empty(2, 3, 5, 4, device="meta")]
    slots = Slots(keys, [k.clone() for k in keys], width=5)
    slots.select(torch.tensor([1], device="meta"), start=2)
    joined = slots.joined(Slots(keys, [k.clone() for k in keys], width=5), room=3)
    k, v = joined.append(0, torch.empty(3, 3, 1, 4, device="meta"), torch.empty(3, 3, 1, 4, device="meta"))
    for tensor in (*slots.keys, *joined.keys, *joined.values, k, v):
        assert tensor.device.type == "meta"
    assert joined.keys[0].shape == (3, 3, 8, 4) and k.shape == (3, 3, 6, 4)
