"""`tokenized_dataset`: chat-template rendered, response-only labels, packed train blocks; eval unpacked."""

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from assets.automation import EAGER_BEHIND_GATES
from assets.dataset_card import card_markdown
from assets.engine import data_engine
from assets.metadata import png
from assets.sources import reads_config
from resources.outputs import new_output, recorded
from resources.settings import TunegraphSettings
from stages import plots
from stages.chat import tokenize_cached, tokenizer_fingerprint
from stages.code_version import code_version
from stages.content import content_hash
from stages.packing import PackStats, count_blocks_without_labels, too_many_dropped, write_packed
from stages.tables import arrow_batches, read_json, write_json


@dg.asset(
    group_name="data",
    deps=[reads_config("data.block_size", "data.max_dropped_share")],
    code_version=code_version(
        "stages.chat",
        "stages.packing",
        "stages.plots",
        "stages.content",
        "stages.tables",
        "assets.dataset_card",
        asset_module=__name__,
    ),
    automation_condition=EAGER_BEHIND_GATES,
    kinds={"parquet"},
    description="Examples rendered with the base model's chat template, labels on responses only, BFD-packed.",
    check_specs=[  # in the asset's own step: one step fewer on every rerun
        dg.AssetCheckSpec(
            "blocks_have_labels",
            asset="tokenized_dataset",
            blocking=True,
            description="Every packed block has response tokens to learn, and at most "
            "data.max_dropped_share of the examples were dropped for a prompt that fills the block.",
        )
    ],
)
def tokenized_dataset(
    context: dg.AssetExecutionContext,
    settings: TunegraphSettings,
    augmented_corpus: Path,
    deduplicated_corpus: Path,
    base_model: Path,
) -> dg.MaterializeResult:
    cfg, paths = settings.config(), settings.paths()
    tokenizer = AutoTokenizer.from_pretrained(base_model / "model")
    train_file = augmented_corpus / "train.parquet"
    held_out_file = deduplicated_corpus / "eval" / "held_out.parquet"
    fingerprint = tokenizer_fingerprint(tokenizer)
    # One token cache for both; eval rows are never packed. Read a batch at a time: as Python
    # dicts all at once, the records were most of this step's memory (benchmarks/scale.py).
    tokens, fresh = tokenize_cached(
        tokenizer,
        arrow_batches(train_file, held_out_file, columns=["messages", "record_key"]),
        paths.home / "cache" / f"tokens-{fingerprint}",
        data_engine(context, cfg),
    )
    n_train = pq.read_metadata(train_file).num_rows
    examples, eval_examples = tokens.slice(0, n_train), tokens.slice(n_train).table()
    out = new_output(context, paths)
    stats = write_packed(examples, cfg.data.block_size, out / "train_blocks.parquet")
    dropped_fix = too_many_dropped(stats, cfg.data.block_size, cfg.data.max_dropped_share)
    labels_check = _blocks_have_labels(out / "train_blocks.parquet", stats, dropped_fix)
    pq.write_table(eval_examples, out / "eval.parquet")
    plots.histogram(examples.lengths, cfg.data.block_size, out / "lengths.png", "tokens per training example")
    summary = {
        **stats.__dict__,
        "block_size": cfg.data.block_size,
        "eval_examples": eval_examples.num_rows,
        "tokenizer_fingerprint": fingerprint,
        "tokenized_now": fresh,
    }
    write_json(out / "summary.json", summary)
    hist = png(out / "lengths.png", "example lengths")
    methods = read_json(augmented_corpus / "summary.json")["methods"]
    accounting = read_json(deduplicated_corpus / "summary.json")["accounting"]
    card = card_markdown(accounting, summary, n_train, methods)
    (out / "dataset_card.md").write_text(card)
    version = content_hash(out / "train_blocks.parquet", out / "eval.parquet")
    context.log.info(
        f"{stats.examples} examples -> {stats.blocks} blocks of {cfg.data.block_size}, "
        f"non-pad {stats.non_pad_fraction:.3f}, {stats.truncated} truncated, "
        f"{stats.dropped_no_labels} dropped (prompt fills the block)"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": stats.blocks,
            "engine": cfg.data.engine,
            "examples": stats.examples,
            "tokens": stats.tokens,
            "label_tokens": stats.label_tokens,
            "truncated": stats.truncated,
            "dropped_no_labels": stats.dropped_no_labels,  # prompt fills the block: nothing to learn
            "blocks": stats.blocks,
            "non_pad_fraction": round(stats.non_pad_fraction, 4),
            "eval_examples": eval_examples.num_rows,
            "tokenized_now": fresh,
            "reused_from_cache": len(tokens) - fresh,
            "tokenizer_fingerprint": fingerprint,
            "length_histogram": hist,
            "dataset_card": dg.MetadataValue.md(card),
            **recorded(out),
        },
        check_results=[labels_check],
    )


def _blocks_have_labels(path: Path, stats: PackStats, dropped_fix: str | None) -> dg.AssetCheckResult:
    """Blocks read back from the written file, not from the packer's own counts; drops from the packer."""
    blocks, empty = count_blocks_without_labels(path)
    passed = blocks > 0 and empty == 0 and dropped_fix is None
    return dg.AssetCheckResult(
        check_name="blocks_have_labels",
        passed=passed,
        metadata={
            "blocks": blocks,
            "without_labels": empty,
            "dropped_no_labels": stats.dropped_no_labels,
            "dropped_share": round(stats.dropped_share, 4),
            **(
                {}
                if passed
                else {
                    "fix": dropped_fix
                    or "prompts longer than data.block_size leave no answer tokens to "
                    "learn: raise data.block_size or shorten those prompts"
                }
            ),
        },
    )
