"""Packing: best-fit-decreasing fill, position ids, and loss parity with unpacked examples."""

import bisect
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.chat import IGNORE_INDEX, Tokens
from stages.packing import (
    PackStats,
    count_blocks_without_labels,
    pack_bfd,
    plan,
    too_many_dropped,
    write_packed,
)
from stages.train import PackedCollator


def _example(n_prompt: int, n_response: int, offset: int = 10) -> dict:
    ids = list(range(offset, offset + n_prompt + n_response))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


def _pack(examples: list[dict], block_size: int) -> tuple[list[dict], PackStats]:
    packed, stats = pack_bfd(pa.Table.from_pylist(examples), block_size)
    return packed.to_pylist(), stats


def test_bfd_fills_blocks_and_restarts_positions():
    examples = [_example(3, 5), _example(2, 2), _example(10, 6), _example(1, 3), _example(4, 12)]
    blocks, stats = _pack(examples, block_size=16)
    assert sorted(len(b["input_ids"]) for b in blocks) == [16, 16, 16]  # 8+4+16+4+16 = 48 tokens, no padding
    assert stats.non_pad_fraction == 1.0 and stats.blocks == 3
    for block in blocks:
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0]
        assert starts[0] == 0
        for s in starts:
            assert block["labels"][s] == IGNORE_INDEX  # never scored across an example boundary


def test_blocks_without_labels_are_counted_from_the_written_file(tmp_path: Path):
    blocks, _ = _pack([_example(3, 5), _example(2, 2), _example(10, 6)], block_size=16)
    blocks.append({**blocks[0], "labels": [IGNORE_INDEX] * 16})  # a block with nothing to learn
    pq.write_table(pa.Table.from_pylist(blocks), tmp_path / "blocks.parquet")
    assert count_blocks_without_labels(tmp_path / "blocks.parquet") == (len(blocks), 1)


def test_too_long_examples_are_truncated_and_counted():
    blocks, stats = _pack([_example(2, 30), _example(20, 2)], block_size=16)
    assert stats.truncated == 2
    assert stats.dropped_no_labels == 1  # its prompt alone fills the block
    assert len(blocks) == 1 and len(blocks[0]["input_ids"]) == 16


def test_the_share_dropped_for_a_prompt_that_fills_the_block_is_judged_against_the_limit():
    # 100 examples, 2 of them with a 20-token prompt in a 16-token block: 2 % dropped.
    examples = [_example(3, 5, offset=i) for i in range(98)] + [_example(20, 2), _example(18, 4)]
    _, stats = _pack(examples, block_size=16)
    assert (stats.examples, stats.dropped_no_labels, stats.dropped_share) == (98, 2, 0.02)
    assert too_many_dropped(stats, 16, max_share=0.02) is None  # at the limit: passes
    assert too_many_dropped(stats, 16, max_share=0.01) == (
        "prompts longer than data.block_size (16) left no answer tokens in 2 of 100 examples (2.0%, more "
        "than data.max_dropped_share 1.0%), so they were dropped: raise data.block_size, shorten those "
        "prompts, or raise data.max_dropped_share"
    )
    # Nothing to pack is not a dropped share (blocks_have_labels fails on the zero blocks instead).
    empty = PackStats(examples=0, blocks=0, tokens=0, label_tokens=0, truncated=0, dropped_no_labels=0,
                      non_pad_fraction=0.0)  # fmt: skip
    assert empty.dropped_share == 0.0 and too_many_dropped(empty, 16, max_share=0.0) is None


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=False,
        tie_word_embeddings=True,  # as SmolLM2: the LM head's gradient reaches the embeddings
    )
    return LlamaForCausalLM(config)


def _random_examples(shapes: list[tuple[int, int]]) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    examples = []
    for n_prompt, n_resp in shapes:
        ids = torch.randint(0, 128, (n_prompt + n_resp,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    return examples


def test_label_only_logits_give_the_full_logits_loss_and_gradients():
    """The collator's logits_to_keep + shift_labels: the same loss and gradients, fewer logits."""
    model = _tiny_llama().train()
    examples = _random_examples([(5, 9), (3, 4), (8, 11), (2, 6), (6, 3), (4, 12)])
    blocks, _ = _pack(examples, block_size=24)
    assert len(blocks) >= 2
    batch = PackedCollator(pad_token_id=0)(blocks)
    n_scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert batch["logits_to_keep"].sum() == len(batch["shift_labels"]) == n_scored

    def loss_and_grads(inputs: dict) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        out = model(**inputs, num_items_in_batch=torch.tensor(n_scored))
        out.loss.backward()
        return out, [p.grad.clone() for p in model.parameters()]

    full, full_grads = loss_and_grads({k: batch[k] for k in ("input_ids", "position_ids", "labels")})
    kept, kept_grads = loss_and_grads(batch)
    assert kept.logits.shape == (n_scored, 128)  # only the scored positions were projected
    assert full.logits.shape[:2] == batch["input_ids"].shape
    assert abs(kept.loss.item() - full.loss.item()) < 1e-6
    for a, b in zip(kept_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_packed_loss_equals_token_weighted_loss_of_examples():
    model = _tiny_llama().eval()
    examples = _random_examples([(5, 9), (3, 4), (8, 11), (2, 6)])
    blocks, _ = _pack(examples, block_size=64)
    assert len(blocks) == 1
    block = blocks[0]
    with torch.no_grad():
        packed = model(
            input_ids=torch.tensor([block["input_ids"]]),
            position_ids=torch.tensor([block["position_ids"]]),
            labels=torch.tensor([block["labels"]]),
        ).loss.item()
        total, count = 0.0, 0
        for ex in examples:
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            n = sum(1 for x in ex["labels"][1:] if x != IGNORE_INDEX)
            total += out.loss.item() * n
            count += n
    assert abs(packed - total / count) < 1e-5


def test_a_sliced_table_packs_like_its_rows():
    # The asset packs a slice of the token table (train rows first, eval after); Arrow slices
    # keep offsets into the parent's values, which the gathers must respect.
    rows = [_example(1 + i % 3, 2 + i % 5, offset=i) for i in range(40)]
    table = pa.concat_tables([pa.Table.from_pylist(rows[:25]), pa.Table.from_pylist(rows[25:])])
    sliced, stats = pack_bfd(table.slice(12, 20), block_size=16)
    assert sliced.to_pylist() == _pack(rows[12:32], block_size=16)[0]
    assert stats.examples == 20


def _reference_bfd(lengths: list[int], block_size: int) -> list[list[int]]:
    """Best fit decreasing as first written: one sorted list of (free space, block) for every block."""
    blocks: list[list[int]] = []
    free: list[tuple[int, int]] = []
    for e in sorted(range(len(lengths)), key=lambda e: -min(lengths[e], block_size)):
        n = min(lengths[e], block_size)
        i = bisect.bisect_left(free, (n, -1))
        if i == len(free):
            blocks.append([e])
            bisect.insort(free, (block_size - n, len(blocks) - 1))
        else:
            space, b = free.pop(i)
            blocks[b].append(e)
            bisect.insort(free, (space - n, b))
    return blocks


def test_bucketed_plan_chooses_the_blocks_of_a_sorted_list_bfd():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(2, 40), rng.randint(40, 70)]) for _ in range(3000)]
    examples = [_example(1, n - 1) for n in lengths]  # every example has labels
    blocks, stats = plan(Tokens.from_examples(examples), block_size=64)
    assert blocks == _reference_bfd(lengths, 64)
    assert stats.truncated == sum(n > 64 for n in lengths) and stats.examples == 3000


def test_written_blocks_equal_pack_bfd_in_several_row_groups(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("stages.packing.BLOCKS_PER_GROUP", 3)
    rng = random.Random(1)
    examples = [_example(rng.randint(1, 9), rng.randint(1, 12), offset=i) for i in range(60)]
    expected, expected_stats = pack_bfd(pa.Table.from_pylist(examples), block_size=24)
    stats = write_packed(Tokens.from_examples(examples), 24, tmp_path / "blocks.parquet")
    written = pq.read_table(tmp_path / "blocks.parquet")
    assert pq.ParquetFile(tmp_path / "blocks.parquet").metadata.num_row_groups == -(-stats.blocks // 3) > 1
    assert written.to_pylist() == expected.to_pylist() and written.schema == expected.schema
    assert stats == expected_stats and stats.label_tokens > 0
    assert count_blocks_without_labels(tmp_path / "blocks.parquet") == (stats.blocks, 0)


def test_blocks_without_labels_are_counted_in_every_row_group_and_edge(tmp_path: Path):
    """The NumPy count agrees with a per-block count: first and last blocks, empty blocks, row groups."""
    rng = np.random.default_rng(0)
    labels = []
    for i in range(50):
        n = 0 if i % 17 == 3 else int(rng.integers(1, 9))
        learnt = rng.random(n) < (0.0 if i % 5 == 0 else 0.3)
        labels.append([7 if x else IGNORE_INDEX for x in learnt])
    labels[0], labels[-1] = [IGNORE_INDEX] * 4, [IGNORE_INDEX, 5]
    pq.write_table(pa.table({"labels": labels}), tmp_path / "blocks.parquet", row_group_size=8)
    expected = sum(1 for block in labels if all(t == IGNORE_INDEX for t in block))
    assert count_blocks_without_labels(tmp_path / "blocks.parquet") == (50, expected)


def test_examples_without_a_learnt_token_in_their_kept_part_are_dropped_in_any_order():
    """Rows taken out of store order and repeated, as the token cache hands them: each example is
    judged on its own first block_size tokens (a long prompt can push its answer past the block)."""
    rng = np.random.default_rng(2)
    examples = [_example(int(rng.integers(1, 30)), int(rng.integers(0, 6)), offset=i) for i in range(400)]
    rows = rng.integers(0, 400, 600)
    block_size = 20
    expected = [
        k
        for k, r in enumerate(rows.tolist())
        if any(label != IGNORE_INDEX for label in examples[r]["labels"][:block_size])
    ]
    blocks, stats = plan(Tokens.from_examples(examples).take(rows), block_size)
    assert sorted(e for block in blocks for e in block) == expected
    assert stats.dropped_no_labels == 600 - len(expected) > 100
