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
    rows = []
    for r, spans in enumerate(example_spans(position_ids)):
        rows.append(
            torch.cat(
                [
                    torch.nn.functional.scaled_dot_product_attention(
                        query[r : r + 1, :, s:e],
                        key[r : r + 1, :, s:e],
                        value[r : r + 1, :, s:e],
                        dropout_p=dropout,
                        scale=scaling,
                        is_causal=True,
                        enable_gqa=query.shape[1] != key.shape[1],
                    )  # fmt: skip
                    for s, e in spans
                ],
                dim=2,
            )
        )
    return torch.cat(rows).transpose(1, 2).contiguous(), None


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
