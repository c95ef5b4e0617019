"""Training throughput: padded random batches (what a new user writes) vs tunegraph's packed blocks.

    python benchmarks/throughput.py [--model tiny|default] [--device cpu|cuda] [--json]

In one process, the same model (fresh copy per path, same seed) trains on the same examples for
the same number of label tokens:
  baseline  random batches of --batch-size examples, padded to the longest in the batch,
            attention_mask on the padding
  packed_full_logits  the tokenized_dataset path: best-fit-decreasing blocks of --block-size tokens,
            position_ids restarting per example, no attention mask, use_cache=False; the model's own
            loss over the logits of every scored position at once (the trainer's loss before the chunked one)
  packed    the same blocks as the trainer runs them: its loss (CheckpointedTrainer.compute_loss), the LM
            head and cross-entropy applied to the scored positions a chunk of rows at a time
            (stages/chunked_loss.py), and its attention (stages.train.training_attention): in fp32 on a
            CPU one causal SDPA call per packed example (stages/packed_attention.py) instead of a
            block-diagonal mask over the block
Reported: effective label tokens/s (label tokens that count in the loss, per second of
forward + backward + optimizer step), each path's non-pad fraction, and the speedup. Packing can
at best recover what padding wastes, so the goal is speedup >= 0.9 / baseline non-pad fraction.

Precision: every path trains in --precision (default auto: what training.precision auto chooses
here, stages/precision.py), and the packed path once more in the other of fp32 / bf16, so one run
gives both rows, each with its MFU against its own format's peak.

MFU, the packed path's model FLOP/s as a fraction of the machine's peak:
  peak      measured in the same run, in the format the path trains in: the best of several n x n
            `torch.mm` (2 n^3 FLOPs each; n 2048 on a CPU at training's thread count, 8192 on CUDA), the
            probe stages/precision.py chooses the precision by (a data sheet's peak is printed beside it)
  FLOPs     per processed token, 6 N for a full fine-tune (forward 2N, backward 2N for activations and
            2N for weights) and 4 N for LoRA (frozen weights get no gradient; the adapters are < 1 %),
            N = the matmul parameters: every nn.Linear of the model, the LM head included, not the
            embedding lookup; plus attention, 12 L d T (PaLM, appendix B: QK^T and AV, forward and
            backward, the full T x T matrix), L layers, d = heads x head size, T = the length of the
            token's own example (what the model needs; packing's other examples and padding are waste).
            The same examples on every path, so the same model FLOPs: MFU ratios are speed ratios.
`hardware_flops_fraction` counts the work actually executed instead: every slot of the batch (padding
too) through the matmuls, the LM head only where a token is scored (PackedCollator's logits_to_keep),
attention over each row's full width (an explicit mask, so SDPA computes the whole matrix).

The RL step (stages/rl.py, `preference.method: grpo`) in the same run, on the same model and precision:
the training process's own function on --rl-steps steps of --rl-prompts prompts x --rl-generations
completions of up to --rl-completion-tokens tokens, sampled from the corpus's prompts, scored by a reward
model of the same shape (the model's weights as a sequence classifier: its scores are arbitrary, its cost
is real) and the rule rewards, with the KL to the starting model. Reported (`rl`): generated tokens/s
(completion tokens per second of sampling with transformers' generate) and train tokens/s (prompt +
completion tokens per second of the rest of the step: the policy's forward, backward and optimizer step),
and the seconds per step, its first step included (RL has no packed blocks to warm up on; with 4 steps the
first is a quarter of the figure). --rl-steps 0 skips it.

--model tiny: a 2-layer random Llama with SmolLM2's tokenizer (under 2 minutes on 2 CPU cores; the RL
    step adds about a minute: 3 min 17 s in all, measured 2026-12-07 on this shared 2-core VM).
--model default: SmolLM2-135M-Instruct, full fine-tune on a slice of the corpus (about 3 minutes);
    --method lora trains LoRA adapters as the demo does.
--model smollm2-360m-shape: a random model of SmolLM2-360M's shape (for GPUs; no hub needed).
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from benchmarks.corpus import example_records, smollm2_tokenizer  # noqa: E402
from stages.chat import IGNORE_INDEX, tokenize_records  # noqa: E402
from stages.chunked_loss import plain_head, scored_loss  # noqa: E402
from stages.config import LoraSettings  # noqa: E402
from stages.launch import exec_with_cpu_allocator, malloc_in_use  # noqa: E402
from stages.model_source import load_source, tiny_random_model  # noqa: E402
from stages.packed_attention import PACKED_SDPA, example_spans  # noqa: E402
from stages.packing import pack_bfd  # noqa: E402
from stages.precision import DTYPES, matmul_gflops, resolve_precision, weights_dtype  # noqa: E402
from stages.spec import TrainingSpec  # noqa: E402
from stages.tables import write_jsonl  # noqa: E402
from stages.train import PackedCollator, lora_config, training_attention  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def build_model(name: str, vocab_size: int, method: str = "full", dtype: torch.dtype = torch.float32) -> Any:
    """The model as training holds it: `dtype` for LoRA's frozen base (stages.precision.weights_dtype),
    fp32 for weights the optimizer updates (peft keeps its adapters fp32)."""
    model = _model(name, vocab_size)
    if method == "lora":
        model = model.to(dtype)
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(LoraSettings()))
    return model


def _model(name: str, vocab_size: int) -> Any:
    if name == "tiny":
        return tiny_random_model(vocab_size)
    if name == "default":
        return load_source("bundled:smollm2-135m-instruct")[0]
    if name == "smollm2-360m-shape":
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
            num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192, tie_word_embeddings=True,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    raise SystemExit(f"unknown --model {name}: use tiny, default or smollm2-360m-shape")


def matmul_parameters(model: Any) -> tuple[int, int]:
    """(N, LM head): weights of every nn.Linear (LoRA's frozen base layers included), the head among them."""
    head = model.get_output_embeddings().weight.numel()
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and "lora_" not in name  # LoRA's own adapters: < 1 %, not counted
    )
    return linear, head


def peak_flops(device: str, name: str) -> tuple[float, str]:
    """The measured matmul rate of format `name` here (FLOP/s): stages.precision's probe, the one that
    chose the precision (on CUDA the data sheet's dense peak is printed beside it)."""
    n = 2048 if device == "cpu" else 8192
    rate = matmul_gflops(DTYPES[name], device, n) * 1e9
    where = f"{torch.get_num_threads()} threads" if device == "cpu" else torch.cuda.get_device_name()
    sheet = next((v for k, v in PEAK_BF16.items() if device == "cuda" and k in where), None)
    return rate, f"{name} torch.mm {n}x{n} measured, {where}" + (
        f" (data sheet {sheet / 1e12:.0f} TFLOP/s)" if sheet else ""
    )


def padded_batches(examples: list[dict], batch_size: int, pad_id: int, seed: int) -> list[dict]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = (
                torch.tensor(e["input_ids"]),
                torch.tensor(e["labels"]),
                1,
            )
        batches.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return batches


def model_loss(model: Any, batch: dict) -> torch.Tensor:
    """The model's own loss: logits for every scored position at once (all positions without a mask)."""
    return model(**batch).loss


def trainer_loss(model: Any, batch: dict) -> torch.Tensor:
    """CheckpointedTrainer.compute_loss's: the chunked LM-head loss where the head allows it."""
    head = plain_head(model)
    return scored_loss(model, batch, head)[0] if head is not None else model(**batch).loss


# Untimed full steps (forward, backward, optimizer step) before the timed pass. Measured on 2 cores:
# the first two steps of a process pay for its memory (the optimizer's state, the allocator's heap
# growing; 280k page faults and 10-15 s of system time in the second step) and then ~0 faults a step.
# With one untimed forward + backward, as before, those ~10 s were a fifth of a 6-step timed pass.
WARMUP_STEPS = 2


def example_lengths(batch: dict, real: torch.Tensor) -> list[int]:
    """Real tokens of each example in the batch: a packed row's examples (position_ids restart), else
    each row; padding is no example."""
    if "position_ids" not in batch:
        return [int(n) for n in real.sum(dim=1)]
    return [
        int(real[r, s:e].sum())
        for r, spans in enumerate(example_spans(batch["position_ids"]))
        for s, e in spans
    ]


def train_on(
    model: Any, batches: list[dict], device: str, loss_of: Any, precision: str = "fp32"
) -> dict[str, dict[str, float]]:
    """Over the WARMUP_STEPS untimed steps ("warmup") and over all batches after them ("timed"):
    seconds, label tokens, real tokens, slots, squared example lengths (attention's model FLOPs) and
    attention slots executed (rows x width^2 with a mask; squared span lengths with packed_sdpa)."""
    model.to(device).train()
    model.config.use_cache = False
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=True)  # the trainer's: adamw_torch_fused
    # As the Trainer's bf16/fp16 switches: autocast over the forward, fp32 master weights.
    autocast = torch.autocast(device, dtype=DTYPES[precision], enabled=precision != "fp32")
    per_example = model.config._attn_implementation == PACKED_SDPA
    keys = ("seconds", "labels", "real", "slots", "example_sq", "attention_slots")
    totals = {phase: dict.fromkeys(keys, 0.0) for phase in ("warmup", "timed")}
    for phase, batch in [("warmup", b) for b in batches[:WARMUP_STEPS]] + [("timed", b) for b in batches]:
        real_mask = batch.get("real", batch.get("attention_mask"))
        batch = {k: v.to(device) for k, v in batch.items() if k != "real"}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        t = totals[phase]
        t["seconds"] += time.perf_counter() - start
        t["labels"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        t["real"] += int(real_mask.sum())
        rows, width = batch["input_ids"].shape
        t["slots"] += rows * width
        t["example_sq"] += sum(n * n for n in example_lengths(batch, real_mask.cpu()))
        spans = example_spans(batch["position_ids"].cpu()) if per_example else [[(0, width)]] * rows
        t["attention_slots"] += sum((e - s) ** 2 for row in spans for s, e in row)
    return totals


def attention_width(model: Any) -> tuple[int, int]:
    """(layers, heads x head size): the L and d of attention's 12 L d T FLOPs per token."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head_dim


def packed_batches(examples: list[dict], block_size: int, batch_blocks: int, pad_id: int) -> list[dict]:
    packed, _ = pack_bfd(pa.Table.from_pylist(examples), block_size)
    blocks = packed.to_pylist()
    collator = PackedCollator(pad_id)
    batches = []
    for start in range(0, len(blocks), batch_blocks):
        chunk = blocks[start : start + batch_blocks]
        batch = collator(chunk)
        real = torch.zeros_like(batch["input_ids"])
        for row, b in enumerate(chunk):
            real[row, : len(b["input_ids"])] = 1
        batches.append({**batch, "real": real})
    return batches


def rl_step(args: argparse.Namespace, tokenizer: Any, records: list[dict], precision: str) -> dict[str, Any]:
    """The RL step's rates: stages.rl.train_rl (GRPO) on the model, saved with a reward model of its shape."""
    from transformers import AutoModelForSequenceClassification

    from stages.config import PreferenceConfig, TrainingConfig
    from stages.rl import train_rl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(args.model, len(tokenizer))
        model.save_pretrained(root / "policy")
        tokenizer.save_pretrained(root / "policy")
        del model
        scorer = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
        scorer.config.pad_token_id = tokenizer.pad_token_id
        scorer.save_pretrained(root / "reward")
        tokenizer.save_pretrained(root / "reward")
        del scorer
        chats = [r for r in records if r.get("schema") != "text"][: args.rl_steps * args.rl_prompts]
        write_jsonl(root / "prompts.jsonl", [{"prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
                                             for r in chats])  # fmt: skip
        rl = {"num_generations": args.rl_generations, "prompts_per_step": args.rl_prompts, "max_steps": args.rl_steps,
              "max_completion_tokens": args.rl_completion_tokens, "save_steps": args.rl_steps + 1, "prompts": len(chats),
              "rewards": {"length": {"min_tokens": 1, "max_tokens": args.rl_completion_tokens}}}  # fmt: skip
        (root / "out").mkdir()
        spec = TrainingSpec(
            init_model_dir=root / "policy",
            output_dir=root / "out",
            checkpoint_dir=root / "checkpoints",
            training=TrainingConfig(method=args.method, precision=precision, seed=0),
            preference=PreferenceConfig(enabled=True, method="grpo", weights=args.method, rl=rl),
            prompts_path=root / "prompts.jsonl",
            reward_model_dir=root / "reward",
        )
        with contextlib.redirect_stdout(sys.stderr):  # TRL prints every log row; --json owns stdout
            summary = train_rl(spec, log=lambda line: print(line, file=sys.stderr))
    keys = ("generated_tokens_per_s", "train_tokens_per_s", "seconds_per_step", "generation_s", "rollout_s",
            "wall_s", "generated_tokens", "completions_per_step", "completion_tokens_mean", "precision")  # fmt: skip
    return {"steps": summary["steps"], **{k: round(v, 3) if isinstance(v, float) else v
                                          for k, v in summary.items() if k in keys}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "default", "smollm2-360m-shape"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, default=None, help="examples used (default: by model)")
    parser.add_argument("--batch-size", type=int, default=8, help="baseline examples per batch")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="as training.precision; the packed path also runs in the other of fp32/bf16")  # fmt: skip
    parser.add_argument(
        "--rl-steps", type=int, default=4, help="RL (GRPO) steps measured; 0 skips the RL step"
    )
    parser.add_argument("--rl-prompts", type=int, default=2, help="RL prompts per step")
    parser.add_argument(
        "--rl-generations", type=int, default=4, help="RL completions per prompt (group size)"
    )
    parser.add_argument(
        "--rl-completion-tokens", type=int, default=48, help="RL tokens per completion at most"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device == "cpu":
        exec_with_cpu_allocator()  # measure what CPU training gets: its malloc and settings

    tokenizer = smollm2_tokenizer()
    records = example_records()
    random.Random(0).shuffle(records)
    n = args.examples or {"tiny": 200, "default": 96}.get(args.model, 4000)
    examples = [e for e in tokenize_records(tokenizer, records[:n]) if len(e["input_ids"]) <= args.block_size]
    pad = tokenizer.pad_token_id

    baseline = padded_batches(examples, args.batch_size, pad, seed=0)
    # Same tokens per step on average: blocks per batch sized to the baseline's real tokens per batch.
    mean_tokens = sum(len(e["input_ids"]) for e in examples) * args.batch_size / len(examples)
    packed = packed_batches(examples, args.block_size, max(1, round(mean_tokens / args.block_size)), pad)
    chosen = resolve_precision(args.precision, args.device)
    other = "fp32" if chosen.name != "fp32" else "bf16"
    # Every path in the chosen precision, as training runs; the packed path once more in the other format.
    paths = (("baseline", baseline, model_loss, chosen.name), ("packed_full_logits", packed, model_loss, chosen.name),
             ("packed", packed, trainer_loss, chosen.name), (f"packed_{other}", packed, trainer_loss, other))  # fmt: skip
    results, totals = {}, {}
    for name, batches, loss_of, precision in paths:
        frozen = weights_dtype("auto", dataclasses.replace(chosen, name=precision), args.method == "full")
        model = build_model(args.model, len(tokenizer), args.method, frozen)
        if loss_of is trainer_loss:  # the trainer's attention too
            training_attention(model, precision)
        n_matmul, n_head = matmul_parameters(model)
        layers, width = attention_width(model)
        totals[name] = train_on(model, batches, args.device, loss_of, precision)
        t = totals[name]["timed"]
        results[name] = {
            "tokens_per_s": t["labels"] / t["seconds"],
            "processed_tokens_per_s": t["real"] / t["seconds"],
            "non_pad_fraction": t["real"] / t["slots"],
            "label_tokens": t["labels"],
            "seconds": t["seconds"],
            "warmup_seconds": totals[name]["warmup"]["seconds"],
        }
        del model
    speedup = results["packed"]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
    out: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "examples": len(examples),
        "warmup_steps": WARMUP_STEPS,
        "precision": chosen.name,
        "precision_reason": chosen.reason,
        **{name: {k: round(v, 4) for k, v in results[name].items()} for name, *_ in paths},
        "speedup": round(speedup, 3),
        "speedup_over_full_logits": round(
            results["packed"]["tokens_per_s"] / results["packed_full_logits"]["tokens_per_s"], 3
        ),
        "recovered_fraction": round(speedup * results["baseline"]["non_pad_fraction"], 3),
    }
    # Model FLOPs, the same on every path (the same examples): 6N (4N with LoRA) per real token plus
    # attention, 12 L d T per token with T its example's length, so 12 L d len^2 per example.
    per_param = 6 if args.method == "full" else 4

    def model_flops(t: dict[str, float]) -> float:
        return per_param * n_matmul * t["real"] + 12 * layers * width * t["example_sq"]

    peaks = {p: peak_flops(args.device, p) for p in (chosen.name, other)}
    peak, peak_source = peaks[chosen.name]

    def mfu(name: str, phases: tuple[str, ...] = ("timed",), against: float | None = None) -> float | None:
        flops = sum(model_flops(totals[name][p]) for p in phases)
        seconds = sum(totals[name][p]["seconds"] for p in phases)
        return round(flops / seconds / (against or peak), 3)

    t = totals["packed"]["timed"]
    executed = (
        per_param * ((n_matmul - n_head) * t["slots"] + n_head * t["labels"])
        + 12 * layers * width * t["attention_slots"]
    )
    attention_share = 12 * layers * width * t["example_sq"] / model_flops(t)
    out |= {
        "method": args.method,
        "threads": torch.get_num_threads(),
        # Training runs on tcmalloc where the machine has it (stages/launch.py); main() restarts this
        # benchmark in the same environment, so this says what the numbers were measured on.
        "malloc": malloc_in_use(),
        "flops_per_token": (
            f"{per_param}N + 12 L d T, N = {n_matmul:,} matmul parameters (LM head {n_head:,}), L = {layers}, "
            f"d = {width}, T = the token's own example length (token-weighted mean {t['example_sq'] / t['real']:.0f}):"
            f" attention {attention_share:.1%} of the model FLOPs"
        ),
        "peak_flops": round(peak) if peak else None,
        "peak_source": peak_source,
        "achieved_flops": round(model_flops(t) / t["seconds"]),
        "mfu": mfu("packed"),
        "mfu_including_warmup": mfu("packed", ("warmup", "timed")),
        "hardware_flops_fraction": round(executed / t["seconds"] / peak, 3) if peak else None,
        "mfu_full_logits": mfu("packed_full_logits"),
        "baseline_mfu": mfu("baseline"),
        # The trainer's path in both formats, each against its own measured matmul peak.
        "precisions": {
            p: {
                "tokens_per_s": round(results[row]["tokens_per_s"], 2),
                "peak_flops": round(peaks[p][0]),
                "mfu": mfu(row, against=peaks[p][0]),
            }
            for p, row in ((chosen.name, "packed"), (other, f"packed_{other}"))
        },
    }
    if args.rl_steps:
        out["rl"] = rl_step(args, tokenizer, records, chosen.name)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.model} on {args.device}: {len(examples)} examples, same examples and label tokens on every path"
    )
    print(f"{'path':<20}{'label tok/s':>14}{'non-pad':>10}{'label tokens':>14}{'seconds':>10}")
    for name, *_ in paths:
        r = out[name]
        print(
            f"{name:<20}{r['tokens_per_s']:>14.1f}{r['non_pad_fraction']:>10.3f}{r['label_tokens']:>14}{r['seconds']:>10.1f}"
        )
    print(
        f"speedup {out['speedup']}x; packing recovers {out['recovered_fraction']:.0%} of the padding waste bound"
    )
    if out["mfu"] is not None:
        print(
            f"packed: {out['achieved_flops'] / 1e9:.1f} GFLOP/s ({out['flops_per_token']}) of a "
            f"{out['peak_flops'] / 1e9:.1f} GFLOP/s peak ({out['peak_source']}): MFU {out['mfu']}, "
            f"executed {out['hardware_flops_fraction']}, with the {WARMUP_STEPS} warm-up steps "
            f"{out['mfu_including_warmup']}; before (full logits, masked attention) MFU "
            f"{out['mfu_full_logits']}; padded baseline MFU {out['baseline_mfu']}"
        )
    print(
        f"precision {chosen.name} ({chosen.reason}); the packed path in each format, MFU against its own peak:"
    )
    for p, r in out["precisions"].items():
        print(
            f"  {p:<6}{r['tokens_per_s']:>10.1f} label tok/s  peak {r['peak_flops'] / 1e9:>8.1f} GFLOP/s  MFU {r['mfu']}"
        )
    if "rl" in out:
        rl = out["rl"]
        print(
            f"RL step (GRPO, {rl['completions_per_step']} completions a step, {rl['steps']} steps, {rl['precision']}): "
            f"{rl['generated_tokens_per_s']:.1f} generated tok/s, {rl['train_tokens_per_s']:.1f} train tok/s "
            f"(prompt + completion), {rl['seconds_per_step']:.2f} s a step; fine-tune (packed) "
            f"{out['packed']['tokens_per_s']:.1f} label tok/s"
        )


if __name__ == "__main__":
    main()
