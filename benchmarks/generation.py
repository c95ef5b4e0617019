"""tunegraph's greedy generation vs transformers' `model.generate` on the evaluation's workload, one run.

    python benchmarks/generation.py [--model tiny|default] [--dtypes auto|fp32,bf16] [--examples N] [--json]

The workload is the demo evaluation's generation (configs/default.yaml): the held-out prompts (the
example corpus, cleaned, split with the demo's eval_fraction and seed, the first evaluation.max_examples),
as each prompting baseline renders them (zero-shot, system prompt, few-shot with the demo's shots), the
demo's evaluation.batch_size, max_new_tokens and repetition_penalty, greedy. No demo run is needed.
  generate   `model.generate` on the length-sorted batches of batch_size prompts the evaluation used
             before (benchmarks/before.py `fixed_batches`, left-padded): each batch runs until its last row stops
  tunegraph  stages/generation.py: the same prompts through batch_size slots, a row that stops hands its
             slot to the next prompt; tokens on the device, one host read every few steps
Reported per variant and in total: new tokens/s of each (tokens up to and including EOS), the ratio
(goal >= 2.0), and how many rows are identical token for token (the goal needs all). The model runs where
the evaluation runs it (stages/inference.py: the training device and precision; bf16 on a CPU whose bf16
matmul measures faster); `--dtypes fp32,bf16` measures both.

--model default: SmolLM2-135M-Instruct (`load_source`, ~12 s to dequantise), about 2 x 3 minutes a dtype
on 2 cores; --model tiny: the 2-layer random model with the same tokenizer (never says EOS), seconds.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.before import fixed_batches  # noqa: E402
from benchmarks.corpus import example_records, smollm2_tokenizer  # noqa: E402
from resources.settings import DEFAULT_CONFIG  # noqa: E402
from stages.config import load_config  # noqa: E402
from stages.evaluation import eval_items, left_padded  # noqa: E402
from stages.generation import Decoder  # noqa: E402
from stages.inference import inference_placement  # noqa: E402
from stages.model_source import load_source, tiny_random_model  # noqa: E402
from stages.precision import DTYPES  # noqa: E402
from stages.prompts import conversations, example_pool  # noqa: E402
from stages.serving import decoding_config  # noqa: E402
from stages.split import split_records  # noqa: E402

GOAL = 2.0


def workload(tokenizer: Any, examples: int | None = None) -> dict[str, list[list[int]]]:
    """The prompt ids each base-model prompt variant of the demo config generates from in its evaluation
    (the first `examples` held-out records: a smoke run; default evaluation.max_examples)."""
    cfg = load_config(DEFAULT_CONFIG)
    train, held_out = split_records(example_records(), cfg.data.eval_fraction, cfg.data.seed)
    pool = example_pool(train)
    records = held_out[: examples or cfg.evaluation.max_examples]
    out = {}
    for variant in (v for v in cfg.prompts if "base" in v.models):
        asked = conversations(variant, records, pool, cfg.data.seed)
        items = eval_items(asked, records, tokenizer, cfg.evaluation.max_new_tokens)
        out[variant.name] = tokenizer([i.gen_prompt for i in items], add_special_tokens=False)["input_ids"]
    return out


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@torch.no_grad()
def with_generate(model: Any, prompts: list[list[int]], config: Any, batch_size: int) -> list[list[int]]:
    """The evaluation before stages/generation.py: fixed length-sorted batches through `model.generate`."""
    out: list[list[int]] = [[] for _ in prompts]
    for batch in fixed_batches([len(p) + config.max_new_tokens for p in prompts], batch_size, 8192):
        ids, mask = (t.to(model.device) for t in left_padded(config.pad_token_id, prompts, batch))
        generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row, i in enumerate(batch):
            out[i] = until_eos(generated[row, ids.shape[1] :].tolist(), config.eos_token_id)
    return out


def timed(fn: Any) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def measure(
    model: Any,
    tokenizer: Any,
    prompts: dict[str, list[list[int]]],
    batch_size: int,
    max_new: int,
    penalty: float,
) -> dict[str, Any]:
    """Both paths on every variant (generate first, then tunegraph, variant by variant: a slower minute on
    a shared machine hits both), after one untimed call of each."""
    warm = decoding_config(tokenizer, 4, penalty)
    with_generate(model, next(iter(prompts.values()))[:2], warm, batch_size)
    Decoder(model, warm, batch_size).run(next(iter(prompts.values()))[:2])
    config = decoding_config(tokenizer, max_new, penalty)
    rows: dict[str, Any] = {}
    for variant, ids in prompts.items():
        theirs, generate_s = timed(lambda: with_generate(model, ids, config, batch_size))  # noqa: B023
        ours, ours_s = timed(lambda: Decoder(model, config, batch_size).run(ids))  # noqa: B023
        tokens = sum(map(len, ours))
        rows[variant] = {
            "prompts": len(ids),
            "identical_rows": sum(a == b for a, b in zip(ours, theirs, strict=True)),
            "new_tokens": tokens,
            "generate_new_tokens": sum(map(len, theirs)),
            "stopped_at_eos": sum(config.eos_token_id in row for row in ours),
            "generate_s": round(generate_s, 2),
            "tunegraph_s": round(ours_s, 2),
            "generate_tokens_per_s": round(sum(map(len, theirs)) / generate_s, 1),
            "tunegraph_tokens_per_s": round(tokens / ours_s, 1),
            "ratio": round(generate_s / ours_s, 3),
        }
    summed = ("prompts", "identical_rows", "new_tokens", "generate_new_tokens", "stopped_at_eos", "generate_s",
              "tunegraph_s")  # fmt: skip
    total = {k: sum(r[k] for r in rows.values()) for k in summed}
    total |= {
        "generate_tokens_per_s": round(total["generate_new_tokens"] / total["generate_s"], 1),
        "tunegraph_tokens_per_s": round(total["new_tokens"] / total["tunegraph_s"], 1),
        "ratio": round(total["generate_s"] / total["tunegraph_s"], 3),
    }
    return {"variants": rows, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", choices=["tiny", "default"])
    parser.add_argument("--dtypes", default="auto", help="auto (the evaluation's), or a list: fp32,bf16")
    parser.add_argument(
        "--examples", type=int, default=None, help="held-out prompts (default: the demo's 32)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = load_config(DEFAULT_CONFIG)
    ev = cfg.evaluation
    tokenizer = smollm2_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as save_base_model stores it
    model = load_source(cfg.model.base)[0] if args.model == "default" else tiny_random_model(len(tokenizer))
    placement = inference_placement(cfg)
    dtypes = [placement.dtype] if args.dtypes == "auto" else [DTYPES[d] for d in args.dtypes.split(",")]
    prompts = workload(tokenizer, args.examples)
    runs = []
    for dtype in dtypes:
        model = model.to(device=placement.device, dtype=dtype).eval()
        result = measure(model, tokenizer, prompts, ev.batch_size, ev.max_new_tokens, ev.repetition_penalty)
        runs.append({"dtype": str(dtype).removeprefix("torch."), **result})
    out = {
        "model": args.model,
        "device": placement.device,
        "evaluation_dtype": str(placement.dtype).removeprefix("torch."),
        "precision_reason": placement.precision.reason,
        "threads": torch.get_num_threads(),
        "batch_size": ev.batch_size,
        "max_new_tokens": ev.max_new_tokens,
        "repetition_penalty": ev.repetition_penalty,
        "goal_ratio": GOAL,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.model} on {placement.device} ({placement.precision.reason}), batch {ev.batch_size}, "
        f"max_new_tokens {ev.max_new_tokens}, repetition_penalty {ev.repetition_penalty}, greedy"
    )
    header = f"{'dtype':9} {'variant':20} {'rows':>5} {'same':>5} {'eos':>4} {'tokens':>7} {'generate tok/s':>15} {'tunegraph tok/s':>16} {'ratio':>6}"  # fmt: skip
    print(header)
    for run in runs:
        for name, r in [*run["variants"].items(), ("total", run["total"])]:
            eos = r["stopped_at_eos"]
            print(f"{run['dtype']:9} {name:20} {r['prompts']:>5} {r['identical_rows']:>5} {eos:>4} {r['new_tokens']:>7} "
                  f"{r['generate_tokens_per_s']:>15} {r['tunegraph_tokens_per_s']:>16} {r['ratio']:>6}")  # fmt: skip
    met = all(
        r["total"]["ratio"] >= GOAL and r["total"]["identical_rows"] == r["total"]["prompts"] for r in runs
    )
    print(f"goal: ratio >= {GOAL} with every row identical: {'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
