"""The chunked LM-head loss: the same loss and gradients as the full-logits one, a chunk at a time."""

import pyarrow as pa
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.chat import IGNORE_INDEX
from stages.chunked_loss import chunked_cross_entropy, plain_head, scored_loss
from stages.packing import pack_bfd
from stages.train import PackedCollator


def test_chunked_cross_entropy_equals_the_full_one_in_float64():
    """Exact arithmetic but for summation order: 1e-12 in float64, over chunks of 7 rows (the last ragged)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (30,), generator=g)

    full = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum") / 30
    full_grads = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, targets, chunk_rows=7) / 30
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))

    assert abs(chunked.item() - full.item()) < 1e-12
    for a, b in zip(chunked_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_no_gradient_work_under_no_grad():
    hidden, weight = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 3, 8]))
    assert not loss.requires_grad


def test_a_second_backward_is_refused_not_scaled_twice():
    """Backward scales the gradients computed in forward in place, so they serve one backward pass."""
    hidden, weight = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    loss = chunked_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 3, 8])) / 5
    loss.backward(retain_graph=True)
    first = weight.grad.clone()
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()
    assert torch.equal(weight.grad, first)


def test_a_target_per_row_is_required():
    with pytest.raises(ValueError, match="one target per row"):
        chunked_cross_entropy(torch.randn(3, 4), torch.randn(9, 4), torch.tensor([1, 2]))


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_cache=False,
        tie_word_embeddings=True,  # as SmolLM2: the head's gradient reaches the embeddings through both paths
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_scored_loss_gives_the_model_loss_and_gradients_of_every_parameter():
    """The trainer's path (hidden states out of the model, the tied head applied in chunks of 7 rows, the
    last one ragged) against the model's own full-logits loss on the same packed batch: loss within
    1e-6, every parameter's gradient within 1e-6 (fp32; the two paths sum in different orders)."""
    model = _tiny_llama().train()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n_prompt, n_resp in [(5, 9), (3, 4), (8, 11), (2, 6), (6, 3), (4, 12)]:
        ids = torch.randint(0, 128, (n_prompt + n_resp,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    blocks = pack_bfd(pa.Table.from_pylist(examples), 24)[0].to_pylist()
    batch = PackedCollator(pad_token_id=0)(blocks)
    n_scored = len(batch["shift_labels"])
    assert n_scored % 7 and n_scored > 3 * 7

    model.zero_grad()
    full = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}).loss
    full.backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    head = plain_head(model)
    assert head is model.lm_head
    chunked, _ = scored_loss(model, batch, head, num_items=torch.tensor(n_scored), chunk_rows=7)
    chunked.backward()

    assert abs(chunked.item() - full.item()) < 1e-6
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, full_grads[name], atol=1e-6), name


def test_heads_the_chunked_loss_cannot_reproduce_keep_the_model_loss():
    model = _tiny_llama()
    model.config.model_type = "gemma2"  # soft-capped logits: not a plain head
    assert plain_head(model) is None
