"""Batched greedy generation with the real tokenizer and a tiny random model: token for token what
`model.generate` gives each prompt, whatever rows share its batch and whenever they stop."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config, LlamaConfig

from stages.chat import render_prompts
from stages.evaluation import generate
from stages.generation import KV_CACHE_BYTES, SYNC_EVERY, Decoder, greedy, kv_token_budget
from stages.model_source import _smollm2_tokenizer, tiny_random_model

CONVS = [
    [{"role": "user", "content": "Explain `json.dumps`."}],
    [{"role": "user", "content": "What is a list?"}],
]


def test_greedy_loops_until_the_limit_and_the_repetition_penalty_breaks_the_loop():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    plain = generate(model, tok, CONVS, max_new_tokens=12, batch_size=2)
    assert [o["stopped"] for o in plain] == [False, False]  # a random model never says EOS
    assert [o["text"] for o in plain] == ["", ""]  # greedy repeats one whitespace token to the limit

    penalised = generate(model, tok, CONVS, max_new_tokens=12, batch_size=2, repetition_penalty=1e6)
    for out in penalised:
        ids = tok(out["text"], add_special_tokens=False)["input_ids"]
        assert len(ids) >= 8 and len(set(ids)) >= len(ids) - 1  # no token comes back (one may re-split)


def _alone(model, prompt: list[int], config: GenerationConfig) -> list[int]:  # noqa: ANN001
    """What `model.generate` answers this prompt alone: up to and including EOS."""
    ids = torch.tensor([prompt])
    theirs = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    theirs = theirs[0, len(prompt) :].tolist()
    return theirs[: theirs.index(config.eos_token_id) + 1] if config.eos_token_id in theirs else theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_leave_and_join_the_batch_with_the_tokens_generate_gives(dtype):
    """Rows stop at different steps, the queue refills their slots; every answer equals generate's."""
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).to(dtype).eval()
    long_question = "Why would `itertools.chain` be lazy about its inputs? " * 12  # ~5x the others' tokens
    convs = [*CONVS, [{"role": "user", "content": long_question}], [{"role": "user", "content": "Hi"}],
             [{"role": "user", "content": "What does `os.path.join` return?"}]]  # fmt: skip
    prompts = tok(render_prompts(tok, convs), add_special_tokens=False)["input_ids"]
    assert max(map(len, prompts)) > 3 * min(map(len, prompts))  # very different lengths share a batch
    # The penalty makes every answer's tokens distinct; one of row 0's 5th token becomes "EOS", so row 0
    # stops at its 5th token (between two host reads) while others go on to the limit.
    config = GenerationConfig(do_sample=False, repetition_penalty=1e6, max_new_tokens=14,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    config.eos_token_id = greedy(model, prompts, config)[0][4]

    ours = greedy(model, prompts, config, max_rows=2)  # 5 prompts through 2 slots: 3 join later
    reference = [_alone(model, p, config) for p in prompts]
    assert ours == reference
    lengths = [len(row) for row in ours]
    assert lengths[0] == 5 and 5 % SYNC_EVERY and max(lengths) == 14  # one left early, one never stopped

    # The same batch as generate runs it (left-padded, every row kept to the end): the same tokens.
    batch = tok(render_prompts(tok, convs), padding=True, padding_side="left", add_special_tokens=False,
                return_tensors="pt")  # fmt: skip
    theirs = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1] :].tolist()
    for row, expected in zip(ours, theirs, strict=True):
        assert row == expected[: len(row)] and (len(row) == 14 or row[-1] == config.eos_token_id)


def test_a_token_budget_admits_fewer_rows_and_changes_no_answer():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    prompts = tok(render_prompts(tok, [*CONVS, *CONVS]), add_special_tokens=False)["input_ids"]
    config = GenerationConfig(do_sample=False, repetition_penalty=1.3, max_new_tokens=6,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    wide = greedy(model, prompts, config, max_rows=4)
    # Room for one row at a time: each prompt decodes alone.
    assert greedy(model, prompts, config, max_rows=4, token_budget=max(map(len, prompts)) + 6) == wide
    assert wide == [_alone(model, p, config) for p in prompts]


def _shaped(config) -> torch.nn.Module:  # noqa: ANN001
    """A model of this config's shape without memory for its weights, in bf16."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_the_token_budget_is_a_memory_budget_for_the_kv_cache():
    # SmolLM2-135M: 30 layers x keys and values x 3 KV heads x 64 dims x 2 bytes = 23,040 bytes a token.
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=49152)  # fmt: skip
    assert kv_token_budget(_shaped(smollm2)) == KV_CACHE_BYTES // 23_040 == 46_603
    # An 8B model with grouped KV heads: 128 KB a token, and no fewer than MIN_TOKEN_BUDGET tokens for larger.
    llama8b = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=14336, vocab_size=128256)  # fmt: skip
    assert kv_token_budget(_shaped(llama8b)) == 8192
    # A model with a KV head per query head and no `head_dim` (GPT-2's names): 12 x 2 x 768 x 2 bytes.
    assert kv_token_budget(_shaped(GPT2Config())) == KV_CACHE_BYTES // (12 * 2 * 768 * 2)


def test_long_prompts_decode_together_within_the_kv_budget():
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    config = GenerationConfig(do_sample=False, max_new_tokens=128, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)  # fmt: skip
    prompts = [[7] * 300 for _ in range(32)]  # few-shot sized: 32 x (300 + 128) tokens of cache
    assert len(Decoder(model, config, max_rows=32)._admit(list(range(32)), prompts, None)) == 32
    # A fixed 8,192 tokens admitted 19 of them; the rest waited for rows to finish.
    assert (
        len(Decoder(model, config, max_rows=32, token_budget=8192)._admit(list(range(32)), prompts, None))
        == 19
    )
