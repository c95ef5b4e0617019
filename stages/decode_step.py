"""One decode step of a Llama model without what the generic forward adds per token.

Measured on this 2-core CPU (SmolLM2-135M, bf16, 16 rows, ~200 cached tokens): a step through
`model(...)` with a `DynamicCache` took 75 ms, of which the weights' matmuls were 34 ms; growing the
cache with `torch.cat` (every layer's keys and values copied for every token) took 10 ms, and the
mask building, keyword plumbing and output objects most of the rest. This step keeps the cache in
buffers with room to grow (`Slots`, written in place) and calls, in the forward's order, the modules
and functions the model's own forward calls: its norms, projections, rotary embedding and
transformers' SDPA attention with the mask transformers builds. The logits are the model's to the bit
(tests/unit/test_generation.py compares them in fp32 and bf16, with and without padding).

Only `LlamaForCausalLM` with SDPA attention takes this path (SmolLM2 and the test model are Llamas);
any other model decodes through its own forward (stages/generation.py).
"""

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaForCausalLM, rotate_half


class Slots:
    """Every layer's keys and values in buffers [rows, kv heads, capacity, head dim] with room to grow:
    columns [0, width) hold the cache, every row left-padded to that width."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], width: int):
        self.keys, self.values, self.width = keys, values, width

    @classmethod
    def from_cache(cls, cache: Any, room: int) -> "Slots":
        """A prefilled `DynamicCache` copied into buffers with `room` free columns."""
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            raise ValueError(f"only a plain growing KV cache can be moved into slots, not {cache.layers[0]}")
        width = cache.layers[0].keys.shape[2]
        return cls([_roomy(layer.keys, width, room) for layer in cache.layers],
                   [_roomy(layer.values, width, room) for layer in cache.layers], width)  # fmt: skip

    def select(self, rows: torch.Tensor, start: int) -> None:
        """Keep `rows` only and drop the first `start` columns (padding in every row kept)."""
        self.keys = [k[rows, :, start:] for k in self.keys]
        self.values = [v[rows, :, start:] for v in self.values]
        self.width -= start

    def joined(self, other: "Slots", room: int) -> "Slots":
        """These rows and `other`'s as one batch, the narrower side left-padded, `room` free columns."""
        width = max(self.width, other.width)

        def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = a.new_zeros((a.shape[0] + b.shape[0], a.shape[1], width + room, a.shape[3]))
            out[: a.shape[0], :, width - self.width : width] = a[:, :, : self.width]
            out[a.shape[0] :, :, width - other.width : width] = b[:, :, : other.width]
            return out

        return Slots([join(a, b) for a, b in zip(self.keys, other.keys, strict=True)],
                     [join(a, b) for a, b in zip(self.values, other.values, strict=True)], width)  # fmt: skip

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new column for `layer` (in place) and return its whole cache, the new column included.
        `advance` moves `width` once every layer has written."""
        if self.width == self.keys[layer].shape[2]:  # full: grow (only if a caller gave too little room)
            self.keys[layer] = _roomy(self.keys[layer], self.width, self.width)
            self.values[layer] = _roomy(self.values[layer], self.width, self.width)
        self.keys[layer][:, :, self.width] = key[:, :, 0]
        self.values[layer][:, :, self.width] = value[:, :, 0]
        return self.keys[layer][:, :, : self.width + 1], self.values[layer][:, :, : self.width + 1]

    def advance(self) -> None:
        self.width += 1


def _roomy(x: torch.Tensor, width: int, room: int) -> torch.Tensor:
    out = x.new_empty((x.shape[0], x.shape[1], width + room, x.shape[3]))
    out[:, :, :width] = x[:, :, :width]
    return out


def takes_fast_step(model: Any) -> bool:
    """A Llama with SDPA attention and no biases: the model this step reproduces exactly."""
    config = model.config
    return (
        type(model) is LlamaForCausalLM
        and config._attn_implementation == "sdpa"
        and not config.attention_bias
        and not config.mlp_bias
    )


class LlamaDecodeStep:
    """Decode steps of one Llama model: per layer one projection for q, k and v and one for gate and up.

    The model's q/k/v weights become views of one [q + k + v, hidden] tensor, and gate/up of one [2 x
    intermediate, hidden] tensor (the same values and no extra memory; the model computes as before):
    one matmul instead of three and of two. Each output element is the same dot product, and on this
    CPU the fused matmuls gave the separate ones' results to the bit (fp32 and bf16); the tests check
    the logits against the model's own forward. Measured here (SmolLM2-135M, bf16, 16 rows, ~200 cached
    tokens, best of 12): 77 ms a step through the model's forward, 61 ms with the in-place cache alone,
    55 ms with the fused projections and one rotary call for q and k together.
    """

    def __init__(self, model: Any):
        if not takes_fast_step(model):
            raise ValueError(
                f"the fused decode step reproduces LlamaForCausalLM with SDPA only, not {type(model).__name__}"
            )
        self.model, config = model, model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.qkv, self.gate_up = [], []
        for layer in model.model.layers[: config.num_hidden_layers]:
            self.qkv.append(_fuse(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj))
            self.gate_up.append(_fuse(layer.mlp.gate_proj, layer.mlp.up_proj))

    @torch.no_grad()
    def __call__(
        self, token: torch.Tensor, position: torch.Tensor, padding: torch.Tensor | None, slots: Slots
    ) -> torch.Tensor:
        """Last-position logits [rows, vocab] for one new token a row, as `model(input_ids=token[:, None],
        attention_mask=..., position_ids=position[:, None], cache=..., logits_to_keep=1).logits[:, -1]`.

        padding: the 2-D attention mask [rows, width + 1] when some row is left-padded, None when none is
        (transformers then passes no mask to SDPA either)."""
        inner, rows, heads, kv = self.model.model, token.shape[0], self.heads, self.kv_heads
        hidden = inner.embed_tokens(token[:, None])
        mask = None if padding is None else padding.bool()[:, None, None, :]
        cos, sin = inner.rotary_emb(hidden, position_ids=position[:, None])
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for index, layer in enumerate(inner.layers[: self.model.config.num_hidden_layers]):
            attn = layer.self_attn
            qkv = F.linear(layer.input_layernorm(hidden), self.qkv[index])
            qkv = qkv.view(rows, 1, heads + 2 * kv, self.head_dim).transpose(1, 2)
            qk = qkv[:, : heads + kv]
            qk = (qk * cos) + (rotate_half(qk) * sin)  # apply_rotary_pos_emb's arithmetic, q and k at once
            keys, values = slots.append(index, qk[:, heads:], qkv[:, heads + kv :])
            out, _ = sdpa_attention_forward(attn, qk[:, :heads], keys, values, mask, dropout=0.0,
                                            scaling=attn.scaling)  # fmt: skip
            hidden = hidden + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
            gate_up = F.linear(layer.post_attention_layernorm(hidden), self.gate_up[index])
            act = layer.mlp.act_fn(gate_up[..., : self.intermediate]) * gate_up[..., self.intermediate :]
            hidden = hidden + layer.mlp.down_proj(act)
        slots.advance()
        return self.model.lm_head(inner.norm(hidden)[:, -1:, :])[:, -1]


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """One weight [sum of outputs, inputs] whose row blocks the linears' weights become views of."""
    fused = torch.cat([linear.weight.detach() for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start : start + rows]
        start += rows
    return fused
