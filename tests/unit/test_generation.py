"""Batched greedy generation with the real tokenizer and a tiny random model."""

from transformers import GenerationConfig

from stages.chat import render_prompts
from stages.evaluation import generate, greedy_until_eos
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


def test_rows_leave_the_batch_at_eos_with_the_tokens_generate_gives():
    """greedy_until_eos drops finished rows and their cache; every row's tokens equal generate's."""
    tok = _smollm2_tokenizer()
    model = tiny_random_model(len(tok)).eval()
    convs = [*CONVS, [{"role": "user", "content": "Why would `itertools.chain` be lazy about its inputs?"}],
             [{"role": "user", "content": "Hi"}]]  # fmt: skip
    batch = tok(render_prompts(tok, convs), padding=True, padding_side="left", add_special_tokens=False,
                return_tensors="pt")  # fmt: skip
    ids, mask, width = batch["input_ids"], batch["attention_mask"], batch["input_ids"].shape[1]
    # The penalty makes every answer's tokens distinct; one of row 0's becomes "EOS", so row 0 stops
    # at its 5th token while other rows go on.
    config = GenerationConfig(do_sample=False, repetition_penalty=1e6, max_new_tokens=12,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    config.eos_token_id = greedy_until_eos(model, ids, mask, config)[0][4]

    ours = greedy_until_eos(model, ids, mask, config)
    reference = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[
        :, width:
    ].tolist()
    stops = [len(row) for row in ours]
    assert stops[0] == 5 and max(stops) == 12  # one row left early, one ran to the limit
    for row, theirs in zip(ours, reference, strict=True):
        end = theirs.index(config.eos_token_id) + 1 if config.eos_token_id in theirs else len(theirs)
        assert row == theirs[:end]
