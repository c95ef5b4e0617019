"""What the evaluation did before, kept as the benchmarks' named baselines.

`fixed_batches`: stages/evaluation.py's batching until 2026-12-08, length-sorted rows filled greedily up to
`max_batch` rows and `token_budget` padded tokens. benchmarks/generation.py and benchmarks/evaluation.py
run `model.generate` (and the full-logits perplexity) on these batches, as the evaluation did then.
"""

from collections.abc import Iterator


def fixed_batches(lengths: list[int], max_batch: int, token_budget: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= max_batch or lengths[batch[0]] * (len(batch) + 1) > token_budget):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
