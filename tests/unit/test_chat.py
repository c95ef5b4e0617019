"""Chat-template rendering and response-only labels with SmolLM2's real tokenizer."""

import copy

import numpy as np
import pyarrow as pa
import pytest

from stages.chat import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ensure_chat_template,
    render_prompts,
    tokenize_cached,
    tokenize_records,
    tokenizer_fingerprint,
)
from stages.content import key_bytes, record_key
from stages.model_source import _smollm2_tokenizer


def _rec(prompt: str, response: str) -> dict:
    return {"id": prompt, "schema": "instruction",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}  # fmt: skip


def test_labels_cover_exactly_the_response_and_eos():
    tok = _smollm2_tokenizer()
    [ex] = tokenize_records(tok, [_rec("Explain `json.dumps`.", "Serialize obj to a JSON formatted str.")])
    labelled = [t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE_INDEX]
    assert tok.decode(labelled) == "Serialize obj to a JSON formatted str.<|im_end|>"
    assert labelled[-1] == tok.eos_token_id
    prompt = render_prompts(tok, [[{"role": "user", "content": "Explain `json.dumps`."}]])[0]
    assert prompt.endswith("<|im_start|>assistant\n")
    n_prompt = ex["labels"].index(next(x for x in ex["labels"] if x != IGNORE_INDEX))
    assert ex["input_ids"][:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_a_tokenizer_without_template_gets_the_documented_default():
    tok = copy.deepcopy(_smollm2_tokenizer())
    tok.chat_template = None
    assert ensure_chat_template(tok) is True and tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert ensure_chat_template(tok) is False


def test_token_cache_reuses_unchanged_records_and_follows_the_tokenizer(tmp_path):
    tok = _smollm2_tokenizer()
    records = [_rec(f"Explain thing {i}.", f"Thing {i} does this.") for i in range(5)]
    cache = tmp_path / f"tokens-{tokenizer_fingerprint(tok)}"
    first, fresh = tokenize_cached(
        tok, [_table(records[:2]), _table(records[2:])], cache
    )  # batches, in order
    assert fresh == 5 and first.table().to_pylist() == tokenize_records(tok, records)
    records[2] = _rec("Explain thing 2.", "Thing 2 was fixed.")
    second, fresh = tokenize_cached(
        tok, [_table(records + records[:1])], cache
    )  # a repeated record: tokenised once
    assert fresh == 1 and second.table().to_pylist() == tokenize_records(tok, records + records[:1])
    parts = sorted(cache.glob("part-*"))
    assert [len(np.load(p / "keys.npy")) for p in parts] == [5, 1]  # the fix added one record, rewrote none
    other = copy.deepcopy(tok)
    other.chat_template = DEFAULT_CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


def test_token_cache_looks_records_up_by_their_record_key_column(tmp_path):
    """The key column decides what is reused: rows are read only where the cache lacks their key."""
    tok = _smollm2_tokenizer()
    records = [{**r, "record_key": record_key(r)} for r in (_rec(f"Q {i}?", f"A {i}.") for i in range(4))]
    tokenize_cached(tok, [_table(records)], tmp_path)
    fixed = {**records[1], "messages": _rec("Q 1?", "A 1, fixed.")["messages"]}
    fixed["record_key"] = record_key(fixed)
    tokens, fresh = tokenize_cached(tok, [_table([records[0], fixed, *records[2:]])], tmp_path)
    assert fresh == 1 and tokens.table().to_pylist() == tokenize_records(
        tok, [records[0], fixed, *records[2:]]
    )
    # A key that does not change with its messages is trusted: that is why only the stages that make
    # a record's messages set it (clean_corpus, with_new_records), and test_pipeline checks them all.
    stale = {**fixed, "messages": _rec("Q 1?", "A 1, fixed again.")["messages"]}
    _, fresh = tokenize_cached(tok, [_table([stale])], tmp_path)
    assert fresh == 0


def _table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records)


def test_token_cache_compacts_its_parts(tmp_path, monkeypatch):
    monkeypatch.setattr("stages.chat.COMPACT_AFTER", 2)
    tok = _smollm2_tokenizer()
    records = [_rec(f"Explain thing {i}.", f"Thing {i} does this.") for i in range(3)]
    for fix in range(3):  # three runs, each fixing one record
        records[fix] = _rec(f"Explain thing {fix}.", f"Thing {fix} was fixed.")
        examples, _ = tokenize_cached(tok, [_table(records)], tmp_path)
    assert examples.table().to_pylist() == tokenize_records(tok, records)
    parts = list(tmp_path.glob("part-*"))
    assert len(parts) == 1 and len(np.load(parts[0] / "keys.npy")) == 3 + 2  # every version seen, once


def test_spliced_tokenisation_equals_rendering_each_prompt():
    from stages.chat import _tokenize_rendered

    tok = _smollm2_tokenizer()
    records = [_rec(f"Explain `mod.f{i}`.", f"Return {i} things.\n\nSecond paragraph.") for i in range(40)]
    records += [
        {"id": "sys", "schema": "instruction", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]},
        {"id": "chat", "schema": "chat", "messages": [
            {"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"},
            {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"}]},
        {"id": "text", "schema": "text", "messages": [{"role": "assistant", "content": "Raw text document."}]},
        _rec("  leading spaces", "\n starts with a newline"),
    ]  # fmt: skip
    assert tokenize_records(tok, records) == _tokenize_rendered(tok, records)


def _learnt(tok, example: dict) -> list[str]:
    """The decoded runs of labelled tokens, in order."""
    runs, run = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs, run = [*runs, tok.decode(run)], []
    return [*runs, tok.decode(run)] if run else runs


def test_every_assistant_turn_of_a_dialogue_is_learnt_with_its_eos():
    tok = _smollm2_tokenizer()
    dialogue = {"id": "d", "schema": "chat", "messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "Spain?"}, {"role": "assistant", "content": "Madrid."}]}  # fmt: skip
    [spliced] = tokenize_records(tok, [dialogue])
    assert _learnt(tok, spliced) == ["Paris.<|im_end|>", "Rome.<|im_end|>", "Madrid.<|im_end|>"]
    # The ids are those of the whole conversation as the template renders it (one newline after
    # each turn's EOS, the generation prompt of each answer).
    rendered = tok.apply_chat_template(dialogue["messages"], tokenize=False)
    assert tok.decode(spliced["input_ids"]) == rendered.removesuffix("\n")


def test_a_text_record_is_learnt_on_every_token():
    tok = _smollm2_tokenizer()
    text = {"id": "t", "schema": "text", "messages": [{"role": "assistant", "content": "A whole document."}]}
    [example] = tokenize_records(tok, [text])
    assert example["labels"] == example["input_ids"]
    assert tok.decode(example["input_ids"]) == "A whole document.<|im_end|>"


def test_a_template_that_rewrites_earlier_turns_is_a_clear_error():
    tok = copy.deepcopy(_smollm2_tokenizer())
    # Like reasoning models' templates: earlier answers lose their <think> part in the history.
    tok.chat_template = DEFAULT_CHAT_TEMPLATE.replace(
        "message['content']", "message['content'].split('</think>')[-1]"
    )
    dialogue = {"id": "d", "schema": "chat", "messages": [
        {"role": "user", "content": "One?"}, {"role": "assistant", "content": "<think>hm</think>1"},
        {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"}]}  # fmt: skip
    with pytest.raises(ValueError, match="record d: the chat template renders earlier assistant turns"):
        tokenize_records(tok, [dialogue])


def test_token_cache_with_a_record_in_two_parts_answers_and_compacts_it_once(tmp_path, monkeypatch):
    """Two runs that tokenised the same records at once each wrote a part: both are read, one answers."""
    tok = _smollm2_tokenizer()
    records = [_rec(f"Explain thing {i}.", f"Thing {i} does this.") for i in range(3)]
    tokenize_cached(tok, [_table(records)], tmp_path / "a")
    tokenize_cached(tok, [_table(records[1:])], tmp_path / "b")
    for part in (tmp_path / "b").glob("part-*"):
        part.rename(tmp_path / "a" / f"{part.name}-b")
    tokens, fresh = tokenize_cached(tok, [_table(records[::-1])], tmp_path / "a")
    assert fresh == 0 and tokens.table().to_pylist() == tokenize_records(tok, records[::-1])
    monkeypatch.setattr("stages.chat.COMPACT_AFTER", 2)
    records.append(_rec("Explain thing 3.", "Thing 3 is new."))
    tokens, fresh = tokenize_cached(tok, [_table(records)], tmp_path / "a")
    assert fresh == 1 and tokens.table().to_pylist() == tokenize_records(tok, records)
    parts = list((tmp_path / "a").glob("part-*"))
    assert len(parts) == 1 and sorted(np.load(parts[0] / "keys.npy").tolist()) == sorted(
        key_bytes([record_key(r) for r in records]).tolist()
    )
