"""Prompt variants: refused in one line when unusable, rendered as written, searched on dev data only."""

import pytest
import yaml

from resources.settings import REPO_ROOT
from stages.config import ConfigError, load_config
from stages.evaluation import eval_items, score
from stages.leaderboard import best_prompts, rows
from stages.model_source import _smollm2_tokenizer, tiny_random_model
from stages.prompt_config import PromptSearchConfig, PromptVariant
from stages.prompt_search import dev_split, search
from stages.prompts import conversations, question, registry_template

TINY = REPO_ROOT / "configs" / "tiny.yaml"


def record(i: int, name: str, answer: str) -> dict:
    return {"id": f"r{i}", "record_key": f"k{i}", "schema": "instruction", "augmentation": "none",
            "messages": [{"role": "user", "content": f"What does {name} do?"},
                         {"role": "assistant", "content": answer}]}  # fmt: skip


TRAIN = [record(i, n, a) for i, (n, a) in enumerate([
    ("json.dumps", "Serialize obj to a JSON formatted str."), ("json.loads", "Deserialize s to a Python object."),
    ("os.path.join", "Join one or more path components."), ("os.path.split", "Split a pathname into head and tail."),
    ("heapq.heappush", "Push item onto heap."), ("heapq.heappop", "Pop the smallest item off the heap."),
    ("bisect.bisect", "Return the index where to insert item x."), ("glob.glob", "Return a list of paths matching a pattern."),
])]  # fmt: skip


@pytest.mark.parametrize(
    ("template", "says"),
    [
        (
            "Q: {question}",
            "prompts.1.template: Value error, unknown placeholder(s) {question}; use {instruction}, {context}",
        ),
        (
            "Q: {instruction",
            "prompts.1.template: Value error, not a template (expected '}' before end of string)",
        ),
        ("Answer well.", "prompts.1.template: Value error, the template must contain {instruction}"),
        (
            "{context} {instruction}",
            "prompts.1: Value error, broken: the template uses {context} but context is not set",
        ),
    ],
)
def test_a_bad_template_is_refused_in_one_line_at_config_load(tmp_path, template, says):
    raw = yaml.safe_load(TINY.read_text())
    raw["prompts"] = [raw["prompts"][0], {"name": "broken", "template": template}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value).splitlines()) == 1 and str(err.value).startswith(f"{path}: {says}")


def test_a_variant_renders_its_system_template_and_the_most_similar_training_record_as_context():
    variant = PromptVariant(name="ctx", system="Be exact.", template="Docs:\n{context}\n\nQ: {instruction}",
                            context={"k": 1, "max_chars": 50})  # fmt: skip
    held_out = record(99, "json.dump", "Serialize obj as a JSON stream to fp.")
    [asked] = conversations(variant, [held_out], TRAIN, seed=0)
    assert asked == [
        {"role": "system", "content": "Be exact."},
        # The closest training question by TF-IDF (json.dumps), its answer cut to max_chars.
        {
            "role": "user",
            "content": "Docs:\nWhat does json.dumps do?\nSerialize obj to a JSON formatted str.\n\nQ: What does json.dump do?",
        },
    ]
    similar = PromptVariant(name="sim", examples={"k": 1, "select": "similar"})
    [shots] = conversations(
        similar, [record(98, "heapq.heapify", "Transform list into a heap.")], TRAIN, seed=0
    )
    assert question({"messages": shots[:1]}) in (
        "What does heapq.heappush do?",
        "What does heapq.heappop do?",
    )
    # The registry keeps the same prompt with MLflow's {{placeholders}}.
    assert registry_template(variant)[1]["content"] == "Docs:\n{{context}}\n\nQ: {{instruction}}"


def test_prompt_search_never_scores_or_retrieves_a_held_out_record():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    held_out = record(50, "json.dump", "Serialize obj as a JSON stream to fp.")
    # Planted among the dev candidates where the dev split would pick it if it did not know it is held out.
    leaked = {**held_out, "id": next(f"p{i}" for i in range(1000)
                                     if f"p{i}" in {r["id"] for r in dev_split([*TRAIN, {**held_out, "id": f"p{i}"}], set(), 3, 0)[0]})}  # fmt: skip
    dev, pool = dev_split([*TRAIN, leaked], {held_out["record_key"]}, 3, seed=0)
    assert leaked not in dev and leaked not in pool and len(dev) == 3
    seen: list[str] = []

    def on_dev(variant: PromptVariant) -> dict:
        asked = conversations(variant, dev, pool, seed=0)
        seen.extend(m["content"] for conv in asked for m in conv)
        scores, _ = score(model, tok, eval_items(asked, dev, tok, 4), 4, 4, 1.0, "dev")
        return scores

    space = PromptSearchConfig(
        dev_examples=3, budget=3, systems=["", "Be brief."], examples_k=[0, 1], context_k=[0, 1]
    )
    found = search(space, on_dev)
    assert len(found.tried) == 3 and found.winner.name == "searched"
    assert seen and not any("json.dump do" in text or "JSON stream" in text for text in seen)


def test_the_leaderboard_ranks_prompts_and_models_on_one_metric_and_names_the_best_prompt_per_model():
    scored = {"base_zero_shot": {"model_kind": "base", "variant": "zero_shot"},
              "base_retrieved_context": {"model_kind": "base", "variant": "retrieved_context"},
              "fine_tuned": {"model_kind": "fine_tuned", "variant": "zero_shot"}}  # fmt: skip
    held_out = {"base_zero_shot": {"rouge_l": 0.10, "prompt_tokens": 30.0},
                "base_retrieved_context": {"rouge_l": 0.20, "prompt_tokens": 250.0},
                "fine_tuned": {"rouge_l": 0.30, "prompt_tokens": 30.0}, "champion": None}  # fmt: skip
    board = rows(scored, held_out, "rouge_l", {"fine_tuned": 3.0})
    assert [(r["rank"], r["row"], r["kind"]) for r in board] == [
        (1, "fine_tuned", "model"), (2, "base_retrieved_context", "prompt"), (3, "base_zero_shot", "prompt")]  # fmt: skip
    assert board[0]["train_minutes"] == 3.0 and board[1]["train_minutes"] == 0.0
    assert best_prompts(board, "rouge_l") == {"fine_tuned": "fine_tuned", "base": "base_retrieved_context"}
