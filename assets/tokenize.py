"""`tokenized_dataset`: chat-template rendered, response-only labels, packed train blocks; eval unpacked."""

import dagster as dg
from transformers import AutoTokenizer

from assets.augment import augmented_corpus
from assets.dedup import deduplicated_corpus
from assets.metadata import folder_version, png
from assets.model import base_model
from resources.settings import TunegraphSettings
from stages import plots
from stages.chat import IGNORE_INDEX, tokenize_records
from stages.packing import pack_bfd
from stages.tables import read_rows, write_json, write_rows


@dg.asset(
    group_name="data",
    deps=[augmented_corpus, deduplicated_corpus, base_model],
    code_version="tokenize-1",
    kinds={"parquet"},
    description="Examples rendered with the base model's chat template, labels on responses only, BFD-packed.",
)
def tokenized_dataset(context: dg.AssetExecutionContext, settings: TunegraphSettings) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    tokenizer = AutoTokenizer.from_pretrained(paths.latest("base_model") / "model")
    train = read_rows(paths.latest("augmented_corpus") / "train.parquet")
    held_out = read_rows(paths.latest("deduplicated_corpus") / "eval" / "held_out.parquet")
    examples = tokenize_records(tokenizer, train)
    blocks, stats = pack_bfd(examples, cfg.data.block_size)
    eval_examples = tokenize_records(tokenizer, held_out)
    lengths = [len(e["input_ids"]) for e in examples]
    with paths.publish("tokenized_dataset") as out:
        write_rows(out / "train_blocks.parquet", blocks)
        write_rows(out / "eval.parquet", eval_examples)
        plots.histogram(lengths, cfg.data.block_size, out / "lengths.png", "tokens per training example")
        summary = {**stats.__dict__, "block_size": cfg.data.block_size, "eval_examples": len(eval_examples)}
        write_json(out / "summary.json", summary)
        hist = png(out / "lengths.png", "example lengths")
    context.log.info(
        f"{stats.examples} examples -> {stats.blocks} blocks of {cfg.data.block_size}, "
        f"non-pad {stats.non_pad_fraction:.3f}, {stats.truncated} truncated"
    )
    return dg.MaterializeResult(
        data_version=folder_version(out),
        metadata={
            "examples": stats.examples,
            "tokens": stats.tokens,
            "label_tokens": stats.label_tokens,
            "truncated": stats.truncated,
            "blocks": stats.blocks,
            "non_pad_fraction": round(stats.non_pad_fraction, 4),
            "eval_examples": len(eval_examples),
            "length_histogram": hist,
        },
    )


@dg.asset_check(
    asset=tokenized_dataset, blocking=True, description="Every packed block has response tokens to learn."
)
def blocks_have_labels(settings: TunegraphSettings) -> dg.AssetCheckResult:
    blocks = read_rows(settings.paths().latest("tokenized_dataset") / "train_blocks.parquet")
    empty = sum(1 for b in blocks if all(x == IGNORE_INDEX for x in b["labels"]))
    return dg.AssetCheckResult(
        passed=bool(blocks) and empty == 0, metadata={"blocks": len(blocks), "without_labels": empty}
    )
