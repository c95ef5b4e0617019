"""Where a training step's time goes: torch.profiler over a few steps of the trainer's own path.

    python benchmarks/profile_step.py [--model default|tiny] [--method lora|full] [--bf16] [--steps 3]

The batches are PackedCollator's (4 blocks of 512 tokens, logits only where a token is scored), the
loss and attention the trainer's (the chunked LM head, stages/chunked_loss.py; in fp32 one SDPA call
per packed example, stages/packed_attention.py), the model and LoRA settings the demo's. Prints the
operators by self CPU time, after one untimed step.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import random  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.corpus import example_records, smollm2_tokenizer  # noqa: E402
from benchmarks.throughput import build_model, packed_batches, trainer_loss  # noqa: E402
from stages.chat import tokenize_records  # noqa: E402
from stages.launch import exec_with_cpu_allocator  # noqa: E402
from stages.train import training_attention  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", choices=["tiny", "default"])
    parser.add_argument("--method", default="lora", choices=["full", "lora"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as training.precision bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    args = parser.parse_args()
    exec_with_cpu_allocator()  # the malloc and settings CPU training runs with

    tokenizer = smollm2_tokenizer()
    records = example_records()
    random.Random(0).shuffle(records)
    examples = [e for e in tokenize_records(tokenizer, records[:200]) if len(e["input_ids"]) <= 512]
    batches = packed_batches(examples, 512, 4, tokenizer.pad_token_id)[: args.steps + 1]
    model = build_model(args.model, len(tokenizer), args.method).train()
    model.config.use_cache = False
    training_attention(model, "bf16" if args.bf16 else "fp32")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = trainer_loss(model, {k: v for k, v in batch.items() if k != "real"})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[1:]:
            step(batch)
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40
        )
    )


if __name__ == "__main__":
    main()
