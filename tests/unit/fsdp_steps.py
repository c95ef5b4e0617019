"""Two AdamW steps of the tiny Llama with tunegraph's chunked loss (stages/chunked_loss.py `scored_loss`, as
the Trainer computes it), run by tests/unit/test_fsdp_cpu.py:

    python tests/unit/fsdp_steps.py OUT.json                           one process, the whole global batch
    torchrun --nproc_per_node 2 tests/unit/fsdp_steps.py OUT.json      sharded as accelerate's plugin says

Sharded, the model is wrapped the way accelerate wraps it on GPUs for configs/accelerate/fsdp.yaml: the
`FullyShardedDataParallelPlugin` built from the FSDP_* variables accelerate's launcher derives from that file
(the test passes them in), its auto-wrap policy (one unit per decoder layer), sharding strategy, prefetch and
`use_orig_params`, with torch's FSDP on the CPU over gloo. accelerate itself never shards CPU processes (its
MULTI_CPU state ignores FSDP), so the Trainer cannot run this here; the wrapping and the loss are the same.
Each of the 2 processes takes half of the global batch; the loss is scaled by the process count as
CheckpointedTrainer.compute_loss scales it (FSDP averages the gradients over the processes).
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.chunked_loss import plain_head, scored_loss  # noqa: E402
from stages.model_source import tiny_random_model  # noqa: E402
from stages.train import PackedCollator  # noqa: E402

ROWS, WIDTH, VOCAB = 4, 48, 2048


def global_batch() -> list[dict[str, list[int]]]:
    """4 sequences of random tokens, the second half of each scored (a packed block's shape)."""
    g = torch.Generator().manual_seed(7)
    rows = []
    for _ in range(ROWS):
        ids = torch.randint(3, VOCAB, (WIDTH,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (WIDTH // 2) + ids[WIDTH // 2 :],
                     "position_ids": list(range(WIDTH))})  # fmt: skip
    return rows


def sharded(model: torch.nn.Module) -> torch.nn.Module:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import FullyShardedDataParallel

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment accelerate's launcher sets
    plugin.set_auto_wrap_policy(model)
    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=plugin.auto_wrap_policy,
        sharding_strategy=plugin.reshard_after_forward,
        backward_prefetch=plugin.backward_prefetch,
        use_orig_params=plugin.use_orig_params,
        device_id=torch.device("cpu"),
    )


def main(out: Path) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    model = tiny_random_model(VOCAB, seed=0)  # fp32: the comparison is of reduction order only
    head_rows_outside_forward = None
    if world > 1:
        model = sharded(model)
        inner = model.module
        head_rows_outside_forward = int(inner.lm_head.weight.numel())  # this process's flat shard
    else:
        inner = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collator = PackedCollator(pad_token_id=2)
    rows = global_batch()
    scored = sum(sum(label != -100 for label in r["labels"][1:]) for r in rows)  # the Trainer's num_items
    mine = rows[rank * ROWS // world : (rank + 1) * ROWS // world]
    losses = []
    for _ in range(2):
        batch = collator(mine)
        loss, _ = scored_loss(model, batch, plain_head(inner), num_items=torch.tensor(scored))
        (loss * world).backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(total.item())
    if world > 1:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            state = model.state_dict()
    else:
        state = model.state_dict()
    if rank == 0:
        torch.save(state, out.with_suffix(".pt"))
        facts = {"processes": world, "losses": losses, "head_numel": VOCAB * inner.config.hidden_size,
                 "head_numel_outside_forward": head_rows_outside_forward}  # fmt: skip
        out.write_text(json.dumps(facts))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
