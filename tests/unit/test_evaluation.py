"""What each schema is scored on: answers for prompts, perplexity and continuation for documents."""

import math

from stages.chat import tokenize_records
from stages.evaluation import _batches, continuation, eval_items, score, text_nll
from stages.model_source import _smollm2_tokenizer, tiny_random_model
from stages.prompt_config import DEFAULT_PROMPTS, ExamplesSpec, PromptVariant
from stages.prompts import applies, conversations, example_pool, random_examples

DOC = ("The pathlib module represents filesystem paths as objects rather than strings, so a path can be "
       "joined with the slash operator and asked for its parent or suffix.")  # fmt: skip
TEXT = {"id": "t", "schema": "text", "messages": [{"role": "assistant", "content": DOC}]}
QA = {"id": "q", "schema": "instruction", "messages": [
    {"role": "user", "content": "What does len() return?"}, {"role": "assistant", "content": "A count."}]}  # fmt: skip


def test_a_document_is_continued_from_its_first_half_and_scored_on_every_token():
    tok = _smollm2_tokenizer()
    prefix, reference = continuation(tok, DOC, max_new_tokens=8)
    assert DOC.startswith(prefix) and len(prefix.split()) == len(DOC.split()) // 2
    assert len(tok(reference, add_special_tokens=False)["input_ids"]) <= 8
    assert DOC[len(prefix) :].strip().startswith(reference)
    few_shot = PromptVariant(name="few_shot", examples=ExamplesSpec(k=1))
    asked = conversations(few_shot, [TEXT, QA], [{**QA, "augmentation": "none"}], seed=0)
    [doc, answer] = eval_items(asked, [TEXT, QA], tok, max_new_tokens=8)
    assert (doc.kind, doc.nll_prompt, doc.nll_target, doc.gen_prompt) == ("continuation", "", DOC, prefix)
    # The answer's prompt is the chat template's, with the few-shot demonstration before the question.
    assert (
        answer.kind == "answer"
        and answer.reference == "A count."
        and answer.shown == "What does len() return?"
    )
    assert answer.gen_prompt.count("What does len() return?") == 2 and answer.gen_prompt.endswith(
        "assistant\n"
    )


def test_perplexity_of_a_document_is_the_training_loss_of_its_tokens():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    nll, tokens = text_nll(model, tok, [""], [DOC])
    # As trained: every token of the document and EOS is learnt (the first has no context to predict it).
    [example] = tokenize_records(tok, [TEXT])
    assert tokens == len(example["input_ids"]) - 1
    assert math.isfinite(nll) and nll > 0


def test_metrics_that_do_not_apply_to_documents_are_none():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    zero_shot = DEFAULT_PROMPTS[0]
    docs_only = eval_items(conversations(zero_shot, [TEXT, TEXT], [], 0), [TEXT, TEXT], tok, max_new_tokens=4)
    scores, texts = score(
        model, tok, docs_only, batch_size=2, max_new_tokens=4, repetition_penalty=1.0, desc="t"
    )
    assert scores["exact_match"] is None and scores["stop_rate"] is None
    assert scores["continuations"] == 2 and scores["perplexity"] > 1 and 0 <= scores["rouge_l"] <= 1
    mixed = eval_items(conversations(zero_shot, [TEXT, QA], [], 0), [TEXT, QA], tok, max_new_tokens=4)
    scores, texts = score(model, tok, mixed, batch_size=2, max_new_tokens=4, repetition_penalty=1.0, desc="t")
    assert scores["stop_rate"] == 0.0 and scores["exact_match"] == 0.0  # over the one answer only
    assert scores["examples"] == 2 and scores["continuations"] == 1 and len(texts) == 2


def test_prompt_variants_need_a_prompt_and_shots_are_never_documents():
    zero_shot, system_prompt, few_shot = DEFAULT_PROMPTS
    assert not applies(system_prompt, [TEXT]) and not applies(few_shot, [TEXT])
    assert applies(zero_shot, [TEXT]) and applies(few_shot, [TEXT, QA])
    train = [{**TEXT, "augmentation": "none"}, {**QA, "augmentation": "none"}]
    assert [r["id"] for r in random_examples(example_pool(train), k=2, seed=0)] == ["q"]


# The demo's 32 held-out zero-shot rows (prompt + answer tokens, 2026-12-08): one long docstring among short ones.
HELD_OUT_LENGTHS = [497, 110, 95, 94, 88, 86, 85, 82, 68, 67, 67, 66, 62, 58, 57, 57, 56, 55, 55, 54, 54, 54,
                    52, 52, 51, 51, 51, 51, 49, 47, 47, 46]  # fmt: skip


def test_perplexity_batches_keep_a_long_row_from_padding_short_ones():
    lengths = HELD_OUT_LENGTHS[::-1]  # any order in, sorted inside
    batches = list(_batches(lengths, max_batch=32, token_budget=8192))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [lengths.index(497)]  # alone: 16 rows padded to its width were 7,952 slots
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert slots <= 1.35 * sum(lengths) and len(batches) <= 3
    # The limits hold: rows per batch, and rows x width within the token budget (a lone row may exceed it).
    for b in _batches([300] * 10 + [9000], max_batch=4, token_budget=1000):
        assert len(b) <= 4 and (len(b) == 1 or len(b) * 300 <= 1000)


def test_perplexity_does_not_depend_on_how_rows_are_batched():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    prompts, answers = ["What does len() return?", "Explain zip."], ["A count.", DOC]
    together = text_nll(model, tok, prompts, answers, batch_size=8)
    alone = [text_nll(model, tok, [p], [a], batch_size=1) for p, a in zip(prompts, answers, strict=True)]
    assert together[1] == sum(t for _, t in alone)
    assert math.isclose(together[0], sum(n for n, _ in alone), rel_tol=1e-5)
