"""Rule rewards for online RL, declared under `preference.rl.rewards` beside the reward model's score.

Each is a callable in TRL's reward-function form (`prompts`, `completions`, `completion_ids` and the
dataset's other columns as keyword arguments; one float per completion, None where it does not
apply), named for the metric TRL logs (`rewards/<name>/mean`). Completions are chat messages
(`[{"role": "assistant", "content": ...}]`) for chat prompts, strings otherwise.
"""

from collections.abc import Sequence
from typing import Any

from stages import metrics
from stages.config import RLRewards


class StopsAtEos:
    """1.0 when the completion ended itself with an end-of-sequence token, 0.0 when it ran out of tokens.

    TRL cuts each completion's ids after its first EOS, so a completion that stopped ends with one."""

    __name__ = "stops_at_eos"

    def __init__(self, eos_token_ids: Sequence[int]):
        self.eos_token_ids = set(eos_token_ids)

    def __call__(self, completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [1.0 if ids and ids[-1] in self.eos_token_ids else 0.0 for ids in completion_ids]


class LengthWithin:
    """1.0 for a completion of min_tokens..max_tokens tokens; shorter n / min_tokens, longer max_tokens / n:
    a slope rather than a cliff, so a group of completions all too long still ranks the shorter higher."""

    __name__ = "length"

    def __init__(self, min_tokens: int, max_tokens: int):
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def __call__(self, completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [self.score(len(ids)) for ids in completion_ids]

    def score(self, n: int) -> float:
        if n < self.min_tokens:
            return n / self.min_tokens
        if n > self.max_tokens:
            return self.max_tokens / n
        return 1.0


class RougeLToReference:
    """ROUGE-L F1 of the completion against the prompt's reference answer; None (not scored, and left
    out of the group's baseline by TRL) where the prompt has no reference."""

    __name__ = "rouge_l"

    def __call__(self, completions: list[Any], reference: list[str | None], **_: Any) -> list[float | None]:
        return [
            metrics.rouge_l(completion_text(c), ref) if ref else None
            for c, ref in zip(completions, reference, strict=True)
        ]


def completion_text(completion: Any) -> str:
    """The text of a completion: the assistant message's content for chat, the string itself otherwise."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def rule_rewards(rewards: RLRewards, eos_token_ids: Sequence[int]) -> list[tuple[Any, float]]:
    """The rule rewards with a weight above 0, as (reward function, weight)."""
    length = rewards.length
    candidates = [
        (StopsAtEos(eos_token_ids), rewards.stops_at_eos.weight),
        (LengthWithin(length.min_tokens, length.max_tokens), length.weight),
        (RougeLToReference(), rewards.rouge_l.weight),
    ]
    return [(func, weight) for func, weight in candidates if weight > 0]
