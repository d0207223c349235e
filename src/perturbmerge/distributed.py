"""Several processes (torchrun) on torch.distributed: data-parallel training, Fisher and evaluation.

    torchrun --nproc_per_node 4 -m perturbmerge run --config configs/paper/imagenet-r-10.yaml --data-dir /data

Every process holds the same model and draws the same global batches (same seeded order) and the same ±ε signs;
process r takes rows r, r + W, r + 2W, … of each batch. Each process's gradient is weighted by its share of the
global batch and the gradients are summed (all-reduce) before every optimiser step, so the update is the one of a
single process on the whole batch, up to float summation order. Fisher sums and sample counts are summed across
processes before F = ΣF/N and α are computed, so α and the merged weights are identical on every rank. Evaluation
counts (correct, total) per task are summed, so every test example is counted exactly once whatever the shard
sizes. Only rank 0 writes files.

No wrapper (DistributedDataParallel) is used: the LoRA adapter is attached and folded every task, and an explicit
all-reduce of the gradients is the same collective without re-wrapping the model each time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """This process's rows of a batch of `count`: rank, rank + size, …"""
        return slice(self.rank, count, self.size)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over processes (no-op for one process)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def init_world(device: torch.device) -> World:
    """The process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size())
