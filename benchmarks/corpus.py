"""The benchmarks' shared inputs: the example corpus as cleaned canonical records, and its tokenizer."""

from typing import Any

from stages.cleaning import Rules, clean_records
from stages.config import PipelineConfig
from stages.example_corpus import stdlib_records
from stages.readers import to_record


def example_records() -> list[dict[str, Any]]:
    """The stdlib-docs corpus as the pipeline sees it after reading and cleaning (default config)."""
    cleaning = PipelineConfig().data.cleaning
    raw, _ = stdlib_records()
    records = [to_record(r, "stdlib.jsonl", i, {}) for i, r in enumerate(raw, start=1)]
    return clean_records(records, Rules(**cleaning.model_dump())).kept


def smollm2_tokenizer() -> Any:
    from stages.chat import ensure_chat_template
    from stages.model_source import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer()
    ensure_chat_template(tokenizer)
    return tokenizer
