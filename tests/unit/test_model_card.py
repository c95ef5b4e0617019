"""The model card: Hugging Face format, what it says before and after the evaluation."""

import re

from huggingface_hub import ModelCard

from stages.model_card import base_identity, render, write

FACTS = {
    "model_name": "tunegraph-smollm2-stdlib",
    "version": "3",
    "base_model": "bundled:smollm2-135m-instruct",
    "method": "sft",
    "trained_from": "models:/tunegraph-smollm2-stdlib/2",
    "training": {
        "method": "lora",
        "steps": 40,
        "learning_rate": 0.001,
        "batch_size": 4,
        "block_size": 512,
        "lora": {"r": 16, "alpha": 32},
        "train_loss": 2.4714,
        "eval_loss": 2.4049,
    },  # fmt: skip
    "decoding": {
        "max_new_tokens": 128,
        "repetition_penalty": 1.1,
        "do_sample": False,
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
    },  # fmt: skip
    "data_summary": "## Dataset card\n- documents in: 5123, kept: 3271",
    "lineage": {
        "landing_files": {"stdlib-00.jsonl": {"content_hash": "2539930ae84d0afd", "train_records": 480}},
        "data_versions": {"tokenized_dataset": "221a0898c82d30ab", "base_model": "5ec38ca9245c634e"},
        "config_hash": "749ff81da8cc",
        "dagster_run_id": "c479a8ec-1f8d-4594-8736-51853c0f596a",
        "mlflow_run_id": "9c972db3cc6f4b64a393aa8cde95be17",
    },
}
EVALUATION = {
    "results": {
        "base_zero_shot": {"loss": 3.2215, "perplexity": 25.07, "rouge_l": 0.0843, "exact_match": 0.0, "stop_rate": 0.03},
        "fine_tuned": {"loss": 2.4049, "perplexity": 11.08, "rouge_l": 0.2084, "exact_match": 0.0, "stop_rate": 1.0},
        "champion": None,
    },
    "candidate": "fine_tuned",
    "promoted": True,
    "reason": "perplexity 11.08 beats the baselines (no champion yet) by more than 1.00%",
    "primary_metric": "perplexity",
    "examples": 32,
}  # fmt: skip


def test_the_card_at_registration_states_base_licence_data_decoding_and_lineage(tmp_path):
    card = ModelCard.load(write(render(FACTS), tmp_path))
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.eval_results is None  # nothing measured yet
    text = card.text
    assert text.startswith("\n# tunegraph-smollm2-stdlib v3\n")
    assert "A supervised fine-tune (SFT) of `bundled:smollm2-135m-instruct` (starting from " in text
    assert "### Dataset card\n- documents in: 5123, kept: 3271" in text  # its heading under the card's own
    assert "| repetition_penalty | 1.1 " in text and "| max_new_tokens     | 128 " in text
    assert "| held-out loss (last eval) | 2.4049 " in text
    assert "Not evaluated yet" in text
    assert "| stdlib-00.jsonl | `2539930ae84d0afd` |" in text
    assert "- `tokenized_dataset`: `221a0898c82d30ab`" in text and "config hash: `749ff81da8cc`" in text
    assert "Dagster run: `c479a8ec-1f8d-4594-8736-51853c0f596a`" in text


def test_the_evaluated_card_compares_with_the_baselines_and_indexes_its_results(tmp_path):
    card = ModelCard.load(write(render(FACTS, EVALUATION), tmp_path))
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("perplexity", 11.08), ("rouge_l", 0.2084)
    }  # fmt: skip
    text = card.text
    assert "Not evaluated yet" not in text
    assert "| base_zero_shot | 3.2215 | 25.0700 | 0.0843 | 0.0000 | 0.0300 |" in re.sub(" +", " ", text)
    assert "| champion" not in text  # not evaluated (no champion yet): no row
    assert "Promotion (perplexity): promoted to `champion`, perplexity 11.08 beats" in text


def test_licence_and_hub_id_of_each_kind_of_base():
    assert base_identity("bundled:tiny-random") == (None, "apache-2.0")
    assert base_identity("HuggingFaceTB/SmolLM2-360M-Instruct") == (
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        "other",
    )
    assert base_identity("/models/my-llama") == (None, "other")
    facts = {**FACTS, "base_model": "/models/my-llama", "trained_from": "/models/my-llama"}
    text = render(facts)
    assert "check its own card before sharing" in text and "(starting from" not in text
