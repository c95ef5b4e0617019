"""The rule rewards of online RL (stages/rule_rewards.py) score hand-made completions exactly."""

import math

import pytest

from stages.config import RLConfig, RLRewards
from stages.rl import generation_rows, sample_steps
from stages.rule_rewards import LengthWithin, RougeLToReference, StopsAtEos, rule_rewards

EOS = 2


def test_stops_at_eos_scores_one_only_when_the_completion_ends_with_an_eos_token():
    reward = StopsAtEos([EOS, 7])
    # TRL cuts the ids after the first EOS: a stopped completion ends with one; a cut-off one does not.
    ids = [[10, 11, EOS], [10, 11, 12], [7], [], [EOS, 10]]
    assert reward(completion_ids=ids, completions=["x"] * 5) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_length_is_one_inside_the_bounds_and_slopes_down_outside():
    reward = LengthWithin(min_tokens=4, max_tokens=8)
    ids = [[1] * n for n in (0, 2, 4, 6, 8, 16)]
    assert reward(completion_ids=ids) == [0.0, 0.5, 1.0, 1.0, 1.0, 0.5]


def test_rouge_l_against_the_reference_and_none_without_one():
    reward = RougeLToReference()
    completions = [
        [{"role": "assistant", "content": "the cat sat on the mat"}],  # identical
        [{"role": "assistant", "content": "the cat lay on a mat"}],  # LCS "the cat on mat": 4 of 6 each way
        [{"role": "assistant", "content": "nothing in common"}],
        [{"role": "assistant", "content": "no reference to compare"}],
    ]
    reference = ["the cat sat on the mat"] * 3 + [""]
    scores = reward(completions=completions, reference=reference)
    assert scores[:3] == [1.0, pytest.approx(4 / 6), 0.0] and scores[3] is None
    assert reward(completions=["the cat sat"], reference=["the cat sat"]) == [1.0]  # plain-text prompts


def test_only_weighted_rules_are_used_and_config_refuses_contradictions():
    rewards = RLRewards(stops_at_eos={"weight": 0.0}, rouge_l={"weight": 2.0})
    used = [(f.__name__, w) for f, w in rule_rewards(rewards, [EOS])]
    assert used == [("length", 0.25), ("rouge_l", 2.0)]
    with pytest.raises(ValueError, match="every reward weight is 0"):
        RLRewards(**{k: {"weight": 0.0} for k in ("reward_model", "stops_at_eos", "length", "rouge_l")})
    with pytest.raises(ValueError, match="min_tokens 10 > max_tokens 5"):
        RLRewards(length={"min_tokens": 10, "max_tokens": 5})
    with pytest.raises(ValueError, match="no completion could reach it"):
        RLConfig(max_completion_tokens=4, rewards={"length": {"min_tokens": 8}})


def test_generation_rows_carry_each_reward_and_their_weighted_sum():
    logs = {
        "prompt": [[{"role": "user", "content": "Why?"}]] * 2,
        "completion": [
            [{"role": "assistant", "content": "Because."}],
            [{"role": "assistant", "content": "No."}],
        ],
        "rewards": {"reward_model": [0.5, -1.0], "rouge_l": [1.0, math.nan]},
    }
    rows = generation_rows(3, logs, {"reward_model": 1.0, "rouge_l": 0.5})
    assert [(r["step"], r["prompt"], r["completion"], r["reward"]) for r in rows] == [
        (3, "Why?", "Because.", 1.0),
        (3, "Why?", "No.", -1.0),  # a reward that did not apply (NaN) adds nothing, as in the trainer
    ]


def test_sample_steps_keep_the_first_and_last_and_spread_the_rest():
    assert sample_steps([1, 1, 2, 3, 4, 5, 6, 7, 8, 9], 3) == [1, 5, 9]
    assert sample_steps([2, 4], 3) == [2, 4]
    assert sample_steps([1, 2, 3], 1) == [3]
