"""GGUF export of the real base model, SmolLM2-135M-Instruct (about 1 minute on 2 cores).

The tolerances in stages/gguf_export.py were set from what this test prints (`-s`): the largest
logit difference over every position of held-out stdlib examples, as a share of the largest logit.
"""

import pytest
from transformers import AutoTokenizer

from stages.example_corpus import stdlib_records
from stages.gguf_export import TOLERANCE, check_texts, compare_logits, write_gguf
from stages.model_source import save_base_model


@pytest.mark.slow
def test_smollm2_round_trips_through_gguf_within_the_stated_tolerance(tmp_path):
    model_dir = tmp_path / "model"
    save_base_model("bundled:smollm2-135m-instruct", model_dir)
    records, _ = stdlib_records(["json", "heapq", "textwrap", "fractions"])
    rows = [{"schema": "instruction", "messages": [{"role": "user", "content": r["instruction"]},
                                                  {"role": "assistant", "content": r["output"]}]}
            for r in records if r["output"].strip()][:8]  # fmt: skip
    texts = check_texts(AutoTokenizer.from_pretrained(model_dir), rows)
    for kind in TOLERANCE:
        path = write_gguf(model_dir, tmp_path / f"smollm2-{kind}.gguf", kind, "SmolLM2-135M-Instruct")
        comparison = compare_logits(model_dir, path, kind, texts)
        print(comparison.as_dict())
        assert comparison.tokenizer_matches and comparison.positions > 500
        assert comparison.relative_diff <= TOLERANCE[kind] and comparison.top1_agreement >= 0.95
