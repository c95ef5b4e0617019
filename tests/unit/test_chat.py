"""Chat-template rendering and response-only labels with SmolLM2's real tokenizer."""

import copy

import pyarrow.parquet as pq

from stages.chat import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ensure_chat_template,
    record_key,
    render_prompts,
    tokenize_cached,
    tokenize_records,
    tokenizer_fingerprint,
)
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
    first, fresh = tokenize_cached(tok, records, [record_key(r) for r in records], cache)
    assert fresh == 5 and first.to_pylist() == tokenize_records(tok, records)
    records[2] = _rec("Explain thing 2.", "Thing 2 was fixed.")
    second, fresh = tokenize_cached(tok, records, [record_key(r) for r in records], cache)
    assert fresh == 1 and second.to_pylist() == tokenize_records(tok, records)
    parts = sorted(cache.glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [5, 1]  # the fix added one record, rewrote none
    other = copy.deepcopy(tok)
    other.chat_template = DEFAULT_CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


def test_token_cache_compacts_its_parts(tmp_path, monkeypatch):
    monkeypatch.setattr("stages.chat.COMPACT_AFTER", 2)
    tok = _smollm2_tokenizer()
    records = [_rec(f"Explain thing {i}.", f"Thing {i} does this.") for i in range(3)]
    for fix in range(3):  # three runs, each fixing one record
        records[fix] = _rec(f"Explain thing {fix}.", f"Thing {fix} was fixed.")
        examples, _ = tokenize_cached(tok, records, [record_key(r) for r in records], tmp_path)
    assert examples.to_pylist() == tokenize_records(tok, records)
    parts = list(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_metadata(parts[0]).num_rows == 3 + 2  # every version seen, once


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
