"""Cross-entropy of an LM head at the scored positions, a chunk of rows at a time.

The usual path projects every scored hidden state onto the vocabulary at once: for SmolLM2 a
[scored tokens x 49,152] fp32 logits tensor (about 326 MB for a demo batch), then a log-softmax
over it and, in backward, its gradient of the same size. Measured on 2 cores, that log-softmax
forward + backward was 17 % of a full fine-tune step, most of it first-touch page faults on those
buffers (their size changes every step). Here the logits exist one chunk of rows at a time, in one
buffer reused across the chunks, and the gradients of the hidden states and the head's weight are
computed in the same pass (the loss is a sum, so its gradient is known in the forward), as
Liger-Kernel's fused linear cross-entropy does on GPUs. The FLOPs are the same 3 matmuls. In bf16
autocast (the demo's LoRA on AMX, frozen head) it is no faster: 0.35 s against 0.30-0.32 s a step for
the head and loss, under 1 % of a 5.6 s step.

    loss = chunked_cross_entropy(hidden [n, d], head.weight [V, d], targets [n])  # summed over rows
"""

from typing import Any

import torch

# Rows of logits per chunk: 1024 x 49,152 fp32 is 201 MB. Measured on 2 cores (SmolLM2's head, fp32,
# forward + backward): at a fixed 1,660 rows, 256-row chunks 1.56 s, 512-2048 rows 1.36 s, the full
# logits 1.36 s; over 8 batches of 1,540-1,830 rows (a new size each, as in training), the full logits
# 15.8 s, 1024-row chunks 13.9 s, 512-row chunks 12.4 s (one run each; 512 is worth a re-measure).
CHUNK_ROWS = 1024


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_rows: int,
        grad_enabled: bool,
    ) -> torch.Tensor:
        device = hidden.device.type
        # Autocast does not reach inside an autograd.Function's explicit dtype handling: compute the
        # matmuls in the autocast dtype where it is on (bf16 on a GPU), the softmax in fp32 always.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        # needs_input_grad stays True under no_grad (evaluation): the caller's grad mode decides too.
        need_hidden, need_weight = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1))
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            acc = torch.promote_types(dtype, torch.float32)  # the softmax's and the sums' dtype
            n = h.shape[0]
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            # Written by the first chunk's addmm_ (beta 0 ignores what is there); summed into in bf16.
            fill = torch.empty_like if dtype == acc else torch.zeros_like
            grad_weight = fill(weight, dtype=acc) if need_weight else None
            buffer = torch.empty((min(chunk_rows, n), w.shape[0]), dtype=dtype, device=hidden.device)
            for start in range(0, n, chunk_rows):
                rows = slice(start, min(start + chunk_rows, n))
                h_c, t_c = h[rows], targets[rows]
                logits = buffer[: h_c.shape[0]]
                torch.mm(h_c, w.t(), out=logits)
                probs = logits.to(acc)  # the same tensor unless the matmuls run in bf16/fp16
                target_logit = probs.gather(1, t_c[:, None]).squeeze(1)
                top = probs.amax(dim=1, keepdim=True)
                probs.sub_(top).exp_()  # in place: no second [chunk x vocab] tensor
                sums = probs.sum(dim=1, keepdim=True)
                total += (top.squeeze(1) + sums.squeeze(1).log() - target_logit).sum()
                if not (need_hidden or need_weight):
                    continue
                # d(sum of losses)/d(logits) = softmax - one_hot(target)
                probs.div_(sums)
                probs[torch.arange(len(t_c), device=probs.device), t_c] -= 1.0
                grad_logits = probs.to(dtype)
                if need_hidden:
                    grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
                if need_weight and dtype == acc:
                    grad_weight.addmm_(grad_logits.t(), h_c, beta=0 if start == 0 else 1)
                elif need_weight:
                    grad_weight += (grad_logits.t() @ h_c).to(acc)
        # Kept on ctx, not saved for backward: backward scales them in place (a new [vocab x d] tensor for
        # the scaled weight gradient cost 0.18 s of a 6.1 s SmolLM2 step here, most of it page faults).
        ctx.grads = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_total: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        if ctx.grads is None:
            raise RuntimeError(
                "the chunked loss's gradients were already used: it supports one backward pass"
            )
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if grad_hidden is not None:
            grad_hidden.mul_(grad_total.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """The summed cross-entropy of `hidden @ weight.T` against `targets`, never holding more than
    `chunk_rows` rows of logits. Every target must be a real token id (pass only scored rows)."""
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets: pass one target per row"
        )
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps both in the graph (DDP expects every grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, torch.is_grad_enabled())


# Causal LMs whose logits are exactly `lm_head(final hidden state)`: no soft-capping, scaling or bias
# (Gemma 2's soft-capping or Granite's logit scaling would need their own chunked loss).
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3")


def plain_head(model: Any) -> torch.nn.Linear | None:
    """The LM head of `model` (unwrapped from DDP, PEFT passes through) when the chunked loss computes its
    loss exactly, else None: the model's own full-logits loss is then used."""
    head = model.get_output_embeddings()
    plain = getattr(model.config, "model_type", None) in PLAIN_HEAD_MODELS
    return head if plain and type(head) is torch.nn.Linear and head.bias is None else None


def scored_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    head: torch.nn.Linear,
    num_items: Any = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, Any]:
    """The causal-LM loss of a PackedCollator batch, its LM head applied in chunks to the scored positions.

    The loss is computed inside the model's forward, where its head would run: for this call the head's
    forward is the chunked cross-entropy of the rows the model hands it (`logits_to_keep`: the scored
    positions) against their targets, and the model returns that sum as its `logits`. Inside the forward
    the head's weight is the whole matrix under every wrapper: DDP's, and FSDP's or ZeRO-3's, which
    gather a sharded weight for the forward and reduce-scatter its gradient after backward (read outside
    the forward, an FSDP weight is this process's shard). The loss is the summed cross-entropy over
    `num_items` (the Trainer's count across gradient-accumulation steps) or, without it, the mean over
    this batch's scored tokens, as transformers' ForCausalLMLoss. Returns (loss, outputs).
    """
    keep, targets = batch["logits_to_keep"], batch["shift_labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels", "logits_to_keep")}

    def loss_head(hidden: torch.Tensor) -> torch.Tensor:
        return chunked_cross_entropy(hidden, head.weight, targets, chunk_rows)

    head.forward = loss_head  # an instance attribute: this call only, removed below
    try:
        outputs = model(**inputs, logits_to_keep=keep)
    finally:
        del head.forward
    return outputs.logits / (num_items if num_items is not None else max(len(targets), 1)), outputs
