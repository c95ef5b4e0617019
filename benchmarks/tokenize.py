"""Tokenisation stage throughput against the limit and against the per-example loop a new user writes.

    python benchmarks/tokenize.py [--json] [--repeat N]

In one run over the same examples (the stdlib-docs corpus after cleaning, SmolLM2's tokenizer):
  stage    tunegraph's tokenized_dataset work: render the chat template, tokenise prompts and
           responses in batches, build response-only labels, pack best-fit-decreasing
  batched  one bare batched `tokenizer(texts)` over the already-rendered texts: the limit
  loop     `datasets.map` per example: render the template, tokenise the whole text, tokenise
           the prompt again to find where the response starts
Throughput is example tokens per second (best of --repeat runs). `ids_identical` says whether the
stage's token ids and labels equal the loop's, example by example.
"""

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0] and this file would shadow the standard library's
# `tokenize` module: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import pyarrow as pa  # noqa: E402
from datasets import Dataset  # noqa: E402

from benchmarks.corpus import example_records, smollm2_tokenizer  # noqa: E402
from stages.chat import IGNORE_INDEX, prompt_messages, render_prompts, response_text, tokenize_records  # noqa: E402
from stages.packing import pack_bfd  # noqa: E402


def best_of(repeat: int, fn):  # noqa: ANN001, ANN201
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=512)
    args = parser.parse_args()

    tokenizer = smollm2_tokenizer()
    records = example_records()
    eos = tokenizer.eos_token

    def stage() -> list[dict]:
        examples = tokenize_records(tokenizer, records)
        pack_bfd(pa.Table.from_pylist(examples), args.block_size)
        return examples

    stage_s, examples = best_of(args.repeat, stage)
    tokens = sum(len(e["input_ids"]) for e in examples)

    rendered = [
        p + response_text(r) + eos
        for p, r in zip(
            render_prompts(tokenizer, [prompt_messages(r) for r in records]), records, strict=True
        )
    ]
    batched_s, _ = best_of(args.repeat, lambda: tokenizer(rendered, add_special_tokens=False))

    def per_example(row: dict) -> dict:
        prompt = tokenizer.apply_chat_template(
            row["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt + row["messages"][-1]["content"] + eos, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}

    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    loop_s, mapped = best_of(
        args.repeat, lambda: dataset.map(per_example, remove_columns=["messages"], keep_in_memory=True)
    )
    identical = all(
        a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
        for a, b in zip(examples, mapped, strict=True)
    )

    result = {
        "examples": len(records),
        "tokens": tokens,
        "stage_tokens_per_s": round(tokens / stage_s),
        "batched_tokens_per_s": round(tokens / batched_s),
        "loop_tokens_per_s": round(tokens / loop_s),
        "stage_vs_batched": round(batched_s / stage_s, 3),
        "stage_vs_loop": round(loop_s / stage_s, 2),
        "ids_identical": identical,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(records)} examples, {tokens} tokens (best of {args.repeat})")
    print(f"{'path':<10}{'tokens/s':>12}")
    for name in ("stage", "batched", "loop"):
        print(f"{name:<10}{result[f'{name}_tokens_per_s']:>12,}")
    print(f"stage / batched limit: {result['stage_vs_batched']}   stage / loop: {result['stage_vs_loop']}x")
    print(f"token ids and labels identical to the loop's: {identical}")


if __name__ == "__main__":
    main()
