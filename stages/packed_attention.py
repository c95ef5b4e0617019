"""Attention for packed blocks: each example attends (causally) to itself, one SDPA call per example.

transformers runs a packed block (position_ids restarting per example, no attention mask) through
SDPA with a block-diagonal mask over the whole block, and on a CPU the masked kernel computes every
score of the 512 x 512 matrix, most of them masked out: measured on 2 cores, 1.6 s of a 9 s SmolLM2
step, for the 2.5 % of the model FLOPs that attention needs. Here each example is its own causal SDPA
call (flash attention's varlen idea, the examples found the same way: a new one wherever a position
does not follow the previous one). Anything else (a padding mask, a KV cache, no position_ids) goes
to transformers' own SDPA path unchanged.

    model.set_attn_implementation(PACKED_SDPA)  # after register_packed_sdpa(); "sdpa" undoes it
"""

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "packed_sdpa"


def example_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row of `position_ids`, the [start, end) of each example: a new one starts wherever a
    position is not the previous one + 1 (transformers' find_packed_sequence_indices rule)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    width = position_ids.shape[1]
    spans = []
    for row in starts:
        bounds = [*row.nonzero().flatten().tolist(), width]
        spans.append(list(zip(bounds[:-1], bounds[1:], strict=True)))
    return spans


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: query [B, heads, T, d], key and value [B, kv heads,
    T, d] -> ([B, T, heads, d], None)."""
    packed = attention_mask is None and position_ids is not None and query.shape[2] == key.shape[2]
    if not packed or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    # Split, not slice: the backward of a split is one concatenation, while each slice's backward
    # fills a zero tensor the size of the whole block and adds its part in (measured on 2 cores: 22
    # examples a block cost 0.33 s of a 6.8 s SmolLM2 step in zero-fills and adds).
    batch, heads, width, head_dim = query.shape
    outputs = []
    for q, k, v, spans in zip(
        query.unbind(0), key.unbind(0), value.unbind(0), example_spans(position_ids), strict=True
    ):
        lengths = [e - s for s, e in spans]
        for q_e, k_e, v_e in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), strict=True):
            out = torch.nn.functional.scaled_dot_product_attention(
                q_e[None], k_e[None], v_e[None], dropout_p=dropout, scale=scaling, is_causal=True,
                enable_gqa=heads != key.shape[1],
            )  # fmt: skip
            outputs.append(out.transpose(1, 2))  # [1, length, heads, d]
    return torch.cat(outputs, dim=1).view(batch, width, heads, head_dim), None


def packed_sdpa_mask(
    *, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> Any:
    """No 4D mask where packed_sdpa_forward needs none (no padding mask, queries = keys, no offset);
    transformers' SDPA mask otherwise (create_causal_mask passes every argument by keyword)."""
    offsets = (kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0))
    if attention_mask is None and q_length == kv_length and offsets == (0, 0):
        return None
    return sdpa_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


def register_packed_sdpa() -> None:
    """Make PACKED_SDPA a name models accept (idempotent)."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def packs_exactly(model: Any) -> bool:
    """Whether PACKED_SDPA gives this model's attention exactly: SDPA-based full causal attention
    (no sliding window, no soft-capping), as Llama's."""
    config = model.config
    return config.model_type == "llama" and config._attn_implementation == "sdpa"


def use_packed_sdpa(model: Any) -> bool:
    """Switch `model` to PACKED_SDPA where it is exact (packs_exactly); whether it did. Before saving,
    `model.set_attn_implementation("sdpa")` gives the saved model transformers' own attention."""
    if not packs_exactly(model):
        return False
    register_packed_sdpa()
    model.set_attn_implementation(PACKED_SDPA)
    return True
