"""The reward model's judgement of every leaderboard row, and a policy's own pair accuracy by log-probs."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages.model_source import save_base_model
from stages.reward_judge import answer_logprobs, judge, pair_accuracy


def by_length(questions: list, answers: list[str]) -> list[float]:
    """A stand-in reward model with a known preference: longer answers score higher."""
    assert len(questions) == len(answers)
    return [float(len(a)) for a in answers]


def test_rewards_and_win_rates_against_the_base_models_plain_answers_ties_half():
    questions = [[{"role": "user", "content": "q1"}], None, [{"role": "user", "content": "q3"}]]
    answers = {
        "base_zero_shot": ["abc", "a document", "abcd"],
        "fine_tuned": ["abcdef", "ignored", "abcd"],  # longer once, a tie once
        "base_few_shot": ["a", "x", "a"],
    }
    judged = judge(questions, answers, by_length)
    assert judged["fine_tuned"] == {"reward": 5.0, "win_rate": 0.75}
    assert judged["base_zero_shot"] == {"reward": 3.5, "win_rate": 0.5}
    assert judged["base_few_shot"] == {"reward": 1.0, "win_rate": 0.0}
    assert judge([None, None], answers, by_length) == {}  # documents only: nothing to judge


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = tmp_path_factory.mktemp("tiny") / "base"
    save_base_model("bundled:tiny-random", folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_answer_logprobs_in_padded_batches_equal_one_at_a_time(tiny):
    model, tokenizer = tiny
    convs = [([{"role": "user", "content": "What is " + "very " * i + "long?"}],
              [{"role": "assistant", "content": "It is" + " long" * (3 - i) + "."}]) for i in range(4)]  # fmt: skip
    batched = answer_logprobs(model, tokenizer, convs, batch_size=4)
    single = [answer_logprobs(model, tokenizer, [c], batch_size=1)[0] for c in convs]
    assert batched == pytest.approx(single, abs=1e-3)
    assert all(v < 0 for v in batched)


def test_pair_accuracy_is_what_the_log_probabilities_rank_and_swapping_the_labels_mirrors_it(tiny):
    model, tokenizer = tiny
    pairs = [{"prompt": [{"role": "user", "content": f"Name {i}?"}],
              "chosen": [{"role": "assistant", "content": f"Name {i} is fine."}],
              "rejected": [{"role": "assistant", "content": "banana " * (i + 1)}]} for i in range(6)]  # fmt: skip
    accuracy = pair_accuracy(model, tokenizer, pairs)
    chosen = answer_logprobs(model, tokenizer, [(p["prompt"], p["chosen"]) for p in pairs], 8)
    rejected = answer_logprobs(model, tokenizer, [(p["prompt"], p["rejected"]) for p in pairs], 8)
    assert accuracy == sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 6
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    assert pair_accuracy(model, tokenizer, swapped) == pytest.approx(1 - accuracy)
    with pytest.raises(ValueError, match="at least one pair"):
        pair_accuracy(model, tokenizer, [])


def test_only_the_answers_tokens_are_scored(tiny):
    """The log-probability of the answer's tokens given the prompt, computed here token by token."""
    model, tokenizer = tiny
    prompt, answer = (
        [{"role": "user", "content": "Ok? " * 10}],
        [{"role": "assistant", "content": "Yes, ok."}],
    )
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([*prompt, *answer], tokenize=False)
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(whole[len(head) :], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + a_ids])).logits[0].float()
    expected = sum(torch.log_softmax(logits[len(p_ids) + k - 1], -1)[t].item() for k, t in enumerate(a_ids))
    assert answer_logprobs(model, tokenizer, [(prompt, answer)], 1)[0] == pytest.approx(expected, abs=1e-3)
