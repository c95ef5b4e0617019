"""Batched greedy decoding with a KV cache: the evaluation's, pair synthesis' and paraphrasing's generation.

Each row decodes exactly as `model.generate(generation_config=config)` decodes it (greedy, the repetition
penalty over its prompt and answer, stop at EOS or `max_new_tokens`); tests/unit/test_generation.py and
benchmarks/generation.py compare the two token for token. What differs is the schedule:

- continuous batching: up to `max_rows` rows decode together, and a row that stops hands its slot to
  the next prompt in the queue. A decode step on a CPU costs about the same for 1 or 16 rows (reading
  the weights dominates: a bf16 576 x 1536 matmul took 0.069 ms for 1 row and 0.071 ms for 16 here), so
  the time is the number of steps, and `generate`'s fixed batches run each batch until its longest
  answer ends while the other rows idle;
- prompts queue longest first, so rows that join together are padded to about the same length;
- no per-token host sync: tokens, stop flags and lengths stay on the device; the host reads the stop
  flags every SYNC_EVERY steps (one read), harvests the rows that stopped, drops them from the batch and
  the cache, trims padding no row needs any more, and admits new rows.

A row's padding is neutral for the penalty (it repeats the row's own first token), so an answer does not
depend on which rows it shared a batch with: it is the answer `generate` gives that prompt alone, which
is also what `tunegraph chat` and serving give.
"""

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, RepetitionPenaltyLogitsProcessor
from transformers.cache_utils import DynamicLayer

from stages.decode_step import LlamaDecodeStep, Slots, takes_fast_step

# Host reads of the stop flags: one every 4 steps. On a GPU each read waits for the queue to drain; on a
# CPU it costs nothing, but a row that stopped holds its slot until the read (1.5 steps on average, 4 %
# of a 40-token answer).
SYNC_EVERY = 4
# The decoding batch's KV cache may take this much memory: rows x (prompt + new tokens) at the model's bytes a
# token (SmolLM2 in bf16: 23 KB, so ~46k tokens; an 8B model with grouped KV heads: 128 KB, 8k). A fixed 8,192
# tokens held few-shot prompts of ~300 tokens to 19 rows of 32 here: the retrieved-context variant decoded in
# 15.0 s instead of 10.5 s.
KV_CACHE_BYTES = 1 << 30
MIN_TOKEN_BUDGET = 8192


def kv_token_budget(model: Any) -> int:
    """Tokens of KV cache a decoding batch may hold: KV_CACHE_BYTES at this model's bytes a token (keys and
    values of every layer), never fewer than MIN_TOKEN_BUDGET."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # None: one KV head per query head
    per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * next(model.parameters()).element_size()
    return max(MIN_TOKEN_BUDGET, KV_CACHE_BYTES // per_token)


class _Batch:
    """The rows decoding together, all tensors on the model's device, every row left-padded to one width.

    cache: the KV cache (`Slots` on the fused Llama step); padded: some row is left-padded (kept, though the
    mask says it, so a step reads no device tensor on the host: set where rows join or leave); mask: [rows,
    cache width] 1 where a row has a token; seqs: [rows, prompt width + max_new + SYNC_EVERY] the prompt
    and answer as the penalty reads them, unwritten places holding the row's first token; n_new: tokens
    generated; done: stopped; next_pos: the position of the next token; token: the last token generated
    (the next step's input); ids: each row's index in the caller's list.
    """

    def __init__(self, cache: Any, mask: torch.Tensor, seqs: torch.Tensor, width: int, ids: list[int]):
        self.cache, self.mask, self.seqs, self.width, self.ids = cache, mask, seqs, width, ids
        self.padded = bool((mask == 0).any())
        rows, device = len(ids), mask.device
        self.n_new = torch.zeros(rows, dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.next_pos = mask.sum(-1)
        self.token = torch.zeros(rows, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.ids)


class Decoder:
    """Greedy decoding of many prompts (token ids) with one model and one GenerationConfig."""

    def __init__(self, model: Any, config: Any, max_rows: int, token_budget: int | None = None):
        self.model, self.config = model, config
        self.max_rows = max_rows
        self.token_budget = token_budget if token_budget is not None else kv_token_budget(model)
        self.max_new = config.max_new_tokens
        # stages/decode_step.py: the same logits as the model's forward, 29 % less time a step on a CPU
        self.fast = LlamaDecodeStep(model) if takes_fast_step(model) else None
        self.device = next(model.parameters()).device
        eos = config.eos_token_id
        self.eos = torch.tensor(eos if isinstance(eos, list) else [eos], device=self.device)
        self.pad = config.pad_token_id if config.pad_token_id is not None else self.eos[0].item()
        self.penalty = (
            RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty))
            if config.repetition_penalty not in (None, 1.0)
            else None
        )

    @torch.no_grad()
    def run(
        self, prompts: list[list[int]], on_done: Callable[[int], None] = lambda n: None
    ) -> list[list[int]]:
        """The generated ids of each prompt, in order: up to and including EOS, or `max_new_tokens` of them."""
        if any(not p for p in prompts):
            raise ValueError("an empty prompt cannot be continued: every prompt needs at least one token")
        queue = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        out: list[list[int]] = [[] for _ in prompts]
        batch: _Batch | None = None
        while queue or batch is not None:
            joining = self._admit(queue, prompts, batch)
            if joining:
                batch = self._merge(batch, self._prefill(prompts, joining))
            assert batch is not None
            for _ in range(SYNC_EVERY):
                self._step(batch)
            batch = self._harvest(batch, out, on_done)
        return out

    def _admit(self, queue: list[int], prompts: list[list[int]], batch: _Batch | None) -> list[int]:
        """Prompts from the head of the queue that fit beside the running rows: `max_rows` rows, and rows x
        (cache width + new tokens) within `token_budget` (always one when nothing runs)."""
        rows = len(batch) if batch is not None else 0
        width = batch.mask.shape[1] if batch is not None else 0
        joining: list[int] = []
        while queue and rows + len(joining) < self.max_rows:
            wide = max(width, len(prompts[queue[0]]))
            if (rows or joining) and (rows + len(joining) + 1) * (wide + self.max_new) > self.token_budget:
                break
            width = wide
            joining.append(queue.pop(0))
        return joining

    def _prefill(self, prompts: list[list[int]], ids: list[int]) -> _Batch:
        """Run the prompts of `ids`, left-padded to one width, through the model; their first tokens."""
        width = max(len(prompts[i]) for i in ids)
        tail = self.max_new + SYNC_EVERY
        tokens = torch.full((len(ids), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        seqs = torch.empty((len(ids), width + tail), dtype=torch.long)
        for row, i in enumerate(ids):
            p = prompts[i]
            tokens[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
            seqs[row] = p[0]  # neutral for the penalty: the row already holds this token
            seqs[row, width - len(p) : width] = torch.tensor(p)
        tokens, mask, seqs = tokens.to(self.device), mask.to(self.device), seqs.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them
        batch = _Batch(DynamicCache(config=self.model.config), mask, seqs, width, list(ids))
        logits = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=batch.cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]  # fmt: skip
        if self.fast is not None:
            batch.cache = Slots.from_cache(batch.cache, room=tail)
        self._take(batch, logits)
        return batch

    def _step(self, batch: _Batch) -> None:
        """One token for every row; stopped rows compute too (until the next harvest) and keep their answer."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        if self.fast is not None:
            padding = batch.mask if batch.padded else None
            logits = self.fast(batch.token, batch.next_pos, padding, batch.cache)
        else:
            logits = self.model(input_ids=batch.token[:, None], attention_mask=batch.mask,
                                position_ids=batch.next_pos[:, None], cache=batch.cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]  # fmt: skip
        batch.next_pos += 1
        self._take(batch, logits)

    def _take(self, batch: _Batch, logits: torch.Tensor) -> None:
        logits = logits.float()
        if self.penalty is not None:
            logits = self.penalty(batch.seqs, logits)
        token = logits.argmax(-1)
        writing = ~batch.done
        rows = torch.arange(len(batch), device=self.device)
        # A stopped row writes nothing (its own first token, in the first unwritten place) and counts nothing.
        batch.seqs[rows, batch.width + batch.n_new] = torch.where(writing, token, batch.seqs[:, 0])
        batch.n_new += writing
        batch.done |= torch.isin(token, self.eos) | (batch.n_new >= self.max_new)
        batch.token = token

    def _harvest(self, batch: _Batch, out: list[list[int]], on_done: Callable[[int], None]) -> _Batch | None:
        """One host read: the answers of the rows that stopped; the rest, with padding no row needs dropped."""
        done, n_new = batch.done.tolist(), batch.n_new.tolist()
        if not any(done):
            return batch
        answers = batch.seqs[:, batch.width :].tolist()
        for row, i in enumerate(batch.ids):
            if done[row]:
                out[i] = answers[row][: n_new[row]]
        on_done(sum(done))
        keep = [row for row, d in enumerate(done) if not d]
        if not keep:
            return None
        index = torch.tensor(keep, device=self.device)
        if not isinstance(batch.cache, Slots):
            batch.cache.batch_select_indices(index)
        batch.ids = [batch.ids[row] for row in keep]
        for name in ("mask", "seqs", "n_new", "done", "next_pos", "token"):
            setattr(batch, name, getattr(batch, name)[index])
        start = int(batch.mask.any(0).long().argmax())  # columns before it are padding in every row left
        if isinstance(batch.cache, Slots):
            batch.cache.select(index, start)
            batch.mask = batch.mask[:, start:]
        elif start and _plain(batch.cache):
            batch.mask = batch.mask[:, start:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        batch.padded = bool((batch.mask == 0).any())
        return batch

    def _merge(self, batch: _Batch | None, joining: _Batch) -> _Batch:
        """The running rows and the rows just prefilled as one batch: the narrower side left-padded."""
        if batch is None:
            return joining
        if isinstance(batch.cache, Slots):
            batch.cache = batch.cache.joined(joining.cache, room=self.max_new + SYNC_EVERY)
        elif not (_plain(batch.cache) and _plain(joining.cache)):
            raise ValueError(
                f"rows can join a running batch only with plain KV caches, not {batch.cache.layers[0]}"
            )
        else:
            width = max(batch.mask.shape[1], joining.mask.shape[1])
            for old, new in zip(batch.cache.layers, joining.cache.layers, strict=True):
                old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
                old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        width = max(batch.mask.shape[1], joining.mask.shape[1])
        batch.mask = torch.cat([_left_pad(batch.mask, width, 1), _left_pad(joining.mask, width, 1)])
        prompt_width = max(batch.width, joining.width)
        batch.seqs = torch.cat([_neutral_pad(batch.seqs, prompt_width - batch.width),
                                _neutral_pad(joining.seqs, prompt_width - joining.width)])  # fmt: skip
        batch.width = prompt_width
        for name in ("n_new", "done", "next_pos", "token"):
            setattr(batch, name, torch.cat([getattr(batch, name), getattr(joining, name)]))
        batch.ids = batch.ids + joining.ids
        batch.padded = bool((batch.mask == 0).any())
        return batch


def _plain(cache: Any) -> bool:
    """Every layer a plain growing KV cache (no sliding window): rows can be padded, joined and trimmed."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _neutral_pad(seqs: torch.Tensor, missing: int) -> torch.Tensor:
    return torch.cat([seqs[:, :1].expand(-1, missing), seqs], dim=1) if missing else seqs


def greedy(
    model: Any, prompts: list[list[int]], config: Any, max_rows: int = 8, token_budget: int | None = None
) -> list[list[int]]:
    """Greedy answers (ids, EOS included when a row stopped) to prompt ids, in order."""
    return Decoder(model, config, max_rows, token_budget).run(prompts)
