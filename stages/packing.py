"""Best-fit-decreasing packing of tokenised examples into fixed-length blocks.

Padding-free: each block concatenates whole examples, and `position_ids` restart at 0 for each
example, which is how transformers keeps attention inside each example (with attention_mask=None
and use_cache=False; see the parity test). Examples longer than a block are truncated and counted.
"""

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
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


def pack_bfd(examples: pa.Table, block_size: int) -> tuple[pa.Table, PackStats]:
    """Pack `examples` (columns input_ids, labels) into blocks (input_ids, labels, position_ids).

    Only the choice of block is a Python loop (one integer per example); the token ids move as
    NumPy gathers, so a one-record fix repacks ~4k examples in a few tens of milliseconds.
    """
    ids_col = examples.column("input_ids").combine_chunks()
    labels_col = examples.column("labels").combine_chunks()
    lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = ids_col.offsets.to_numpy()[:-1].astype(np.int64)
    # Token-sized arrays are what this function's memory is made of (~14 M tokens at 100k records):
    # the ids are used as Arrow holds them (no int64 copy), and which examples keep a response
    # token is read off one running count rather than per-token owner/offset arrays (measured by
    # benchmarks/scale.py: the packing step was the peak of the data stages).
    ids = ids_col.values.to_numpy(zero_copy_only=False)
    labels = labels_col.values.to_numpy(zero_copy_only=False)
    used = np.minimum(lengths, block_size)  # longer examples are truncated to one block
    learnable_before = np.concatenate([[0], np.cumsum(labels != IGNORE_INDEX)])
    # An example whose kept part has no response token (the prompt filled the block) is dropped.
    has_labels = learnable_before[starts + used] - learnable_before[starts] > 0
    del learnable_before
    kept = np.flatnonzero(has_labels)

    # Longest first; each goes to the fullest block it still fits in (remaining space kept sorted).
    blocks: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining space, block index), ascending
    for e in kept[np.argsort(-used[kept], kind="stable")].tolist():
        n = int(used[e])
        i = bisect.bisect_left(free, (n, -1))
        if i == len(free):
            blocks.append([e])
            bisect.insort(free, (block_size - n, len(blocks) - 1))
        else:
            space, b = free.pop(i)
            blocks[b].append(e)
            bisect.insort(free, (space - n, b))

    order = np.array([e for block in blocks for e in block], dtype=np.int64)
    n_tokens = used[order]
    first = np.cumsum(n_tokens) - n_tokens  # where each example starts in the packed stream
    position_ids = np.arange(int(n_tokens.sum())) - np.repeat(first, n_tokens)
    gather = np.repeat(starts[order], n_tokens) + position_ids
    block_labels = labels[gather]
    # The first token of an example is never predicted from inside it; masking it keeps the
    # previous example's last logit from being scored on it (the shift crosses the boundary).
    block_labels[first] = IGNORE_INDEX
    block_sizes = np.array([used[b].sum() for b in blocks], dtype=np.int64)
    block_offsets = pa.array(np.concatenate([[0], np.cumsum(block_sizes)]), pa.int32())
    packed = pa.table(
        {
            name: pa.ListArray.from_arrays(block_offsets, pa.array(values))
            for name, values in [
                ("input_ids", ids[gather]),
                ("labels", block_labels),
                ("position_ids", position_ids),
            ]
        }
    )
    stats = PackStats(
        examples=len(kept),
        blocks=len(blocks),
        tokens=len(gather),
        label_tokens=int((block_labels != IGNORE_INDEX).sum()),
        truncated=int((lengths > block_size).sum()),
        dropped_no_labels=len(lengths) - len(kept),
        non_pad_fraction=len(gather) / (len(blocks) * block_size) if blocks else 0.0,
    )
    return packed, stats


def count_blocks_without_labels(path: Path) -> tuple[int, int]:
    """(blocks, blocks whose labels are all IGNORE_INDEX) in a packed Parquet file, read as Arrow."""
    labels = pq.read_table(path, columns=["labels"]).column("labels").combine_chunks()
    learnable = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX)
    with_labels = len(pc.unique(pc.filter(pc.list_parent_indices(labels), learnable)))
    return len(labels), len(labels) - with_labels
