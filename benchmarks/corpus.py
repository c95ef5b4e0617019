"""The benchmarks' shared inputs: the example corpus as cleaned canonical records, and its tokenizer."""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from stages.cleaning import Rules, clean_records  # noqa: E402
from stages.config import PipelineConfig  # noqa: E402
from stages.example_corpus import stdlib_records  # noqa: E402
from stages.readers import to_record  # noqa: E402


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
