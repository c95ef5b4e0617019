"""The reward model's gate: better than a coin by a one-sided binomial test, and a floor on accuracy."""

from stages.config import RewardModelConfig
from stages.reward_gate import binomial_p_value, judge, pairs_needed


def test_the_binomial_tail_is_exact():
    assert binomial_p_value(5, 5) == 1 / 32
    assert binomial_p_value(9, 10) == 11 / 1024  # C(10,9) + C(10,10) of 2**10
    assert binomial_p_value(0, 7) == 1.0


def test_the_gate_passes_what_a_coin_rarely_does_and_says_what_to_do_otherwise():
    cfg = RewardModelConfig()  # significance 0.05, min_accuracy 0.6
    assert pairs_needed(0.05) == 5 and pairs_needed(0.01) == 7
    assert judge(9, 10, cfg).passed  # p = 0.011
    failed = judge(8, 10, cfg)  # p = 0.055: a coin does that one time in 18
    assert not failed.passed and failed.reason.startswith(
        "8/10 held-out pairs ranked right (80%): a coin does"
    )
    # Significant, but too weak to steer anything: the accuracy floor.
    weak = judge(560, 1000, cfg)
    assert weak.p_value < 0.001 and not weak.passed and "min_accuracy 0.6" in weak.reason


def test_too_few_held_out_pairs_fail_with_how_many_are_needed():
    verdict = judge(4, 4, RewardModelConfig())
    assert not verdict.passed and verdict.p_value is None
    assert verdict.reason == (
        "only 4 held-out pairs: telling the reward model from a coin at significance 0.05 needs at least 5; "
        "add preference pairs or raise preference.reward_model.heldout_fraction"
    )
