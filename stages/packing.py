"""Best-fit-decreasing packing of tokenised examples into fixed-length blocks.

Padding-free: each block concatenates whole examples, and `position_ids` restart at 0 for each
example, which is how transformers keeps attention inside each example (with attention_mask=None
and use_cache=False; see the parity test). Examples longer than a block are truncated and counted.
"""

import bisect
import heapq
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.chat import IGNORE_INDEX, Tokens

BLOCKS_PER_GROUP = 4096  # blocks built and written at a time (a Parquet row group each)
# int32: token ids, labels (-100) and positions all fit, and the file (~150M tokens at 1M records)
# is half the int64 size to write and read back; the collator makes int64 tensors either way.
_LIST = pa.list_(pa.int32())
BLOCK_SCHEMA = pa.schema([("input_ids", _LIST), ("labels", _LIST), ("position_ids", _LIST)])


@dataclass
class PackStats:
    examples: int
    blocks: int
    tokens: int
    label_tokens: int
    truncated: int
    dropped_no_labels: int  # examples left out: the prompt fills the block, no answer token is kept
    non_pad_fraction: float

    @property
    def dropped_share(self) -> float:
        """The share of the examples given to the packer that were left out for having no label."""
        given = self.examples + self.dropped_no_labels
        return self.dropped_no_labels / given if given else 0.0


def too_many_dropped(stats: PackStats, block_size: int, max_share: float) -> str | None:
    """What to do when more than `max_share` of the examples were dropped for a prompt that fills
    the block; None when within. A few long prompts are expected; many mean the block is too small."""
    if stats.dropped_share <= max_share:
        return None
    given = stats.examples + stats.dropped_no_labels
    return (
        f"prompts longer than data.block_size ({block_size}) left no answer tokens in "
        f"{stats.dropped_no_labels} of {given} examples ({stats.dropped_share:.1%}, more than "
        f"data.max_dropped_share {max_share:.1%}), so they were dropped: raise data.block_size, "
        "shorten those prompts, or raise data.max_dropped_share"
    )


def pack_bfd(examples: pa.Table, block_size: int) -> tuple[pa.Table, PackStats]:
    """Pack `examples` (columns input_ids, labels) into blocks (input_ids, labels, position_ids)."""
    tokens = Tokens.from_table(examples)
    blocks, stats = plan(tokens, block_size)
    batches = list(_blocks(tokens, blocks, block_size, stats))
    return pa.Table.from_batches(batches, BLOCK_SCHEMA).combine_chunks(), stats


def write_packed(tokens: Tokens, block_size: int, path: Path) -> PackStats:
    """`pack_bfd` of `tokens` straight into a Parquet file, BLOCKS_PER_GROUP blocks at a time.

    Built whole, the blocks' three columns took 24 bytes a token as int64 (~3.6 GB at 1M records,
    benchmarks/scale.py); written a row group at a time they take a row group's worth.
    """
    blocks, stats = plan(tokens, block_size)
    # Each row group is encoded (Arrow, without the GIL) on a thread while the next is built: at 1M
    # records the encoding (~4.5 s) and the building (~2.5 s) ran one after the other on 2 cores.
    with pq.ParquetWriter(path, BLOCK_SCHEMA) as writer, ThreadPoolExecutor(1) as encoder:
        written: Future | None = None
        for batch in _blocks(tokens, blocks, block_size, stats):
            if written is not None:
                written.result()
            written = encoder.submit(writer.write_batch, batch)
        if written is not None:
            written.result()
    return stats


def plan(tokens: Tokens, block_size: int) -> tuple[list[list[int]], PackStats]:
    """Which examples go in which block, longest first, each in the fullest block it still fits.

    Blocks are kept in buckets by their free space (at most block_size + 1 of them), so a choice
    costs a bisect over the distinct free sizes; one sorted list of every block, as before, made
    each insert move the whole list (quadratic: minutes at 1M records).
    """
    used = np.minimum(tokens.lengths, block_size)  # longer examples are truncated to one block
    # An example whose kept part has no response token (the prompt filled the block) is dropped.
    kept = np.flatnonzero(_has_labels(tokens, used))
    blocks: list[list[int]] = []
    by_space: list[list[int]] = [[] for _ in range(block_size + 1)]  # free space -> heap of block indices
    spaces: list[int] = []  # free sizes that have blocks, ascending
    for e in kept[np.argsort(-used[kept], kind="stable")].tolist():
        n = int(used[e])
        i = bisect.bisect_left(spaces, n)
        if i == len(spaces):
            b, space = len(blocks), block_size - n
            blocks.append([e])
        else:
            # The smallest space that fits; among blocks with it, the one opened first.
            fits = spaces[i]
            b, space = heapq.heappop(by_space[fits]), fits - n
            if not by_space[fits]:
                spaces.pop(i)
            blocks[b].append(e)
        if not by_space[space]:
            bisect.insort(spaces, space)
        heapq.heappush(by_space[space], b)
    n_tokens = int(used[kept].sum())
    stats = PackStats(
        examples=len(kept),
        blocks=len(blocks),
        tokens=n_tokens,
        label_tokens=0,  # counted as the blocks are built
        truncated=int((tokens.lengths > block_size).sum()),
        dropped_no_labels=len(tokens) - len(kept),
        non_pad_fraction=n_tokens / (len(blocks) * block_size) if blocks else 0.0,
    )
    return blocks, stats


def _has_labels(tokens: Tokens, used: np.ndarray) -> np.ndarray:
    """Whether each example's first `used` tokens include a learnt one.

    One `np.logical_or.reduceat` over the learnt flags, at each example's (start, start + used) in
    the order of the starts, so the spans between examples are read once (any of them is ignored;
    an overlap reads one flag). Gathering every used token's index instead took 2.8 s at 1M records.
    """
    order = np.argsort(tokens.starts, kind="stable")
    bounds = np.empty(2 * len(order), dtype=np.int64)
    bounds[0::2] = tokens.starts[order]
    bounds[1::2] = tokens.starts[order] + used[order]
    out = np.zeros(len(used), dtype=bool)
    if len(order):  # an end may be the last token's end: one False after it keeps it in range
        spans = np.logical_or.reduceat(np.append(tokens.learnt, False), bounds)[0::2]
        out[order] = spans & (used[order] > 0)  # an empty span reads the flag at its start
    return out


def _blocks(
    tokens: Tokens, blocks: list[list[int]], block_size: int, stats: PackStats
) -> Iterator[pa.RecordBatch]:
    """The blocks as record batches, token ids moved by NumPy gathers; adds label_tokens to stats."""
    used = np.minimum(tokens.lengths, block_size)
    for g in range(0, max(len(blocks), 1), BLOCKS_PER_GROUP):
        group = blocks[g : g + BLOCKS_PER_GROUP]
        order = np.array([e for block in group for e in block], dtype=np.int64)
        n_tokens = used[order]
        first = np.cumsum(n_tokens) - n_tokens  # where each example starts in the group's stream
        position_ids = np.arange(int(n_tokens.sum()), dtype=np.int64) - np.repeat(first, n_tokens)
        gather = np.repeat(tokens.starts[order], n_tokens) + position_ids
        position_ids = position_ids.astype(np.int32)
        ids = tokens.ids[gather]
        labels = np.where(tokens.learnt[gather], ids, np.int32(IGNORE_INDEX))
        # The first token of an example is never predicted from inside it; masking it keeps the
        # previous example's last logit from being scored on it (the shift crosses the boundary).
        labels[first] = IGNORE_INDEX
        stats.label_tokens += int((labels != IGNORE_INDEX).sum())
        # Where each block ends in the group's stream: its examples' tokens summed, by one cumsum
        # (a NumPy sum per block was ~0.8 s at 1M records).
        examples_per_block = np.array([len(block) for block in group], dtype=np.int64)
        ends = (first + n_tokens)[np.cumsum(examples_per_block) - 1]
        offsets = pa.array(np.concatenate([[0], ends]), pa.int32())
        yield pa.record_batch(
            [pa.ListArray.from_arrays(offsets, pa.array(values)) for values in (ids, labels, position_ids)],
            schema=BLOCK_SCHEMA,
        )


def count_blocks_without_labels(path: Path) -> tuple[int, int]:
    """(blocks, blocks whose labels are all IGNORE_INDEX) in a packed Parquet file, a row group at a time.

    Counted with NumPy over the flat labels (a block has labels when its count of learnt tokens is
    non-zero): Arrow's unique-of-parent-indices took 3.8 s of a 100k-record fix's 30 s.
    """
    blocks = empty = 0
    file = pq.ParquetFile(path)
    for group in range(file.num_row_groups):
        labels = file.read_row_group(group, columns=["labels"]).column(0).combine_chunks()
        learnt = pc.list_flatten(labels).to_numpy() != IGNORE_INDEX
        offsets = labels.offsets.to_numpy()
        offsets = offsets - offsets[0]  # list_flatten starts at the first block's first label
        lengths = np.diff(offsets)
        # reduceat sums each block's span; an empty block would get its neighbour's value instead,
        # so it counts by its length (the appended False keeps an index at the end in range).
        has = np.add.reduceat(np.append(learnt, False), offsets[:-1]) if len(labels) else np.zeros(0, bool)
        blocks += len(labels)
        empty += int(np.count_nonzero(~has.astype(bool) | (lengths == 0)))
    return blocks, empty
