"""Is the reward model better than a coin? The verdict of the `reward_better_than_chance` check.

A reward model no better than chance must not steer training. Of `n` held-out pairs it ranks `k`
right (chosen scored strictly above rejected; a tie counts as wrong). It passes when a coin would
rank at least `k` right with probability at most `significance` (one-sided exact binomial test
against 1/2) and `k / n >= min_accuracy`; see `RewardModelConfig` for why both.
"""

import math
from dataclasses import dataclass

from stages.config import RewardModelConfig


def binomial_p_value(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): how often a coin ranks at least k of n pairs right."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def pairs_needed(significance: float) -> int:
    """The fewest held-out pairs with which any result can pass: all n right has p = 0.5**n."""
    return math.ceil(math.log2(1 / significance))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    correct: int
    pairs: int
    accuracy: float | None
    p_value: float | None
    reason: str  # one line: why it passed or what to do


def judge(correct: int, pairs: int, cfg: RewardModelConfig) -> Verdict:
    """The gate's decision on `correct` of `pairs` held-out pairs ranked right."""
    needed = pairs_needed(cfg.significance)
    if pairs < needed:
        return Verdict(False, correct, pairs, correct / pairs if pairs else None, None,
                       f"only {pairs} held-out pairs: telling the reward model from a coin at significance "
                       f"{cfg.significance} needs at least {needed}; add preference pairs or raise "
                       "preference.reward_model.heldout_fraction")  # fmt: skip
    accuracy, p = correct / pairs, binomial_p_value(correct, pairs)
    if p > cfg.significance:
        reason = (f"{correct}/{pairs} held-out pairs ranked right ({accuracy:.0%}): a coin does as well with "
                  f"p = {p:.3g} > {cfg.significance}; check the pairs' labels or train longer "
                  "(preference.reward_model.max_steps)")  # fmt: skip
    elif accuracy < cfg.min_accuracy:
        reason = (f"{correct}/{pairs} held-out pairs ranked right ({accuracy:.0%}), below "
                  f"preference.reward_model.min_accuracy {cfg.min_accuracy}; train longer or check the pairs")  # fmt: skip
    else:
        return Verdict(True, correct, pairs, accuracy, p,
                       f"{correct}/{pairs} held-out pairs ranked right ({accuracy:.0%}, p = {p:.3g})")  # fmt: skip
    return Verdict(False, correct, pairs, accuracy, p, reason)
