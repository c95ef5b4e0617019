"""Batched greedy generation with the real tokenizer and a tiny random model."""

from stages.evaluation import generate
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
