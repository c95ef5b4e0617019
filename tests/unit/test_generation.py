"""Batched greedy generation with the real tokenizer and a tiny random model: token for token what
`model.generate` gives each prompt, whatever rows share its batch and whenever they stop."""

import pytest
import torch
from transformers import GenerationConfig

from stages.chat import render_prompts
from stages.evaluation import generate
from stages.generation import SYNC_EVERY, greedy
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
