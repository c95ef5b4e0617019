"""Best-fit-decreasing packing of tokenised examples into fixed-length blocks.

Padding-free: each block concatenates whole examples, and `position_ids` restart at 0 for each
example, which is how transformers keeps attention inside each example (with attention_mask=None
and use_cache=False; see the parity test). Examples longer than a block are truncated and counted.
"""

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.chat import IGNORE_INDEX


@dataclass
class PackStats:
    examples: int
    blocks: int
    tokens: int
    label_tokens: int
    truncated: int
    dropped_no_labels: int
    non_pad_fraction: float


def pack_bfd(examples: list[dict[str, list[int]]], block_size: int) -> tuple[list[dict[str, Any]], PackStats]:
    items, truncated, dropped = [], 0, 0
    for ex in examples:
        ids, labels = ex["input_ids"], ex["labels"]
        if len(ids) > block_size:
            ids, labels, truncated = ids[:block_size], labels[:block_size], truncated + 1
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1  # the prompt alone filled the block: nothing to learn from
            continue
        items.append((ids, labels))
    # Longest first; each goes to the fullest block it still fits in (remaining space kept sorted).
    items.sort(key=lambda it: len(it[0]), reverse=True)
    blocks: list[list[tuple[list[int], list[int]]]] = []
    free: list[tuple[int, int]] = []  # (remaining space, block index), ascending
    for ids, labels in items:
        i = bisect.bisect_left(free, (len(ids), -1))
        if i == len(free):
            blocks.append([(ids, labels)])
            bisect.insort(free, (block_size - len(ids), len(blocks) - 1))
        else:
            space, b = free.pop(i)
            blocks[b].append((ids, labels))
            bisect.insort(free, (space - len(ids), b))
    packed = [_concat(block) for block in blocks]
    tokens = sum(len(b["input_ids"]) for b in packed)
    stats = PackStats(
        examples=len(items),
        blocks=len(packed),
        tokens=tokens,
        label_tokens=sum(sum(1 for x in b["labels"] if x != IGNORE_INDEX) for b in packed),
        truncated=truncated,
        dropped_no_labels=dropped,
        non_pad_fraction=tokens / (len(packed) * block_size) if packed else 0.0,
    )
    return packed, stats


def _concat(block: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for ids, lab in block:
        input_ids += ids
        # The first token of an example is never predicted from inside it; masking it keeps the
        # previous example's last logit from being scored on it (the shift crosses the boundary).
        labels += [IGNORE_INDEX, *lab[1:]]
        position_ids += list(range(len(ids)))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def count_blocks_without_labels(path: Path) -> tuple[int, int]:
    """(blocks, blocks whose labels are all IGNORE_INDEX) in a packed Parquet file, read as Arrow."""
    labels = pq.read_table(path, columns=["labels"]).column("labels").combine_chunks()
    learnable = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX)
    with_labels = len(pc.unique(pc.filter(pc.list_parent_indices(labels), learnable)))
    return len(labels), len(labels) - with_labels
